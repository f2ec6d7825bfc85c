"""Create or update FIONA's control projects in a REDCap (real or embedded), through the API only.

Idempotent: a project whose dictionary, repeating setup and settings already match is left
alone, so a second run reports "no changes". A missing project is created with a super token
(``content=project`` with the project XML, as an admin would upload it) and its new API token
is written to ``<data>/secrets/token-<name>``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable

import requests

from .config import CONTROL_PROJECTS, Config, ConfigError
from .datadir import write_private
from .embedded_redcap.api import METADATA_KEYS, normalize_dictionary
from .state import client

INSTRUMENTS = Path(__file__).resolve().parent.parent / "instruments"


class InstallError(Exception):
    """The control projects cannot be installed; the message says what to do."""


def instruments_dir() -> Path:
    env = os.environ.get("FIONA_INSTRUMENTS")
    return Path(env) if env else INSTRUMENTS


def load_instrument(name: str) -> tuple[list[dict], dict, str]:
    folder = instruments_dir() / name
    with open(folder / "data_dictionary.csv", newline="", encoding="utf-8") as fh:
        dictionary = normalize_dictionary(list(csv.DictReader(fh)))
    spec = json.loads((folder / "project.json").read_text(encoding="utf-8"))
    return dictionary, spec, (folder / "project.xml").read_text(encoding="utf-8")


def super_token(cfg: Config, given: str | None = None) -> str | None:
    if given:
        return given.strip()
    if os.environ.get("FIONA_REDCAP_SUPER_TOKEN"):
        return os.environ["FIONA_REDCAP_SUPER_TOKEN"].strip()
    path = cfg.data_dir / "secrets" / "redcap-super-token"
    return path.read_text().strip() if path.exists() else None


def _working_token(cfg: Config, name: str) -> str | None:
    try:
        token = cfg.redcap_token(name)
    except ConfigError:
        return None
    try:
        client.call(client.project(cfg.redcap_url, token, cfg.redcap_timeout).export_project_info)
    except client.RedcapRejected:
        return None
    except AssertionError:  # PyCap: malformed token
        return None
    return token


def _create(cfg: Config, name: str, spec: dict, xml: str, token: str) -> str:
    data = [{
        "project_title": spec["title"], "purpose": 4, "purpose_other": "FIONA control project", "project_notes": spec.get("purpose", ""),
        "is_longitudinal": 0, "surveys_enabled": 0, "record_autonumbering_enabled": int(bool(spec.get("record_autonumbering"))),
    }]
    try:
        resp = requests.post(cfg.redcap_url, data={"token": token, "content": "project", "format": "json", "returnFormat": "json",
                                                   "data": json.dumps(data), "odm": xml}, timeout=cfg.redcap_timeout)
    except requests.RequestException as exc:
        raise InstallError(f"REDCap is not reachable at {cfg.redcap_url} ({exc.__class__.__name__})") from None
    text = resp.text.strip()
    if resp.status_code != 200 or len(text) != 32:
        try:
            message = resp.json().get("error", text)
        except ValueError:
            message = text[:200]
        raise InstallError(f"REDCap refused to create the {name} project (HTTP {resp.status_code}): {message}")
    return text


def _token_file(cfg: Config, name: str) -> Path | None:
    """Where the config reads this project's token from, if it is a file in the data directory."""
    ref = cfg.raw["redcap"]["tokens"].get(name)
    if isinstance(ref, dict) and "file" in ref:
        path = Path(ref["file"])
        return path if path.is_absolute() else cfg.data_dir / path
    return None


def install(cfg: Config, super_token_value: str | None = None, progress: Callable[[str], None] = print) -> list[str]:
    """Create or update every control project; returns the list of changes made."""
    changes: list[str] = []
    for name in CONTROL_PROJECTS:
        dictionary, spec, xml = load_instrument(name)
        token = _working_token(cfg, name)
        if token is None:
            st = super_token(cfg, super_token_value)
            if not st:
                raise InstallError(
                    f"no working API token for the {name} project and no super token: create the project from "
                    f"instruments/{name}/project.xml in REDCap and put its token in the config, or give a super token "
                    f"(--super-token-file, FIONA_REDCAP_SUPER_TOKEN)")
            new_token = _create(cfg, name, spec, xml, st)
            target = _token_file(cfg, name)
            if target is not None:
                write_private(target, new_token + "\n")
                where = f"token written to {target}"
            else:
                where = f"set its API token in the config: {new_token}"
            changes.append(f"{name}: created project {spec['title']!r}; {where}")
            progress(changes[-1])
            continue
        proj = client.project(cfg.redcap_url, token, cfg.redcap_timeout)
        current = [{k: m.get(k, "") for k in METADATA_KEYS} for m in client.call(proj.export_metadata)]
        if current != dictionary:
            client.call(proj.import_metadata, dictionary)
            changes.append(f"{name}: data dictionary updated ({len(dictionary)} fields)")
            progress(changes[-1])
        try:
            repeating = client.call(proj.export_repeating_instruments_events)
        except client.RedcapRejected:
            repeating = []
        have = sorted(r["form_name"] for r in repeating if r.get("form_name"))
        want = sorted(spec.get("repeating_instruments", []))
        if have != want:
            rows = [{"event_name": "", "form_name": f, "custom_form_label": ""} for f in want]
            if rows:
                client.call(proj.import_repeating_instruments_events, rows)
                changes.append(f"{name}: repeating instruments set to {', '.join(want)}")
                progress(changes[-1])
        info = client.call(proj.export_project_info)
        wanted = {"project_title": spec["title"], "record_autonumbering_enabled": int(bool(spec.get("record_autonumbering")))}
        differ = {k: v for k, v in wanted.items() if str(info.get(k)) != str(v)}
        if differ:
            resp = requests.post(cfg.redcap_url, data={"token": token, "content": "project_settings", "format": "json",
                                                       "returnFormat": "json", "data": json.dumps(differ)}, timeout=cfg.redcap_timeout)
            if resp.status_code != 200:
                raise InstallError(f"REDCap refused to update the settings of the {name} project (HTTP {resp.status_code})")
            changes.append(f"{name}: project settings updated ({', '.join(sorted(differ))})")
            progress(changes[-1])
    if not changes:
        progress("no changes")
    return changes
