"""Forwarders: deliver a pseudonymized study to a research destination and check it arrived.

A destination is a named entry of the config's ``destinations`` (``type`` ``dicom`` or ``sftp``);
a project names one in ``project_destination``, else ``default_destination`` applies.
Failures raise :class:`ForwardError` with a reason fit for REDCap and logs: it names the
destination and counts, never a patient identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Config


class ForwardError(Exception):
    """The study could not be (completely) delivered; ``str()`` is a readable, identifier-free reason."""


@dataclass
class Delivery:
    """What a forwarder did: how many images arrived, and for SFTP the package and its checksum."""

    destination: str
    images_sent: int
    images_verified: int | None = None  # known at once for SFTP (checksum), later for DICOM (C-FIND)
    package: str = ""
    md5: str = ""


def destination(cfg: Config, name: str = "") -> tuple[str, dict]:
    """The destination ``name`` (or the default one) from the configuration."""
    chosen = name or cfg.raw.get("default_destination") or ""
    if not chosen:
        raise ForwardError("no destination: the project names none and the configuration has no default_destination")
    dest = cfg.raw["destinations"].get(chosen)
    if dest is None:
        raise ForwardError(f"destination {chosen!r} is not in the configuration")
    return chosen, dest


def calling_aet(cfg: Config, dest: dict) -> str:
    return dest.get("calling_aet") or cfg.raw["dicom"]["aet"]


def deliver(cfg: Config, name: str, dest: dict, files: list[Path], package_name: str, root: Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> Delivery:
    """Send the files to the destination (C-STORE in one association, or one SFTP package)."""
    if dest["type"] == "dicom":
        from .dicom_store import store_files

        result = store_files(dest, files, calling_aet(cfg, dest), progress=progress)
        if result.failed:
            raise ForwardError(f"destination {name}: {len(result.failed)} of {len(files)} images were not stored "
                               f"({result.failed[0][1]})")
        return Delivery(name, result.sent)
    from .sftp import send_package

    remote, md5 = send_package(cfg, dest, files, package_name, root)
    return Delivery(name, len(files), images_verified=len(files), package=remote, md5=md5)
