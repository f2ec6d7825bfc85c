"""First start of the embedded REDCap: an admin user and a super token, kept in the data directory."""

from __future__ import annotations

from pathlib import Path

from ..datadir import init_data_dir, write_private
from . import admin


def bootstrap(data_dir: str | Path) -> dict:
    """Ensure user ``admin`` (super user) and a super API token exist.

    Returns ``{"username": "admin", "password": <new password, or None if the user existed>}``.
    The password is stored in ``<data>/secrets/admin-password`` and the super token in
    ``<data>/secrets/redcap-super-token`` (both 0600).
    """
    data_dir = Path(data_dir).resolve()
    if not (data_dir / "secrets").exists():
        init_data_dir(data_dir)
    db = admin.db_path(data_dir)
    password = admin.ensure_user(db, "admin", super_user=True, firstname="FIONA", lastname="Administrator")
    if password:
        write_private(data_dir / "secrets" / "admin-password", password + "\n")
    token_file = data_dir / "secrets" / "redcap-super-token"
    if not token_file.exists():
        write_private(token_file, admin.create_super_token(db, "admin") + "\n")
    return {"username": "admin", "password": password}
