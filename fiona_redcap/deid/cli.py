"""``fiona anonymize INPUT OUTPUT --project P --participant ID``: the engine for scripts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub, add_common) -> None:
    p = sub.add_parser("anonymize", help="pseudonymize DICOM files or folders (recursively) for a project and participant")
    add_common(p)
    p.add_argument("input", type=Path, help="file or folder")
    p.add_argument("output", type=Path, help="output folder (one folder per study, one file per instance)")
    p.add_argument("--project", required=True)
    p.add_argument("--participant", required=True)
    p.add_argument("--event", default="")
    p.add_argument("--option", action="append", default=[], metavar="NAME",
                   help="a PS3.15 option (repeatable), e.g. clean-descriptors; none given: the project defaults")
    p.add_argument("--key-file", help="pseudonymization key file (default: <data>/keys/<project>.key, created if missing)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="studies pseudonymized at once, each in its own process (e.g. the number of cores; default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    from ..cli import load_config
    from ..dicom_net import dicom_files
    from ..progress import bar
    from . import DeidOptions, DeidRefused, ProjectPolicy, Pseudonymizer, key_from_file, project_key

    cfg = load_config(args)
    try:
        options = DeidOptions.from_names(args.option) if args.option else DeidOptions.defaults()
        key, key_id = key_from_file(args.key_file) if args.key_file else project_key(cfg.data_dir, args.project)
    except (ValueError, OSError) as exc:
        print(f"fiona anonymize: {exc}", file=sys.stderr)
        return 2
    policy = ProjectPolicy(project=args.project, options=options, uid_root=cfg.raw["deid"].get("uid_root"),
                           date_shift_max_days=cfg.raw["deid"]["date_shift_max_days"])
    engine = Pseudonymizer(policy, key, key_id)
    studies: dict[str, list[Path]] = {}
    unreadable = 0
    for f in dicom_files([args.input]):
        try:
            studies.setdefault(str(dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID), []).append(f)
        except (InvalidDicomError, AttributeError, OSError):
            unreadable += 1
    if unreadable:
        print(f"fiona anonymize: {unreadable} file(s) are not DICOM and were skipped", file=sys.stderr)
    refused = 0
    args.output.mkdir(parents=True, exist_ok=True)
    jobs = [(n, files, args.output / engine.pseudo.identifier("study-folder", study_uid, 12).lower())
            for n, (study_uid, files) in enumerate(sorted(studies.items()), 1)]
    if args.jobs > 1 and len(jobs) > 1:
        outcomes = _in_processes(args.jobs, policy, key, key_id, jobs, args.participant, args.event)
    else:
        outcomes = (_one_study(engine, n, files, out, args.participant, args.event, bar) for n, files, out in jobs)
    for n, ok, message in outcomes:
        print(f"study {n}: {message}" if ok else f"study {n}: REFUSED: {message}", file=sys.stdout if ok else sys.stderr)
        refused += not ok
    if not studies:
        print("fiona anonymize: no DICOM files found", file=sys.stderr)
        return 2
    return 1 if refused or unreadable else 0


def _one_study(engine, n: int, files: list[Path], out: Path, participant: str, event: str, progress=None) -> tuple[int, bool, str]:
    """Pseudonymize one study: (its number, done?, what to print). Refusals are returned, not raised, so that
    they cross process boundaries as plain text."""
    from . import DeidRefused

    try:
        result = engine.study(files, out, participant, event, progress=progress)
    except DeidRefused as exc:
        return n, False, str(exc)
    return n, True, f"{result.images} instances written to {result.output_dir} (audit: {result.audit_path.name})"


def _in_processes(workers: int, policy, key: bytes, key_id: str, jobs: list, participant: str, event: str):
    """Studies spread over ``workers`` processes; yields their outcomes as they finish, with a progress bar."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from ..progress import bar

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_worker_init, initargs=(policy, key, key_id)) as pool:
        futures = [pool.submit(_worker_study, n, files, out, participant, event) for n, files, out in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            bar(done, len(futures))
            yield future.result()


_engine = None  # one per worker process


def _worker_init(policy, key: bytes, key_id: str) -> None:
    global _engine
    from . import Pseudonymizer

    _engine = Pseudonymizer(policy, key, key_id)


def _worker_study(n: int, files: list[Path], out: Path, participant: str, event: str) -> tuple[int, bool, str]:
    return _one_study(_engine, n, files, out, participant, event)
