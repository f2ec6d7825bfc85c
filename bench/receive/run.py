"""Benchmark: FIONA's receiver against dcmtk's storescp, same study set, same run.

    python bench/receive/run.py            # 2,000 MR 256x256 + 200 CT 512x512
    python bench/receive/run.py --small    # 200 MR + 20 CT, for a quick look

Sends with dcmtk's storescu (TCP_NODELAY=1) over one association, then over four at once,
and prints images/s, MB/s and the ratio FIONA / storescp. FIONA fsyncs every image before
acknowledging it; storescp does not. Three references show where the time goes: a pynetdicom
SCP whose handler acknowledges without storing anything (stock, and with the shortened reactor
polls FIONA uses) is the ceiling for any receiver built on pynetdicom; the same with each
dataset streamed into a temporary file by pynetdicom (as FIONA receives, so that memory stays
flat) is the ceiling for FIONA's design before its own work (parse, fsync, link, index).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fiona_redcap.datadir import init_data_dir  # noqa: E402
from tests.fixtures.dicom import make_study  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_set(root: Path, mr: int, ct: int) -> list[Path]:
    print(f"generating {mr} MR (256x256) and {ct} CT (512x512) images ...", flush=True)
    make_study(root / "mr", series=max(1, mr // 500), images=min(mr, 500), modality="MR", rows=256, cols=256)
    make_study(root / "ct", series=1, images=ct, modality="CT", rows=512, cols=512)
    return sorted(root.rglob("*.dcm"))


def split(files: list[Path], root: Path, parts: int) -> list[Path]:
    dirs = []
    for i in range(parts):
        d = root / f"part{i}"
        d.mkdir(parents=True)
        for f in files[i::parts]:
            os.link(f, d / f"{f.parent.name}_{f.name}")
        dirs.append(d)
    return dirs


def send(port: int, folders: list[Path]) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", "BENCH", "+sd", "+r", "127.0.0.1", str(port), str(f)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for f in folders]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def start_storescp(out: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out.mkdir(parents=True)
    proc = subprocess.Popen(["/usr/bin/storescp", "-aet", "BENCH", "+xa", "-od", str(out), str(port)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def start_floor(poll: float | None, streamed: Path | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    extra = ["--poll", str(poll)] if poll is not None else []
    if streamed is not None:
        streamed.mkdir(parents=True, exist_ok=True)
        extra += ["--streamed", str(streamed)]
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("minimal_scp.py")), str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "listening" in proc.stdout.readline()
    time.sleep(0.3)
    return proc, port


def start_fiona(data: Path, workers: int = 1) -> tuple[subprocess.Popen, int]:
    init_data_dir(data)
    cfg = json.loads((data / "config.json").read_text())
    cfg["dicom"]["aet"] = "BENCH"
    cfg["dicom"]["min_free_mb"] = 10
    cfg["redcap"]["url"] = "http://127.0.0.1:9/api/"  # studies queue in the outbox; not measured here
    cfg["timing"] = {"quiet_period_seconds": 3600}
    (data / "config.json").write_text(json.dumps(cfg))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fiona_redcap.cli", "scp", "--data-dir", str(data), "--port", str(port),
                             "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "listening" in proc.stdout.readline()
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="200 MR + 20 CT images")
    args = parser.parse_args()
    mr, ct = (200, 20) if args.small else (2000, 200)
    tmp = Path(tempfile.mkdtemp(prefix="fiona-bench-receive-"))
    files = make_set(tmp / "set", mr, ct)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    one = [tmp / "set"]
    four = split(files, tmp / "split", 4)
    results = {}
    runs = (("storescp", lambda run: start_storescp(tmp / f"storescp-{run}"), ("1", "4")),
            ("pynetdicom no-op handler", lambda run: start_floor(None), ("1",)),
            ("pynetdicom no-op handler, short polls", lambda run: start_floor(0.0002), ("1",)),
            ("pynetdicom no-op handler, short polls, streamed to a file", lambda run: start_floor(0.0002, tmp / "streamed"), ("1",)),
            ("FIONA", lambda run: start_fiona(tmp / f"fiona-{run}"), ("1", "4")),
            (f"FIONA --workers {os.cpu_count()}", lambda run: start_fiona(tmp / f"fionaw-{run}", os.cpu_count() or 2), ("1", "4")))
    for name, starter, which in runs:
        for label, folders in (("1 association", one), ("4 associations", four)):
            if label[0] not in which:
                continue
            proc, port = starter(label[0])
            try:
                print(f"{name}: sending {len(files)} images ({total_mb:.0f} MB) over {label} ...", flush=True)
                seconds = send(port, folders)
            finally:
                proc.terminate()
                proc.wait(30)
            results[(name, label)] = seconds
            print(f"  {name}, {label}: {len(files) / seconds:,.0f} images/s, {total_mb / seconds:,.1f} MB/s", flush=True)
    for label in ("1 association", "4 associations"):
        for name in [k[0] for k in results if k[0] != "storescp" and k[1] == label]:
            ratio = results[("storescp", label)] / results[(name, label)]
            print(f"ratio {name}/storescp, {label}: {ratio:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
