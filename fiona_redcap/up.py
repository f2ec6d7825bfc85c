"""``fiona up``: the whole gateway in one process group, on the embedded defaults.

Each service runs as its own child process (``fiona redcap serve``, ``fiona scp``,
``fiona scheduler``, ``fiona web``) exactly as a systemd unit would run it; this supervisor
only prepares the data directory, installs the control projects once the REDCap API answers,
relays the children's ready lines, and stops them all together.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import logs
from .config import CONFIG_NAME, DEFAULT_DATA_DIR, Config
from .datadir import init_data_dir, write_private

log = logs.get_logger("fiona.up")

READY_TIMEOUT = 60.0


def register(sub, add_common) -> None:
    p = sub.add_parser("up", help="run the whole gateway (embedded REDCap, DICOM receiver, scheduler, web app)")
    add_common(p)
    p.add_argument("--web-port", type=int, help="web app port (default from config, 8080)")
    p.add_argument("--redcap-port", type=int, help="embedded REDCap API port (default from config, 8081)")
    p.add_argument("--dicom-port", type=int, help="DICOM receiver port (default from config, 11112)")
    p.add_argument("--no-install", action="store_true", help="do not create/update the control projects at start")
    p.set_defaults(func=run)


class Child:
    """One service process whose stdout lines are relayed and watched for its ready line."""

    def __init__(self, name: str, argv: list[str], ready_marker: str) -> None:
        self.name = name
        self.ready = threading.Event()
        self.ready_marker = ready_marker
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._relay, name=f"relay-{name}", daemon=True)
        self.thread.start()

    def _relay(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if self.ready_marker in line:
                self.ready.set()

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.2):
                return True
            if self.proc.poll() is not None:
                return False
        return False

    def stop(self, grace: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def effective_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """Create the data directory if needed and write the one config file every child reads."""
    config_path = Path(args.config) if args.config else Path(args.data_dir or DEFAULT_DATA_DIR) / CONFIG_NAME
    if not args.config and not config_path.exists():
        init_data_dir(config_path.parent)
        print(f"created data directory {config_path.parent.resolve()} with a default configuration", flush=True)
    base = Config.load(config_path, args.data_dir)  # validates the file; errors reach the user readably
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    if args.dicom_port:
        raw.setdefault("dicom", {})["port"] = args.dicom_port
    if args.web_port:
        raw.setdefault("web", {})["port"] = args.web_port
    if args.redcap_port:
        redcap = raw.setdefault("redcap", {})
        redcap["embedded"] = dict(redcap.get("embedded", {}), enabled=True, port=args.redcap_port)
        redcap["url"] = f"http://{redcap['embedded'].get('host', '127.0.0.1')}:{args.redcap_port}/api/"
    raw["data_dir"] = str(base.data_dir)
    init_data_dir(base.data_dir)
    run_dir = base.data_dir / "run"
    run_dir.mkdir(exist_ok=True, mode=0o700)
    effective = run_dir / "effective-config.json"
    write_private(effective, json.dumps(raw, indent=2) + "\n")
    return Config.load(effective), effective


def run(args: argparse.Namespace) -> int:
    cfg, cfg_path = effective_config(args)
    logs.setup(cfg.raw["log"]["level"], cfg.raw["log"]["format"])
    fiona = [sys.executable, "-m", "fiona_redcap.cli"]
    common = ["--data-dir", str(cfg.data_dir), "--config", str(cfg_path)]
    children: list[Child] = []

    stopping = threading.Event()

    def stop_all(*_sig) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)

    def start(name: str, argv: list[str], marker: str) -> Child | None:
        child = Child(name, fiona + argv + common, marker)
        children.append(child)
        if not child.wait_ready(READY_TIMEOUT):
            print(f"fiona up: {name} did not start (exit code {child.proc.poll()}); see the log lines above", file=sys.stderr)
            return None
        return child

    try:
        embedded = cfg.raw["redcap"]["embedded"]
        if embedded["enabled"]:
            from .embedded_redcap.bootstrap import bootstrap

            login = bootstrap(cfg.data_dir)
            if not start("redcap", ["redcap", "serve", "--port", str(embedded["port"])], "listening on"):
                return 1
            if not args.no_install:
                from .redcap_install import install

                install(cfg, progress=lambda m: print(f"redcap install: {m}", flush=True))
        for name, argv, marker in (
            ("scp", ["scp"], "listening on"),
            ("scheduler", ["scheduler"], "scheduler running"),
            ("web", ["web"], "web listening on"),
        ):
            if not start(name, argv, marker):
                return 1
        if embedded["enabled"] and login.get("password"):
            web = cfg.raw["web"]
            secret = cfg.data_dir / "secrets" / "admin-password"
            print(
                f"log in at http://{web['host']}:{web['port']}/ as {login['username']} with password {login['password']}"
                f" (shown once; stored in {secret})",
                flush=True,
            )
        print("fiona up: all services running; Ctrl-C stops them", flush=True)
        while not stopping.is_set():
            for child in children:
                if child.proc.poll() is not None:
                    print(f"fiona up: {child.name} stopped unexpectedly (exit code {child.proc.returncode}); stopping all", file=sys.stderr)
                    return 1
            stopping.wait(0.5)
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        if children:
            print("fiona up: stopped", flush=True)
