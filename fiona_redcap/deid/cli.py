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
    for n, (study_uid, files) in enumerate(sorted(studies.items()), 1):
        name = engine.pseudo.identifier("study-folder", study_uid, 12).lower()
        try:
            result = engine.study(files, args.output / name, args.participant, args.event, progress=bar)
            print(f"study {n}: {result.images} instances written to {result.output_dir} (audit: {result.audit_path.name})")
        except DeidRefused as exc:
            refused += 1
            print(f"study {n}: REFUSED: {exc}", file=sys.stderr)
    if not studies:
        print("fiona anonymize: no DICOM files found", file=sys.stderr)
        return 2
    return 1 if refused or unreadable else 0
