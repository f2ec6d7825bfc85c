"""Coupling lists: accession number or StudyInstanceUID → project, participant, event.

Uploaded as CSV (Coupling page, JSON API) and stored one entry per record of the CouplingList
project (auto-numbered). :func:`parse_csv` validates a whole upload before anything is stored:
a file with one bad row stores nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass
from typing import Callable

from redcap import Project

from ..config import Config
from . import client
from .projects import ProjectError, ResearchProject
from .transfers import now_text

MAX_UPLOAD_BYTES = 2 * 1024 * 1024
MAX_ROWS = 20_000
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# DICOM SH (AccessionNumber): up to 16 characters, no backslash or control characters.
ACCESSION_RE = re.compile(r"^[^\\\x00-\x1f\x7f]{1,16}$")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
KEY_COLUMNS = {"accessionnumber": "accession", "studyinstanceuid": "study_uid"}


@dataclass
class CouplingEntry:
    key_type: str  # "accession" | "study_uid"
    key: str
    project: str
    participant: str
    event: str = ""
    id: str = ""
    uploaded_by: str = ""
    uploaded_at: str = ""
    expires: str = ""

    @classmethod
    def from_row(cls, row: dict) -> "CouplingEntry":
        return cls(
            id=row.get("coupling_id", ""),
            key_type=row.get("coupling_key_type", ""),
            key=row.get("coupling_key", ""),
            project=row.get("coupling_project", ""),
            participant=row.get("coupling_participant", ""),
            event=row.get("coupling_event", ""),
            uploaded_by=row.get("coupling_uploaded_by", ""),
            uploaded_at=row.get("coupling_uploaded_at", ""),
            expires=row.get("coupling_expires", ""),
        )

    def to_row(self) -> dict:
        return {
            "coupling_id": self.id or "new",
            "coupling_key_type": self.key_type,
            "coupling_key": self.key,
            "coupling_project": self.project,
            "coupling_participant": self.participant,
            "coupling_event": self.event,
            "coupling_uploaded_by": self.uploaded_by,
            "coupling_uploaded_at": self.uploaded_at,
            "coupling_expires": self.expires,
            "coupling_complete": "2",
        }

    def expired(self, today: dt.date | None = None) -> bool:
        if not self.expires:
            return False
        try:
            return (today or dt.date.today()) > dt.date.fromisoformat(self.expires)
        except ValueError:
            return False

    def matches(self, study_uid: str, accession: str) -> bool:
        if self.key_type == "study_uid":
            return self.key == study_uid
        return bool(accession) and self.key == accession


@dataclass
class RowError:
    line: int  # 1-based line of the CSV, header is line 1
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def coupling_project(cfg: Config) -> Project:
    return client.control_project(cfg, "coupling")


def list_entries(proj: Project, include_expired: bool = True) -> list[CouplingEntry]:
    entries = [CouplingEntry.from_row(r) for r in client.export_records(proj) if r.get("coupling_key")]
    return entries if include_expired else [e for e in entries if not e.expired()]


def store(proj: Project, entries: list[CouplingEntry], uploaded_by: str, expires: str = "") -> list[str]:
    """Store validated entries; REDCap assigns the entry IDs (auto-numbering)."""
    stamp = now_text()
    rows = []
    for i, entry in enumerate(entries):
        entry.uploaded_by, entry.uploaded_at = uploaded_by, stamp
        entry.expires = entry.expires or expires
        row = entry.to_row()
        row["coupling_id"] = str(i + 1)  # placeholder; forceAutoNumber replaces it
        rows.append(row)
    ids = client.import_records(proj, rows, force_auto_number=True)
    for entry, new_id in zip(entries, ids):
        entry.id = new_id
    return ids


def delete(proj: Project, ids: list[str]) -> int:
    if not ids:
        return 0
    return int(client.call(proj.delete_records, list(ids)))


def matching(entries: list[CouplingEntry], study_uid: str, accession: str) -> list[CouplingEntry]:
    """All unexpired entries that match a study (every match, not only the first)."""
    return [e for e in entries if not e.expired() and e.matches(study_uid, accession)]


def parse_csv(
    data: bytes,
    projects: dict[str, ResearchProject],
    events_of: Callable[[ResearchProject], list[tuple[str, str]]],
    existing: list[CouplingEntry] = (),
    allowed_projects: set[str] | None = None,
) -> tuple[list[CouplingEntry], list[RowError]]:
    """Validate an uploaded coupling list; returns (entries, errors). Store only if errors is empty."""
    if len(data) > MAX_UPLOAD_BYTES:
        return [], [RowError(0, f"file is larger than {MAX_UPLOAD_BYTES // 1024} KiB")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [RowError(0, "file is not UTF-8 text (save the CSV as UTF-8)")]
    if "\x00" in text:
        return [], [RowError(0, "file contains NUL characters; it is not a CSV text file")]
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = [h.strip().lower().replace(" ", "") for h in next(reader)]
    except StopIteration:
        return [], [RowError(0, "file is empty")]
    except csv.Error as exc:
        return [], [RowError(1, f"not a readable CSV file ({exc})")]
    key_cols = [c for c in header if c in KEY_COLUMNS]
    missing = [c for c in ("project", "participant") if c not in header]
    if len(key_cols) != 1 or missing:
        need = "one of AccessionNumber or StudyInstanceUID, and project, participant, event"
        return [], [RowError(1, f"header must have the columns {need}; found: {', '.join(header) or 'nothing'}")]
    key_col = key_cols[0]
    key_type = KEY_COLUMNS[key_col]
    col = {name: header.index(name) for name in header}

    errors: list[RowError] = []
    entries: list[CouplingEntry] = []
    seen: dict[tuple[str, str, str], int] = {}
    existing_keys = {(e.key_type, e.key, e.project) for e in existing if not e.expired()}
    events_cache: dict[str, list[str]] = {}
    try:
        rows = list(reader)
    except csv.Error as exc:
        return [], [RowError(0, f"not a readable CSV file ({exc})")]
    if len(rows) > MAX_ROWS:
        return [], [RowError(0, f"file has {len(rows)} rows; at most {MAX_ROWS} are accepted per upload")]
    for lineno, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(name: str) -> str:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        values = {name: cell(name) for name in (key_col, "project", "participant", "event")}
        bad = [name for name, v in values.items() if v.startswith(FORMULA_START)]
        if bad:
            errors.append(RowError(lineno, f"column {bad[0]} starts with a formula character (=, +, -, @); not accepted"))
            continue
        key, project_name, participant, event = values[key_col], values["project"], values["participant"], values["event"]
        if key_type == "study_uid" and not (UID_RE.match(key) and len(key) <= 64):
            errors.append(RowError(lineno, "StudyInstanceUID is not a valid DICOM UID"))
            continue
        if key_type == "accession" and not ACCESSION_RE.match(key):
            errors.append(RowError(lineno, "AccessionNumber must be 1-16 characters without control characters or backslash"))
            continue
        project = projects.get(project_name)
        if project is None or (allowed_projects is not None and project_name not in allowed_projects):
            errors.append(RowError(lineno, f"unknown project {project_name!r} (or you may not assign to it)"))
            continue
        try:
            if not project.participant_ok(participant):
                errors.append(RowError(lineno, f"participant ID does not match the pattern of project {project_name} ({project.participant_regex})"))
                continue
        except ProjectError as exc:
            errors.append(RowError(lineno, str(exc)))
            continue
        if project_name not in events_cache:
            events_cache[project_name] = [code for code, _ in events_of(project)]
        events = events_cache[project_name]
        if events and event not in events:
            errors.append(RowError(lineno, f"unknown event {event!r} for project {project_name} (one of {', '.join(events)})"))
            continue
        ident = (key_type, key, project_name)
        if ident in seen:
            errors.append(RowError(lineno, f"duplicate of line {seen[ident]} (same key and project)"))
            continue
        if ident in existing_keys:
            errors.append(RowError(lineno, "an unexpired entry with the same key and project already exists"))
            continue
        seen[ident] = lineno
        entries.append(CouplingEntry(key_type=key_type, key=key, project=project_name, participant=participant, event=event))
    if not entries and not errors:
        errors.append(RowError(0, "file has no entries"))
    return entries, errors
