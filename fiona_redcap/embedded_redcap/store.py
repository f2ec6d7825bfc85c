"""SQLite storage of the embedded REDCap server.

Data are stored as REDCap stores them, entity-attribute-value: one row per
(record, event, repeat instrument, instance, field). Project design (dictionary, events,
repeating settings) is small and read on every request, so it is kept as JSON per project.
Every write runs in one ``BEGIN IMMEDIATE`` transaction: an import is all or nothing, and
concurrent writers (several FIONA services) are serialised by SQLite's write lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    info TEXT NOT NULL,            -- JSON: project settings as REDCap's project export names them
    design TEXT NOT NULL,          -- JSON: metadata, instruments, arms, events, mapping, repeating
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    project_id INTEGER NOT NULL,
    record TEXT NOT NULL,
    arm INTEGER NOT NULL DEFAULT 1,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    seq INTEGER NOT NULL,          -- creation order, for REDCap's record ordering
    dag TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (project_id, record)
);
CREATE INDEX IF NOT EXISTS records_modified ON records(project_id, modified_at);
CREATE TABLE IF NOT EXISTS data (
    project_id INTEGER NOT NULL,
    record TEXT NOT NULL,
    event TEXT NOT NULL,           -- unique event name ('' in classic projects)
    instrument TEXT NOT NULL,      -- repeating instrument ('' for non-repeating data)
    instance INTEGER NOT NULL,     -- repeat instance (1 for non-repeating data)
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (project_id, record, event, instrument, instance, field)
);
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    pw_hash TEXT NOT NULL DEFAULT '',
    super_user INTEGER NOT NULL DEFAULT 0,
    email TEXT NOT NULL DEFAULT '',
    firstname TEXT NOT NULL DEFAULT '',
    lastname TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rights (
    project_id INTEGER NOT NULL,
    username TEXT NOT NULL,
    rights TEXT NOT NULL,          -- JSON: REDCap's user-rights fields
    PRIMARY KEY (project_id, username)
);
CREATE TABLE IF NOT EXISTS roles (
    project_id INTEGER NOT NULL,
    unique_role_name TEXT NOT NULL,
    role_label TEXT NOT NULL,
    rights TEXT NOT NULL,
    PRIMARY KEY (project_id, unique_role_name)
);
CREATE TABLE IF NOT EXISTS dags (
    project_id INTEGER NOT NULL,
    unique_group_name TEXT NOT NULL,
    name TEXT NOT NULL,
    group_id INTEGER NOT NULL,
    PRIMARY KEY (project_id, unique_group_name)
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    project_id INTEGER,            -- NULL: a super token
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_user_project ON tokens(username, project_id);
CREATE TABLE IF NOT EXISTS log (
    log_id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL,
    ts TEXT NOT NULL,
    username TEXT NOT NULL,
    action TEXT NOT NULL,          -- REDCap log types: record_add, record_edit, record_delete, manage, user, export
    record TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS log_project ON log(project_id, ts);
CREATE TABLE IF NOT EXISTS files (
    project_id INTEGER NOT NULL,
    record TEXT NOT NULL,
    event TEXT NOT NULL,
    instrument TEXT NOT NULL,
    instance INTEGER NOT NULL,
    field TEXT NOT NULL,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    content BLOB NOT NULL,
    PRIMARY KEY (project_id, record, event, instrument, instance, field)
);
"""

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def now() -> str:
    """REDCap timestamps are server-local, to the second."""
    return time.strftime(TIME_FORMAT, time.localtime())


@dataclass
class Design:
    """A project's design: data dictionary, instruments, arms/events and repeating settings."""

    metadata: list[dict] = field(default_factory=list)
    instruments: list[dict] = field(default_factory=list)  # [{instrument_name, instrument_label}]
    arms: list[dict] = field(default_factory=list)  # [{arm_num, name}]
    events: list[dict] = field(default_factory=list)  # [{event_name, arm_num, unique_event_name, ...}]
    mapping: list[dict] = field(default_factory=list)  # [{arm_num, unique_event_name, form}]
    repeating: list[dict] = field(default_factory=list)  # [{event_name, form_name, custom_form_label}]

    @classmethod
    def from_json(cls, text: str) -> "Design":
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    # -- derived views used everywhere --------------------------------------------------------
    @property
    def record_id_field(self) -> str:
        return self.metadata[0]["field_name"] if self.metadata else "record_id"

    def fields(self) -> dict[str, dict]:
        return {m["field_name"]: m for m in self.metadata}

    def form_order(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.metadata:
            seen.setdefault(m["form_name"], None)
        return list(seen)

    def form_of(self, field_name: str) -> str | None:
        for m in self.metadata:
            if m["field_name"] == field_name:
                return m["form_name"]
        return None

    def event_names(self) -> list[str]:
        return [e["unique_event_name"] for e in self.events]

    def forms_on_event(self, event: str) -> list[str]:
        if not self.events:
            return self.form_order()
        forms = {m["form"] for m in self.mapping if m["unique_event_name"] == event}
        return [f for f in self.form_order() if f in forms]

    def repeating_forms(self, event: str) -> set[str]:
        """Forms that repeat on their own on this event ('' event in classic projects)."""
        return {r["form_name"] for r in self.repeating if r.get("form_name") and (r.get("event_name") or "") == event}

    def repeating_event(self, event: str) -> bool:
        """The whole event repeats (REDCap's repeating events)."""
        return any(not r.get("form_name") and (r.get("event_name") or "") == event for r in self.repeating)

    @property
    def has_repeating(self) -> bool:
        return bool(self.repeating)

    @property
    def longitudinal(self) -> bool:
        return bool(self.events)


class Store:
    """One SQLite database holding every project of the embedded server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        with self.connect() as db:
            db.executescript(SCHEMA)

    def connect(self) -> sqlite3.Connection:
        """A per-thread connection (waitress serves requests from a thread pool)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing write transaction, holding SQLite's write lock from the start."""
        db = self.connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for an export (WAL readers never block the writer)."""
        db = self.connect()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    # -- projects --------------------------------------------------------------------------
    def design(self, db: sqlite3.Connection, project_id: int) -> Design:
        row = db.execute("SELECT design FROM projects WHERE project_id=?", (project_id,)).fetchone()
        return Design.from_json(row["design"])

    def save_design(self, db: sqlite3.Connection, project_id: int, design: Design) -> None:
        db.execute("UPDATE projects SET design=? WHERE project_id=?", (design.to_json(), project_id))

    def info(self, db: sqlite3.Connection, project_id: int) -> dict:
        row = db.execute("SELECT info FROM projects WHERE project_id=?", (project_id,)).fetchone()
        return json.loads(row["info"])

    def save_info(self, db: sqlite3.Connection, project_id: int, info: dict) -> None:
        db.execute("UPDATE projects SET info=?, title=? WHERE project_id=?", (json.dumps(info), info.get("project_title", ""), project_id))

    def log(self, db: sqlite3.Connection, project_id: int, username: str, action: str, record: str = "", details: str = "") -> None:
        db.execute(
            "INSERT INTO log(project_id, ts, username, action, record, details) VALUES (?,?,?,?,?,?)",
            (project_id, now(), username, action, record, details),
        )
