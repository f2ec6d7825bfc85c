"""Administration of the embedded REDCap: users, passwords, API tokens, projects, rights.

These are what a REDCap administrator does in the Control Center; the API cannot do them
(except project creation with a super token), so ``fiona redcap ...`` commands, ``fiona up``
and the web app's password login call these functions on the database directly.
Tokens are stored only as SHA-256 hashes (they are 128/256-bit random values); passwords
with scrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from .store import Design, Store, now

SCRYPT = dict(n=2**14, r=8, p=1, dklen=32)

#: REDCap's user-rights fields with the values of a user who may do everything.
FULL_RIGHTS = {
    "expiration": "",
    "data_access_group": "",
    "design": 1,
    "alerts": 1,
    "user_rights": 1,
    "data_access_groups": 1,
    "data_export": 1,
    "reports": 1,
    "stats_and_charts": 1,
    "manage_survey_participants": 1,
    "calendar": 1,
    "data_import_tool": 1,
    "data_comparison_tool": 1,
    "logging": 1,
    "email_logging": 1,
    "file_repository": 1,
    "data_quality_create": 1,
    "data_quality_execute": 1,
    "api_export": 1,
    "api_import": 1,
    "api_modules": 0,
    "mobile_app": 0,
    "mobile_app_download_data": 0,
    "record_create": 1,
    "record_rename": 1,
    "record_delete": 1,
    "lock_records_customization": 0,
    "lock_records": 0,
    "lock_records_all_forms": 0,
}
NO_RIGHTS = {k: (0 if isinstance(v, int) else v) for k, v in FULL_RIGHTS.items()}


def db_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / "redcap" / "redcap.sqlite3"


def _store(db: str | os.PathLike | Store) -> Store:
    return db if isinstance(db, Store) else Store(db)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().upper().encode()).hexdigest()


def _hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${salt.hex()}${digest.hex()}"


def ensure_user(db, username: str, password: str | None = None, super_user: bool = False, email: str = "", firstname: str = "", lastname: str = "") -> str | None:
    """Create the user if missing; returns the generated password when one was made."""
    store = _store(db)
    generated = None
    with store.write() as con:
        row = con.execute("SELECT username FROM users WHERE username=?", (username,)).fetchone()
        if row is None:
            if password is None:
                password = generated = secrets.token_urlsafe(12)
            con.execute(
                "INSERT INTO users(username, pw_hash, super_user, email, firstname, lastname) VALUES (?,?,?,?,?,?)",
                (username, _hash_password(password), int(super_user), email, firstname, lastname),
            )
        elif password is not None:
            con.execute("UPDATE users SET pw_hash=? WHERE username=?", (_hash_password(password), username))
    return generated


def set_password(db, username: str, password: str) -> None:
    store = _store(db)
    with store.write() as con:
        if con.execute("UPDATE users SET pw_hash=? WHERE username=?", (_hash_password(password), username)).rowcount != 1:
            raise KeyError(f"no user {username!r}")


def verify_password(db, username: str, password: str) -> bool:
    store = _store(db)
    row = store.connect().execute("SELECT pw_hash FROM users WHERE username=?", (username,)).fetchone()
    if row is None or not row["pw_hash"]:
        hashlib.scrypt(b"x", salt=b"0" * 16, **SCRYPT)  # same cost for unknown users
        return False
    _, n, salt, digest = row["pw_hash"].split("$")
    got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=SCRYPT["r"], p=SCRYPT["p"], dklen=SCRYPT["dklen"])
    return hmac.compare_digest(got.hex(), digest)


def is_super_user(db, username: str) -> bool:
    row = _store(db).connect().execute("SELECT super_user FROM users WHERE username=?", (username,)).fetchone()
    return bool(row and row["super_user"])


def default_info(title: str, purpose: int = 0, longitudinal: bool = False) -> dict:
    return {
        "project_title": title,
        "creation_time": now(),
        "production_time": "",
        "in_production": 0,
        "project_language": "English",
        "purpose": purpose,
        "purpose_other": "",
        "project_notes": "",
        "custom_record_label": "",
        "secondary_unique_field": "",
        "is_longitudinal": int(longitudinal),
        "has_repeating_instruments_or_events": 0,
        "surveys_enabled": 0,
        "scheduling_enabled": 0,
        "record_autonumbering_enabled": 0,
        "randomization_enabled": 0,
        "ddp_enabled": 0,
        "project_irb_number": "",
        "project_grant_number": "",
        "project_pi_firstname": "",
        "project_pi_lastname": "",
        "display_today_now_button": 1,
        "missing_data_codes": "",
        "external_modules": "",
        "bypass_branching_erase_field_prompt": 0,
    }


def default_design(longitudinal: bool) -> Design:
    """What REDCap gives a new project: a record_id field on 'my_first_instrument' (and one event)."""
    design = Design(
        metadata=[
            {
                "field_name": "record_id",
                "form_name": "my_first_instrument",
                "section_header": "",
                "field_type": "text",
                "field_label": "Record ID",
                "select_choices_or_calculations": "",
                "field_note": "",
                "text_validation_type_or_show_slider_number": "",
                "text_validation_min": "",
                "text_validation_max": "",
                "identifier": "",
                "branching_logic": "",
                "required_field": "",
                "custom_alignment": "",
                "question_number": "",
                "matrix_group_name": "",
                "matrix_ranking": "",
                "field_annotation": "",
            }
        ],
        instruments=[{"instrument_name": "my_first_instrument", "instrument_label": "My First Instrument"}],
    )
    if longitudinal:
        design.arms = [{"arm_num": 1, "name": "Arm 1"}]
        design.events = [event_row("Event 1", 1)]
        design.mapping = [{"arm_num": 1, "unique_event_name": "event_1_arm_1", "form": "my_first_instrument"}]
    return design


def event_row(name: str, arm: int, unique: str | None = None, event_id: int = 41) -> dict:
    import re

    unique = unique or f"{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')[:18]}_arm_{arm}"
    return {
        "event_name": name,
        "arm_num": arm,
        "unique_event_name": unique,
        "custom_event_label": "",
        "event_id": event_id,
        "days_offset": 1,
        "offset_min": 0,
        "offset_max": 0,
    }


def create_project(db, title: str, owner: str, longitudinal: bool = False, purpose: int = 0, info: dict | None = None, design: Design | None = None) -> int:
    """A new project; its owner gets full rights on it."""
    store = _store(db)
    project_info = default_info(title, purpose, longitudinal)
    project_info.update(info or {})
    project_design = design or default_design(longitudinal)
    project_info["is_longitudinal"] = int(project_design.longitudinal)
    project_info["has_repeating_instruments_or_events"] = int(project_design.has_repeating)
    with store.write() as con:
        cur = con.execute(
            "INSERT INTO projects(title, info, design, created_at) VALUES (?,?,?,?)",
            (title, json.dumps(project_info), project_design.to_json(), now()),
        )
        project_id = int(cur.lastrowid)
        project_info["project_id"] = project_id
        store.save_info(con, project_id, project_info)
        rights = dict(FULL_RIGHTS)
        con.execute("INSERT OR REPLACE INTO rights(project_id, username, rights) VALUES (?,?,?)", (project_id, owner, json.dumps(rights)))
        store.log(con, project_id, owner, "manage", details="Create project")
    return project_id


def set_rights(db, project_id: int, username: str, **rights) -> None:
    """Give a user rights in a project (unnamed rights default to none)."""
    store = _store(db)
    with store.write() as con:
        row = con.execute("SELECT rights FROM rights WHERE project_id=? AND username=?", (project_id, username)).fetchone()
        current = json.loads(row["rights"]) if row else dict(NO_RIGHTS)
        current.update(rights)
        con.execute("INSERT OR REPLACE INTO rights(project_id, username, rights) VALUES (?,?,?)", (project_id, username, json.dumps(current)))
        store.log(con, project_id, "admin", "user", details=f"Rights of {username} changed")


def create_token(db, username: str, project_id: int) -> str:
    """A new API token for (user, project), replacing the old one; shown once, stored hashed."""
    store = _store(db)
    token = secrets.token_hex(16).upper()
    with store.write() as con:
        if con.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone() is None:
            raise KeyError(f"no user {username!r}")
        if con.execute("SELECT 1 FROM rights WHERE project_id=? AND username=?", (project_id, username)).fetchone() is None:
            raise KeyError(f"user {username!r} has no rights in project {project_id}")
        con.execute("DELETE FROM tokens WHERE username=? AND project_id=?", (username, project_id))
        con.execute("INSERT INTO tokens(token_hash, username, project_id, created_at) VALUES (?,?,?,?)", (hash_token(token), username, project_id, now()))
        store.log(con, project_id, username, "user", details="API token created")
    return token


def create_super_token(db, username: str) -> str:
    store = _store(db)
    token = secrets.token_hex(32).upper()
    with store.write() as con:
        row = con.execute("SELECT super_user FROM users WHERE username=?", (username,)).fetchone()
        if row is None or not row["super_user"]:
            raise KeyError(f"{username!r} is not a super user")
        con.execute("DELETE FROM tokens WHERE username=? AND project_id IS NULL", (username,))
        con.execute("INSERT INTO tokens(token_hash, username, project_id, created_at) VALUES (?,?,?,?)", (hash_token(token), username, None, now()))
    return token


def list_projects(db) -> list[dict]:
    store = _store(db)
    rows = store.connect().execute("SELECT project_id, title, created_at FROM projects ORDER BY project_id").fetchall()
    out = []
    for row in rows:
        count = store.connect().execute("SELECT COUNT(*) FROM records WHERE project_id=?", (row["project_id"],)).fetchone()[0]
        out.append({"project_id": row["project_id"], "title": row["title"], "created_at": row["created_at"], "records": count})
    return out


def list_users(db) -> list[dict]:
    rows = _store(db).connect().execute("SELECT username, super_user, email FROM users ORDER BY username").fetchall()
    return [dict(r) for r in rows]
