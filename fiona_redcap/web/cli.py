"""``fiona web``: the web app under waitress."""

from __future__ import annotations

import argparse
import signal
import sys


def register(sub, add_common) -> None:
    p = sub.add_parser("web", help="run the web app (Assign, Coupling lists, Status, Review, JSON API)")
    add_common(p)
    p.add_argument("--host", help="listen address (default from config, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default from config, 8080)")
    p.set_defaults(func=run)


class _Stop(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    from waitress.server import create_server

    from ..cli import load_config
    from . import create_app

    cfg = load_config(args)
    host, port = args.host or cfg.raw["web"]["host"], args.port or cfg.raw["web"]["port"]
    server = create_server(create_app(cfg), host=host, port=port, threads=8, ident="FIONA")

    def stop(*_):
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"web listening on http://{host}:{server.effective_port}/", flush=True)
    try:
        server.run()
    except _Stop:
        pass
    finally:
        server.close()
    return 0
