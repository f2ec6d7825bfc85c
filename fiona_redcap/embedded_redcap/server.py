"""Serve the embedded REDCap API with waitress (a production WSGI server)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from waitress.server import create_server

from .. import logs
from .api import create_app
from .store import Store

log = logs.get_logger("fiona.redcap")


def make_server(db_path: Path, host: str, port: int, threads: int = 8):
    app = create_app(Store(db_path))
    return create_server(app, host=host, port=port, threads=threads, ident="REDCap", channel_timeout=120)


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT to leave waitress's loop."""


def serve(db_path: Path, host: str = "127.0.0.1", port: int = 8081) -> int:
    server = make_server(db_path, host, port)
    real_port = server.effective_port

    def shutdown(*_):
        raise _Stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    print(f"redcap api listening on http://{host}:{real_port}/api/", flush=True)
    logs.log_event(log, "redcap.started", host=host, port=real_port)
    try:
        server.run()
    except _Stop:
        pass
    finally:
        server.close()
        logs.log_event(log, "redcap.stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(Path(sys.argv[1]), port=int(sys.argv[2])))
