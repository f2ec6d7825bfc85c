"""Benchmark: FIONA's pseudonymizer against dicognito on the same synthetic set, same run.

    python bench/anonymize/run.py [--images 400]

Header de-identification only (MR, no burned-in text). Prints files/s for dicognito and for
FIONA's engine on one core, the ratio, and FIONA's scaling with a process pool of 1 and 2.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402

from fiona_redcap.deid import ProjectPolicy, Pseudonymizer  # noqa: E402
from tests.fixtures.dicom import make_study  # noqa: E402

KEY = b"bench-key-bench-key-bench-key-32"


def fiona_chunk(args: tuple[list[str], str, int]) -> int:
    files, out, n = args
    engine = Pseudonymizer(ProjectPolicy("BENCH"), KEY, "bench")
    return engine.study([Path(f) for f in files], Path(out) / f"chunk{n}", "P001", "v1").images


def run_dicognito(files: list[Path], out: Path) -> float:
    from dicognito.anonymizer import Anonymizer

    out.mkdir()
    anonymizer = Anonymizer(seed="bench")
    start = time.perf_counter()
    for i, f in enumerate(files):
        ds = dcmread(f)
        anonymizer.anonymize(ds)
        ds.save_as(out / f"{i}.dcm")
    return time.perf_counter() - start


def run_fiona(files: list[Path], out: Path, workers: int) -> float:
    chunks = [([str(f) for f in files[i::workers * 4]], str(out), i) for i in range(workers * 4)]
    start = time.perf_counter()
    if workers == 1:
        total = sum(fiona_chunk(c) for c in chunks)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            total = sum(pool.map(fiona_chunk, chunks))
    assert total == len(files)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fiona-bench-anon-"))
    print(f"generating {args.images} MR images (256x256) ...", flush=True)
    study = make_study(tmp / "in", series=4, images=args.images // 4, rows=256, cols=256)
    files = study.files
    t_dicognito = run_dicognito(files, tmp / "dicognito")
    print(f"dicognito: {len(files) / t_dicognito:,.0f} files/s", flush=True)
    t1 = run_fiona(files, tmp / "fiona1", 1)
    print(f"FIONA, 1 process: {len(files) / t1:,.0f} files/s", flush=True)
    t2 = run_fiona(files, tmp / "fiona2", 2)
    print(f"FIONA, 2 processes: {len(files) / t2:,.0f} files/s", flush=True)
    print(f"ratio FIONA/dicognito (1 core): {t_dicognito / t1:.2f}")
    print(f"scaling 1 -> 2 processes: {t1 / t2:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
