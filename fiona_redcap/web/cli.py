"""``fiona web``: the web app under waitress."""

from __future__ import annotations

import argparse


def register(sub, add_common) -> None:
    p = sub.add_parser("web", help="run the web app (Assign, Coupling lists, Status, Review, JSON API)")
    add_common(p)
    p.add_argument("--host", help="listen address (default from config, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default from config, 8080)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cli import load_config
    from ..wsgi import serve
    from . import create_app

    cfg = load_config(args)
    host, port = args.host or cfg.raw["web"]["host"], args.port or cfg.raw["web"]["port"]
    return serve(create_app(cfg), host, port, "web listening on http://{host}:{port}/")
