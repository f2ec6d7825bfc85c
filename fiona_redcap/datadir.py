"""The data directory: where every file FIONA owns lives, and how a new one is made.

Layout (created by :func:`init_data_dir`, used by every service)::

    <data>/config.json            written once with working defaults; edit freely
    <data>/secrets/               0700: admin-password, redcap-super-token, token-<project>,
                                  web-secret-key, sso-secret (each 0600)
    <data>/keys/                  0700: installation.key (keyed hashes of study/patient keys),
                                  <project>.key (pseudonymization keys)
    <data>/redcap/                the embedded REDCap server's SQLite database and uploaded files
    <data>/quarantine/            received studies, identifying: <StudyUID>/<SeriesUID>/<SOPUID>.dcm
    <data>/staging/               pseudonymized output waiting to be forwarded
    <data>/outbox/                REDCap writes queued while REDCap is unreachable
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from .config import CONFIG_NAME, CONTROL_PROJECTS, Config

PRIVATE_DIRS = ("secrets", "keys", "quarantine", "staging", "outbox", "redcap")


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file readable only by its owner, atomically (temp name, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_or_create_secret(path: Path, nbytes: int = 32, hex_upper: bool = False) -> str:
    """The secret stored at ``path``, generated with a CSPRNG on first use."""
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(nbytes)
    if hex_upper:
        value = value.upper()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race; use its value
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return value


def default_config(data_dir: Path) -> dict:
    """The config a new data directory starts with: embedded REDCap, secrets in files."""
    return {
        "data_dir": ".",
        "dicom": {"aet": "FIONA", "host": "127.0.0.1", "port": 11112},
        "redcap": {
            "url": "http://127.0.0.1:8081/api/",
            "tokens": {name: {"file": f"secrets/token-{name}"} for name in CONTROL_PROJECTS},
            "embedded": {"enabled": True, "host": "127.0.0.1", "port": 8081},
        },
        "web": {
            "host": "127.0.0.1",
            "port": 8080,
            "secret_key": {"file": "secrets/web-secret-key"},
            "sso_secret": {"file": "secrets/sso-secret"},
        },
    }


def init_data_dir(data_dir: str | os.PathLike, config_overrides: dict | None = None) -> Path:
    """Create the data directory with a default config and its secrets; idempotent.

    Returns the config file path. An existing config file is never overwritten.
    """
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for name in PRIVATE_DIRS:
        d = root / name
        d.mkdir(exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
    secrets_dir = root / "secrets"
    read_or_create_secret(secrets_dir / "web-secret-key")
    read_or_create_secret(secrets_dir / "sso-secret")
    installation_key(root)
    config_path = root / CONFIG_NAME
    if not config_path.exists():
        cfg = default_config(root)
        for key, value in (config_overrides or {}).items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        write_private(config_path, json.dumps(cfg, indent=2) + "\n")
    return config_path


def installation_key(data_dir: str | os.PathLike) -> bytes:
    """This installation's key for keyed hashes of study and patient keys (never leaves the data dir)."""
    keys = Path(data_dir) / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    return bytes.fromhex(read_or_create_secret(keys / "installation.key"))


def keyed_hash(key: bytes, *parts: str, length: int = 32) -> str:
    """HMAC-SHA-256 of the parts (unambiguously joined), as ``length`` hex characters.

    Used for study keys (correlation ids, outside-quarantine names) and patient keys
    (AutoID, Incoming): linkable inside this installation, meaningless outside it.
    """
    msg = b"\x1f".join(p.encode("utf-8") for p in parts)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:length]


def study_key(cfg: Config, study_uid: str) -> str:
    """The study's pseudonymous key: correlation id in logs and its name outside the quarantine."""
    return keyed_hash(installation_key(cfg.data_dir), "study", study_uid, length=16)


def patient_key(cfg: Config, patient_id: str, issuer: str = "") -> str:
    """Keyed hash of the source patient (PatientID + IssuerOfPatientID)."""
    return keyed_hash(installation_key(cfg.data_dir), "patient", patient_id.strip(), issuer.strip())
