"""Serve a WSGI app with waitress until SIGTERM/SIGINT, announcing readiness on one line."""

from __future__ import annotations

import signal

from waitress.server import create_server


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT to leave waitress's loop."""


def serve(app, host: str, port: int, ready: str, threads: int = 8, ident: str = "FIONA") -> int:
    """Run until stopped; ``ready`` is printed (flushed) with ``{host}`` and ``{port}`` filled in."""
    server = create_server(app, host=host, port=port, threads=threads, ident=ident, channel_timeout=120)

    def stop(*_):
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(ready.format(host=host, port=server.effective_port), flush=True)
    try:
        server.run()
    except _Stop:
        pass
    finally:
        server.close()
    return 0
