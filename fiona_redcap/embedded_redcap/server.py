"""Serve the embedded REDCap API with waitress (a production WSGI server)."""

from __future__ import annotations

from pathlib import Path

from waitress.server import create_server

from .. import logs, wsgi
from .api import create_app
from .store import Store

log = logs.get_logger("fiona.redcap")


def make_server(db_path: Path, host: str, port: int, threads: int = 8):
    app = create_app(Store(db_path))
    return create_server(app, host=host, port=port, threads=threads, ident="REDCap", channel_timeout=120)


def serve(db_path: Path, host: str = "127.0.0.1", port: int = 8081) -> int:
    logs.log_event(log, "redcap.starting", host=host, port=port)
    code = wsgi.serve(create_app(Store(db_path)), host, port, "redcap api listening on http://{host}:{port}/api/", ident="REDCap")
    logs.log_event(log, "redcap.stopped")
    return code


