"""The quarantine: received studies exactly as sent, identifying, never leaving the data directory.

Layout of one site's quarantine (``<data>/quarantine``)::

    <StudyUID>/study.json                 arrival times, site, AE titles, state, REDCap instance map
    <StudyUID>/<SeriesUID>.json           series summary (modality, description, counts, classification)
    <StudyUID>/<SeriesUID>/<SOPUID>.dcm   the instances, written durably

Folder and file names are built only from validated UIDs (:func:`valid_uid`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

from .config import Config

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


def valid_uid(uid: object) -> bool:
    """DICOM UI syntax: digits and dots, no leading zeros in components, at most 64 characters."""
    return isinstance(uid, str) and 0 < len(uid) <= 64 and UID_RE.match(uid) is not None


@contextlib.contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Exclusive access to a study's index files: a thread lock for this process's receiver and
    completion threads, and an flock on ``<study>/.lock`` for receiver worker processes."""
    with _locks_guard:
        lock = _locks.setdefault(str(study_dir), threading.RLock())
    with lock:
        study_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(study_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


def write_json_atomic(path: Path, data: dict, durable: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class Quarantine:
    """One site's quarantine folder."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "quarantine"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def study_dir(self, study_uid: str) -> Path:
        if not valid_uid(study_uid):
            raise ValueError("not a valid StudyInstanceUID")
        return self.root / study_uid

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        if not valid_uid(series_uid):
            raise ValueError("not a valid SeriesInstanceUID")
        return self.study_dir(study_uid) / series_uid

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        if not valid_uid(sop_uid):
            raise ValueError("not a valid SOPInstanceUID")
        return self.series_dir(study_uid, series_uid) / f"{sop_uid}.dcm"

    def studies(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and valid_uid(p.name))

    def has_study(self, study_uid: str) -> bool:
        return valid_uid(study_uid) and (self.root / study_uid).is_dir()

    def instances(self, study_uid: str) -> list[Path]:
        d = self.study_dir(study_uid)
        return sorted(p for p in d.glob("*/*.dcm") if not p.name.startswith("."))

    def series_summaries(self, study_uid: str) -> list[dict]:
        d = self.study_dir(study_uid)
        out = []
        for path in sorted(d.glob("*.json")):
            if path.name == "study.json":
                continue
            data = read_json(path)
            if data is not None:
                out.append(data)
        return sorted(out, key=lambda s: (s.get("first_arrival", 0), s.get("series_uid", "")))

    def study_info(self, study_uid: str) -> dict:
        return read_json(self.study_dir(study_uid) / "study.json") or {}

    def last_arrival(self, study_uid: str) -> float:
        return float(self.study_info(study_uid).get("last_arrival", 0))

    def is_complete(self, study_uid: str, quiet_seconds: float) -> bool:
        """Complete: marked so by the receiver, and nothing arrived for ``quiet_seconds``."""
        info = self.study_info(study_uid)
        return info.get("state") == "complete" and time.time() - float(info.get("last_arrival", 0)) >= quiet_seconds

    def remove_study(self, study_uid: str) -> None:
        d = self.study_dir(study_uid)
        if not d.exists():
            return
        with study_lock(d):
            if d.exists():
                trash = self.root / f".removing-{os.getpid()}-{threading.get_ident()}"
                os.replace(d, trash)
                shutil.rmtree(trash, ignore_errors=True)

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total


def quarantines(cfg: Config) -> dict[str, Quarantine]:
    """The quarantine of every configured site, by site name."""
    return {site["name"]: Quarantine(site["data_dir"]) for site in cfg.sites()}


def find_study(cfg: Config, study_uid: str, site: str | None = None) -> Quarantine | None:
    """The quarantine holding a study (the named site first)."""
    qs = quarantines(cfg)
    order = ([qs[site]] if site in qs else []) + [q for name, q in qs.items() if name != site]
    for q in order:
        if q.has_study(study_uid):
            return q
    return None
