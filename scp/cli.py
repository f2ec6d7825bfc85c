"""``fiona scp`` (the receiver service), ``fiona send`` (a C-STORE SCU) and ``fiona status``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path


def register(sub, add_common) -> None:
    p = sub.add_parser("scp", help="run the DICOM receiver (Storage SCP) of every configured site")
    add_common(p)
    p.add_argument("--port", type=int, help="port of the main site (default from config, 11112)")
    p.add_argument("--aet", help="AE title of the main site (default from config, FIONA)")
    p.add_argument("--rules", help="classification rules file (classifyRules.json format; default: shipped rules)")
    p.add_argument("--workers", type=int, default=1, help="receiver processes sharing each port (default 1; e.g. the number of cores)")
    p.set_defaults(func=run_scp)

    s = sub.add_parser("send", help="send DICOM files or folders (recursively) with C-STORE")
    add_common(s)
    s.add_argument("paths", nargs="+", type=Path)
    s.add_argument("--to", help="AE@host:port (default: this FIONA's own receiver)")
    s.add_argument("--aet", default="FIONA_SEND", help="calling AE title (default FIONA_SEND)")
    s.set_defaults(func=run_send)

    st = sub.add_parser("status", help="health of the receiver and scheduler: sites, quarantine, REDCap backlog")
    add_common(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=run_status)


def status_path(data_dir: Path, service: str) -> Path:
    path = data_dir / "status"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path / f"{service}.json"


def run_scp(args: argparse.Namespace) -> int:
    from fiona_redcap import logs
    from fiona_redcap.cli import load_config
    from fiona_redcap.quarantine import write_json_atomic

    from .classify import Classifier, RulesError
    from .completion import Completion
    from .server import clean_after_crash, start_all

    cfg = load_config(args)
    try:
        classifier = Classifier.load(args.rules)
    except RulesError as exc:
        print(f"fiona scp: {exc}", file=sys.stderr)
        return 2
    clean_after_crash(cfg)
    workers = [_spawn_worker(cfg, classifier, args.port, args.aet) for _ in range(max(0, args.workers - 1))]
    try:
        receivers = start_all(cfg, classifier, args.port, args.aet, clean=False)
    except OSError as exc:
        print(f"fiona scp: cannot listen: {exc.strerror}", file=sys.stderr)
        for w in workers:
            w.terminate()
        return 1
    def flush_arrivals() -> None:
        for r in receivers:
            r.recorder.flush()

    completion = Completion(cfg, {r.name: r.q for r in receivers}, classifier=classifier, before_tick=flush_arrivals)
    completion.start()
    for r in receivers:
        print(f"dicom scp {r.site['aet']} listening on {r.site.get('host', '127.0.0.1')}:{r.port}", flush=True)
    log = logging.getLogger("fiona.scp")
    logs.log_event(log, "scp.started", sites=",".join(f"{r.site['aet']}@{r.port}" for r in receivers), workers=args.workers)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    status_file = status_path(cfg.data_dir, "scp")
    while not stop.wait(2.0):
        studies = {r.name: r.q.studies() for r in receivers}
        write_json_atomic(status_file, {
            "service": "scp",
            "updated": time.time(),
            "sites": [{"name": r.name, "aet": r.site["aet"], "host": r.site.get("host", "127.0.0.1"), "port": r.port,
                       "studies": len(studies[r.name]), "last_arrival": r.last_arrival} for r in receivers],
            "redcap_backlog": len(completion.outbox),
            "redcap_ok": completion.redcap_ok,
            "redcap_error": completion.last_error,
        })
    for r in receivers:
        r.stop()
    for w in workers:
        w.terminate()
    for w in workers:
        w.join(20)
    completion.stop()
    completion.tick()
    completion.flush()
    logs.log_event(log, "scp.stopped", redcap_backlog=len(completion.outbox))
    return 0



def _worker_main(cfg, classifier, port, aet) -> None:
    """A receiver process sharing the ports of the main one; dies with it."""
    import ctypes

    from fiona_redcap import logs

    from .server import start_all

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the main receiver
    except OSError:
        pass
    logs.setup(cfg.raw["log"]["level"], cfg.raw["log"]["format"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    receivers = start_all(cfg, classifier, port, aet, clean=False)
    stop.wait()
    for r in receivers:
        r.stop()


def _spawn_worker(cfg, classifier, port, aet):
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_worker_main, args=(cfg, classifier, port, aet), daemon=True)
    proc.start()
    return proc


def run_send(args: argparse.Namespace) -> int:
    from fiona_redcap.cli import load_config
    from fiona_redcap.dicom_net import dicom_files, parse_target, send_files
    from fiona_redcap.progress import bar

    cfg = load_config(args)
    if args.to:
        try:
            aet, host, port = parse_target(args.to)
        except ValueError as exc:
            print(f"fiona send: {exc}", file=sys.stderr)
            return 2
    else:
        main = cfg.sites()[0]
        aet, host, port = main["aet"], main.get("host", "127.0.0.1"), main["port"]
    files = dicom_files(args.paths)
    if not files:
        print("fiona send: no files found", file=sys.stderr)
        return 2
    try:
        result = send_files(files, aet, host, port, calling_aet=args.aet, progress=bar)
    except ConnectionError as exc:
        print(f"fiona send: {exc}", file=sys.stderr)
        return 1
    print(f"sent {result.sent} of {len(files)} files to {aet}@{host}:{port}")
    for name, reason in result.failed[:20]:
        print(f"  failed: {name}: {reason}", file=sys.stderr)
    if len(result.failed) > 20:
        print(f"  ... and {len(result.failed) - 20} more", file=sys.stderr)
    return 0 if result.ok else 1


def run_status(args: argparse.Namespace) -> int:
    from fiona_redcap.cli import load_config
    from fiona_redcap.dicom_net import echo
    from fiona_redcap.quarantine import quarantines, read_json

    cfg = load_config(args)
    scp = read_json(cfg.data_dir / "status" / "scp.json") or {}
    scheduler = read_json(cfg.data_dir / "status" / "scheduler.json") or {}
    report = {"scp": {"running": bool(scp) and time.time() - scp.get("updated", 0) < 30, "sites": []},
              "scheduler": scheduler, "quarantine": {}, "redcap_backlog": len(list((cfg.data_dir / "outbox").glob("*.json")))}
    for site in cfg.sites():
        port = next((s["port"] for s in scp.get("sites", []) if s["name"] == site["name"]), site["port"])
        ok = echo(site["aet"], site.get("host", "127.0.0.1"), port, calling_aet="FIONA_STATUS", timeout=5)
        report["scp"]["sites"].append({"name": site["name"], "aet": site["aet"], "port": port, "echo": ok})
    for name, q in quarantines(cfg).items():
        studies = q.studies()
        last = max((q.last_arrival(s) for s in studies), default=0)
        report["quarantine"][name] = {"studies": len(studies), "last_arrival": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else ""}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for s in report["scp"]["sites"]:
            print(f"site {s['name']}: {s['aet']} port {s['port']}: {'answers C-ECHO' if s['echo'] else 'NOT ANSWERING'}")
        for name, qinfo in report["quarantine"].items():
            print(f"quarantine {name}: {qinfo['studies']} studies, last arrival {qinfo['last_arrival'] or 'never'}")
        print(f"REDCap backlog: {report['redcap_backlog']} studies waiting to be written to Incoming")
        if scheduler:
            print(f"scheduler: last update {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(scheduler.get('updated', 0)))}")
    healthy = all(s["echo"] for s in report["scp"]["sites"])
    return 0 if healthy else 1
