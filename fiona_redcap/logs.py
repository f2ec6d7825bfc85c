"""Structured logging: one event per line, ``key=value`` or JSON, with a correlation id.

Why a module of our own: every FIONA service must log the same way, and no patient
identifier or secret may ever reach a log line. Callers log *events with fields*
(``log_event(log, "study.complete", images=12)``), never formatted DICOM values. As a second
line of defence, values registered with :func:`register_sensitive` (the identifiers of the
datasets a process is handling, the tokens it holds) and token-shaped strings are masked in
every emitted line.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time
from typing import Any, Iterator

_correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("fiona_correlation", default=None)
_sensitive: set[str] = set()
_sensitive_lock = threading.Lock()
_sensitive_re: re.Pattern | None = None
# REDCap API tokens are 32 (project) or 64 (super) upper-case hex characters.
_TOKEN_RE = re.compile(r"\b[0-9A-Fa-f]{32}(?:[0-9A-Fa-f]{32})?\b")
_MAX_SENSITIVE = 50_000
MASK = "[redacted]"


def register_sensitive(*values: Any) -> None:
    """Mask these values (and their DICOM name parts) in every later log line of this process."""
    global _sensitive_re
    added = False
    with _sensitive_lock:
        for value in values:
            if value is None:
                continue
            text = str(value).strip()
            parts = {text}
            if "^" in text:
                parts.update(p for p in text.split("^") if p)
                parts.add(" ".join(p for p in text.split("^") if p))
            for part in parts:
                if len(part) >= 3 and part not in _sensitive:
                    if len(_sensitive) >= _MAX_SENSITIVE:
                        _sensitive.clear()
                    _sensitive.add(part)
                    added = True
        if added:
            ordered = sorted(_sensitive, key=len, reverse=True)
            _sensitive_re = re.compile("|".join(re.escape(v) for v in ordered), re.IGNORECASE) if ordered else None


def redact(text: str) -> str:
    """Mask registered values and token-shaped strings."""
    pattern = _sensitive_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _TOKEN_RE.sub(MASK, text)


@contextlib.contextmanager
def correlation(cid: str | None) -> Iterator[None]:
    """Attach a correlation id (e.g. a study key, never a UID or patient ID) to lines logged inside."""
    token = _correlation.set(cid)
    try:
        yield
    finally:
        _correlation.reset(token)


def current_correlation() -> str | None:
    return _correlation.get()


def _fmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class StructuredFormatter(logging.Formatter):
    """Formats a record as ``ts=... level=... logger=... event=... k=v`` or as one JSON object."""

    def __init__(self, fmt: str = "kv") -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None) or _correlation.get()
        if cid:
            fields["cid"] = cid
        fields.update(getattr(record, "fields", {}) or {})
        if getattr(record, "event", None) and record.msg != record.event:
            fields.setdefault("msg", record.getMessage())
        if record.exc_info:
            # The exception type and message only: tracebacks can carry values of locals.
            exc = record.exc_info[1]
            fields["error"] = f"{type(exc).__name__}: {exc}"
        if self.fmt == "json":
            line = json.dumps(fields, ensure_ascii=False, default=str)
        else:
            line = " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items())
        return redact(line)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event. Field values must not be patient identifiers."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, "fields": fields})


def setup(level: str = "INFO", fmt: str = "kv", stream=None) -> None:
    """Configure the root logger once per process with the structured formatter."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_fiona", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._fiona = True  # type: ignore[attr-defined]
    handler.setFormatter(StructuredFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries log DICOM content at DEBUG (pynetdicom dumps datasets); keep them at WARNING.
    for noisy in ("pynetdicom", "pydicom", "waitress", "apscheduler", "urllib3", "paramiko", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
