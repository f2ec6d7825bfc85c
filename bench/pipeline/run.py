"""Pipeline benchmark: a 500-image study from dcmtk storescu to verified in the research PACS (Orthanc).

Everything is real and local: the embedded REDCap (``fiona redcap serve``), the receiver
(``fiona scp``), the scheduler (``fiona scheduler``) and Orthanc, each a subprocess on loopback.

Prints
* ``latency beyond quiet period: X s``: from storescu's last acknowledged image to the transfer
  verified (the scheduler's ``transfer.done state=verified`` log line, so that measuring costs
  no REDCap call), minus the configured quiet period (reported on its own line);
* ``REDCap calls per study: N``: API calls counted at the embedded server (its ``redcap.api``
  log lines) from the last image to the verified transfer, minus the scheduler's periodic reads
  in that window (its polls of Incoming with ``dateRangeBegin`` and list reads, made once per
  job interval whatever the number of studies; it counts them in ``<data>/scheduler/poll.json``).
  The receiver's Incoming write and the research project's Imaging write are included.

Targets: X <= 10 s; N <= 6, independent of the image count (try ``--images 50``).
Usage: python3 bench/pipeline/run.py [--images 500] [--series 5] [--quiet 5]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fiona_redcap.redcap_install import load_instrument  # noqa: E402
from fiona_redcap.state import client, coupling, projects  # noqa: E402
from tests.fixtures.dicom import ScpService, make_study, storescu  # noqa: E402
from tests.fixtures.orthanc import OrthancServer  # noqa: E402
from tests.fixtures.redcap import RedcapServer, make_fiona_data_dir  # noqa: E402

TS = re.compile(r"^ts=(\S+)")


def parse_ts(line: str) -> float | None:
    m = TS.match(line)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc).timestamp()


def api_calls(log: Path, start: float, end: float) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        if "event=redcap.api" not in line:
            continue
        ts = parse_ts(line)
        if ts is not None and start <= ts <= end:
            content = re.search(r"content=(\S+)", line)
            action = re.search(r"action=(\S+)", line)
            counts[f"{content.group(1) if content else '?'}/{action.group(1) if action else '?'}"] += 1
    return counts


def wait_line(path: Path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {needle!r} in {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--series", type=int, default=5)
    ap.add_argument("--quiet", type=float, default=5.0, help="quiet period in seconds (default 5)")
    ap.add_argument("--size", type=int, default=128, help="image rows/columns (default 128)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fiona-bench-pipeline-"))
    print(f"working in {work}", flush=True)
    procs = []
    redcap = RedcapServer(work / "redcap")
    # The server logs every API call; reads only at DEBUG (they are frequent), so ask for DEBUG to count them all.
    server_cfg = redcap.data_dir / "config.json"
    raw_server = json.loads(server_cfg.read_text()) if server_cfg.exists() else {}
    raw_server["log"] = {"level": "DEBUG", "format": "kv"}
    server_cfg.write_text(json.dumps(raw_server))
    redcap.start()
    procs.append(redcap)
    pacs = OrthancServer(work / "orthanc")
    pacs.start()
    procs.append(pacs)
    try:
        intervals = {"anonymize-and-send": 1, "create-transfer-requests": 60, "populate-autoid": 60, "resend-project": 60,
                     "verify": 60, "populate-projects": 60, "retention": 3600}
        cfg = make_fiona_data_dir(work / "fiona-data", redcap, overrides={
            "destinations": {"pacs": pacs.destination()}, "default_destination": "pacs",
            "timing": {"quiet_period_seconds": args.quiet, "job_intervals_seconds": intervals}})
        dictionary, _, _ = load_instrument("imaging")
        token = redcap.new_project("research BENCH", dictionary=dictionary, repeating=[("imaging", "")])
        raw = json.loads((cfg.data_dir / "config.json").read_text())
        raw["redcap"]["research_tokens"] = {"bench": token}
        (cfg.data_dir / "config.json").write_text(json.dumps(raw))
        cfg = type(cfg).load(None, cfg.data_dir)
        projects.save_project(cfg, {"project_name": "BENCHMARK", "project_active": "1", "project_participant_regex": r"B[0-9]{3}",
                                    "project_redcap_url": redcap.url, "project_token_ref": "bench", "project_complete": "2"})
        print(f"making a study of {args.images} images ({args.series} series, {args.size}x{args.size})", flush=True)
        study = make_study(work / "study", series=args.series, images=args.images // args.series, rows=args.size, cols=args.size)
        coupling.store(client.control_project(cfg, "coupling"),
                       [coupling.CouplingEntry("accession", study.identity.accession, "BENCHMARK", "B001")], uploaded_by="bench")
        scp = ScpService(cfg.data_dir).start()
        procs.append(scp)
        sched_log = cfg.data_dir / "scheduler.log"
        sched = subprocess.Popen([sys.executable, "-m", "fiona_redcap.cli", "scheduler", "--data-dir", str(cfg.data_dir)],
                                 stdout=subprocess.PIPE, stderr=open(sched_log, "ab"), text=True)
        assert "scheduler running" in sched.stdout.readline(), sched_log.read_text()[-2000:]
        redcap_log = redcap.data_dir / "redcap-server.log"

        poll_file = cfg.data_dir / "scheduler" / "poll.json"
        time.sleep(3)  # first runs (full Incoming read, lists, research project metadata) are start-up cost

        print("sending with dcmtk storescu", flush=True)
        sent_start = time.time()
        result = storescu(scp.port, study.folder)
        last_image = time.time()
        reads_before = json.loads(poll_file.read_text())["periodic_reads"]
        assert result.returncode == 0, result.stderr[-2000:]
        print(f"storescu: {len(study.files)} images in {last_image - sent_start:.1f} s", flush=True)
        done = wait_line(sched_log, "state=verified", 300)
        verified_at = parse_ts(done)
        window = verified_at - last_image
        sched.terminate()
        sched.wait(30)
        reads = json.loads(poll_file.read_text())["periodic_reads"] - reads_before
        calls = api_calls(redcap_log, last_image, time.time())
        per_study = sum(calls.values()) - reads
        if calls.get("record/export", 0) < reads:
            raise SystemExit("the REDCap server's log misses calls (fewer record exports than the scheduler's polls); "
                             "is it logging at DEBUG?")
        print(f"quiet period: {args.quiet:.1f} s")
        print(f"last image to verified: {window:.2f} s")
        print(f"REDCap calls from the last image to the scheduler's stop: {sum(calls.values())} "
              f"({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))}), of which periodic reads: {reads}")
        print(f"latency beyond quiet period: {window - args.quiet:.2f} s")
        print(f"REDCap calls per study: {round(per_study)}")
        return 0
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
