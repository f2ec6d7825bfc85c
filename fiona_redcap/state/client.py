"""The one way FIONA talks to REDCap: PyCap over HTTP, with timeouts and checked writes.

PyCap 2.7 sets no request timeout and does not check HTTP status codes for some calls
(``import_records(return_content="nothing")``, ``import_file``, ``delete_file`` return
``[{}]`` even on HTTP 400). Every FIONA write therefore goes through :func:`import_records`,
which asks for ``count`` or ``ids`` and verifies the answer.
"""

from __future__ import annotations

from typing import Any, Iterable

import requests
from redcap import Project, RedcapError

from ..config import Config


class RedcapUnavailable(Exception):
    """REDCap could not be reached or answered with a server error; retry later."""


class RedcapRejected(Exception):
    """REDCap understood the request and refused it (validation, rights); do not retry blindly."""


def project(url: str, token: str, timeout: float = 30.0, verify_ssl: bool | str = True) -> Project:
    """A lazy PyCap Project with a request timeout."""
    return Project(url, token, verify_ssl=verify_ssl, timeout=timeout)


def control_project(cfg: Config, name: str) -> Project:
    """PyCap Project for one of FIONA's control projects (projects, incoming, coupling, routing, autoid)."""
    return project(cfg.redcap_url, cfg.redcap_token(name), cfg.redcap_timeout, cfg.raw["redcap"]["verify_ssl"])


def call(fn, *args, **kwargs) -> Any:
    """Run a PyCap call and map its failures onto Unavailable (retry) or Rejected (fix input)."""
    try:
        return fn(*args, **kwargs)
    except requests.exceptions.JSONDecodeError as exc:
        raise RedcapUnavailable(f"REDCap answered with something that is not JSON ({exc.__class__.__name__})") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise RedcapUnavailable(f"REDCap is not reachable: {exc.__class__.__name__}") from None
    except RedcapError as exc:
        text = str(exc)
        if "error" in text.lower() and not _is_server_error(exc):
            raise RedcapRejected(_error_text(exc)) from None
        raise RedcapUnavailable(_error_text(exc)) from None


def _is_server_error(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    return bool(response is not None and getattr(response, "status_code", 0) >= 500)


def _error_text(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    if isinstance(arg, dict) and "error" in arg:
        return str(arg["error"])
    return str(arg)


def import_records(proj: Project, records: Iterable[dict], overwrite: str = "normal", force_auto_number: bool = False) -> list[str] | int:
    """Import records and verify REDCap accepted every one.

    Returns the list of record ids (or, with auto-numbering, the server-assigned ids).
    """
    rows = list(records)
    if not rows:
        return []
    content = "auto_ids" if force_auto_number else "ids"
    result = call(
        proj.import_records,
        rows,
        overwrite=overwrite,
        return_content=content,
        force_auto_number=force_auto_number,
    )
    if isinstance(result, dict) and "error" in result:
        raise RedcapRejected(str(result["error"]))
    if not isinstance(result, list):
        raise RedcapUnavailable(f"unexpected answer to a record import: {type(result).__name__}")
    sent = {str(r.get(proj.def_field)) for r in rows}
    got = [str(x).split(",")[0] for x in result]
    confirmed = len(got) >= len(sent) if force_auto_number else sent.issubset(got)
    if not confirmed:
        raise RedcapRejected(f"REDCap confirmed {len(got)} of {len(sent)} imported records")
    return got


def export_records(proj: Project, **kwargs) -> list[dict]:
    return call(proj.export_records, **kwargs)
