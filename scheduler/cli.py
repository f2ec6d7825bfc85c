"""``fiona scheduler`` (the job service) and ``fiona run-job NAME`` (one job, once, by hand)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .jobs import JOBS, MANUAL_ONLY


def register(sub, add_common) -> None:
    p = sub.add_parser("scheduler", help="run the job service (assignments, pseudonymize and send, verify, retention)")
    add_common(p)
    p.set_defaults(func=run_scheduler)
    r = sub.add_parser("run-job", help="run one scheduler job once and print its summary")
    add_common(r)
    r.add_argument("name", choices=sorted(list(JOBS) + list(MANUAL_ONLY)))
    r.set_defaults(func=run_once)


def run_scheduler(args: argparse.Namespace) -> int:
    from fiona_redcap.cli import load_config

    from .service import serve

    cfg = load_config(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return serve(cfg, stop)


def run_once(args: argparse.Namespace) -> int:
    from fiona_redcap.cli import load_config

    from .context import Context
    from .service import Status, guarded

    cfg = load_config(args)
    ctx = Context(cfg)
    summary = guarded(ctx, Status(cfg, ctx, manual=True), args.name)
    if summary is None:
        print(f"fiona run-job: {args.name} failed; see the log line above", file=sys.stderr)
        return 1
    print(json.dumps({"job": args.name, **summary}))
    return 0
