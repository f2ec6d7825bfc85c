"""Durable storage of received instances: acknowledged means on disk.

An instance is copied from pynetdicom's chunk file (memory stays flat) to a temporary name
in its series folder, fsync'd, renamed to ``<SOPUID>.dcm`` and the folder fsync'd; only then
does the C-STORE handler return success. A crash at any moment leaves either no file or a
complete one (temporary names start with '.' and are never counted as received).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class DiskFull(OSError):
    """No space left: the sender gets Out of Resources (0xA700) and may retry later."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path, stop: Path) -> None:
    """Create ``path`` (0700) and fsync every parent whose entries changed, up to ``stop``."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.is_dir() and p != stop and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        fsync_dir(d.parent)


def store_file(source: Path | None, data: bytes | None, dest: Path, quarantine_root: Path) -> bool:
    """Durably place one instance at ``dest``. Returns False if it was already there (duplicate).

    A received chunk file on the same filesystem is fsync'd and hard-linked into place (no
    copy; link fails if the instance exists, which makes duplicates atomic); otherwise the
    bytes are copied to a temporary name, fsync'd and renamed.
    """
    if dest.exists():
        return False
    make_private_dirs(dest.parent, quarantine_root)
    if source is not None:
        try:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(source, dest)
            os.chmod(dest, 0o600)
            fsync_dir(dest.parent)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(exc.errno, "no space left in the quarantine") from None
                raise
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{id(dest)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, out, 1024 * 1024)
            else:
                out.write(data or b"")
            out.flush()
            os.fsync(out.fileno())
        if dest.exists():  # a concurrent association stored the same instance first
            os.unlink(tmp)
            return False
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return True
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(exc.errno, "no space left in the quarantine") from None
        raise


def clean_temporaries(root: Path) -> int:
    """Remove temporary files left by a crash (they were never acknowledged)."""
    removed = 0
    if not root.exists():
        return 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
                except OSError:
                    pass
    return removed
