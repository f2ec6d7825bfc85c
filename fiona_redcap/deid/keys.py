"""Keyed, deterministic pseudonyms: UIDs, identifiers and date offsets from a per-project key.

HMAC-SHA-256 with the project's secret key: the same input and key give the same output on
every run and machine; two projects' keys give unlinkable outputs. Keys live in
``<data>/keys/<project>.key`` (0600) and never leave the data directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
from pathlib import Path

from ..datadir import read_or_create_secret

PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def project_key(data_dir: str | os.PathLike, project: str) -> tuple[bytes, str]:
    """The project's key (created on first use) and its public id (a fingerprint, not the key)."""
    if not PROJECT_RE.match(project):
        raise ValueError("project names for keys may only contain letters, digits, '_' and '-'")
    keys = Path(data_dir) / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = bytes.fromhex(read_or_create_secret(keys / f"{project}.key"))
    return key, key_id(key)


def key_from_file(path: str | os.PathLike) -> tuple[bytes, str]:
    text = Path(path).read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = text.encode()
    if len(key) < 16:
        raise ValueError("a key must have at least 128 bits (32 hex characters)")
    return key, key_id(key)


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"fiona-key-id" + key).hexdigest()[:12]


class Pseudonyms:
    """All keyed replacements of one project."""

    def __init__(self, key: bytes, uid_root: str | None = None) -> None:
        self.key = key
        self.uid_root = (uid_root or "2.25").rstrip(".")
        self._uids: dict[str, str] = {}

    def _mac(self, *parts: str) -> bytes:
        return hmac.new(self.key, b"\x1f".join(p.encode() for p in parts), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """A new valid UID (no leading zeros, at most 64 characters) for an original UID."""
        original = original.strip().rstrip("\x00")
        if not original:
            return original
        cached = self._uids.get(original)
        if cached:
            return cached
        number = int.from_bytes(self._mac("uid", original)[:16], "big")  # 128 bits, like 2.25 UUIDs
        room = 64 - len(self.uid_root) - 1
        digits = str(number)[:room].lstrip("0") or "1"
        new = f"{self.uid_root}.{digits}"
        self._uids[original] = new
        return new

    def identifier(self, kind: str, original: str, length: int = 16) -> str:
        """A pseudonymous identifier (AccessionNumber, StudyID ...), upper-case hex, ``length`` chars."""
        if not original.strip():
            return original
        return self._mac(kind, original.strip()).hex().upper()[:length]

    def date_offset(self, participant: str, max_days: int) -> int:
        """The participant's fixed shift in days, in [-max_days, -1] (every date moves back)."""
        value = int.from_bytes(self._mac("date-offset", participant)[:8], "big")
        return -(1 + value % max(1, max_days))


def shift_date(value: str, days: int) -> str:
    """Shift a DA (YYYYMMDD); an unparseable value is returned unchanged for the caller to judge."""
    value = value.strip()
    try:
        return (dt.datetime.strptime(value[:8], "%Y%m%d") + dt.timedelta(days=days)).strftime("%Y%m%d")
    except ValueError:
        return value


def shift_datetime(value: str, days: int) -> str:
    """Shift a DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX): the date part moves, time and zone stay."""
    value = value.strip()
    if len(value) < 8:
        return value
    shifted = shift_date(value[:8], days)
    return shifted + value[8:] if shifted != value[:8] or value[:8].isdigit() else value
