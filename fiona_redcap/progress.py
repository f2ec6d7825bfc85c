"""A text progress bar for long-running commands (written to stderr, so stdout stays parseable)."""

from __future__ import annotations

import sys


def bar(done: int, total: int, width: int = 30) -> None:
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
