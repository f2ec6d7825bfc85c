"""Benchmark: FIONA's pseudonymizer against dicognito on the same synthetic set, same run.

    python bench/anonymize/run.py [--studies 4] [--images 100] [--minimal | --varying-references]

Header de-identification only (MR, no burned-in text): ``--studies`` studies (each its own
patient) of two series with ``--images`` images per study, with the attributes a scanner
writes (``--minimal``: only the test fixtures' 36). FIONA works study by study, as the pipeline
does. Prints files/s for dicognito and for FIONA's engine on one core, the ratio, and the scaling of
both with a process pool of 1 and 2 (studies spread over the pool): dicognito's scaling is the
reference for what this machine's cores give to such work.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402

from fiona_redcap.deid import ProjectPolicy, Pseudonymizer  # noqa: E402
from tests.fixtures.dicom import Identity, make_study  # noqa: E402

KEY = b"bench-key-bench-key-bench-key-32"


MR_ATTRIBUTES = {
    "InstitutionAddress": "1 Hospital Road, Springfield", "InstitutionalDepartmentName": "Radiology", "StationName": "MRC40123",
    "OperatorsName": "TECH^ANNA", "PerformingPhysicianName": "HOUSE^GREGORY", "PatientAge": "047Y", "PatientSize": "1.68",
    "PatientWeight": "64", "AcquisitionDate": "20230318", "AcquisitionTime": "101733.125000", "ContentTime": "101801.250000",
    "SeriesTime": "101700.000000", "ScanningSequence": ["GR", "IR"], "SequenceVariant": ["SK", "SP", "MP"],
    "ScanOptions": "IR", "MRAcquisitionType": "3D", "SequenceName": "*tfl3d1_16ns", "SliceThickness": "1",
    "RepetitionTime": "2300", "EchoTime": "2.98", "InversionTime": "900", "NumberOfAverages": "1", "ImagingFrequency": "123.2",
    "ImagedNucleus": "1H", "EchoNumbers": "1", "MagneticFieldStrength": "3", "SpacingBetweenSlices": "1",
    "NumberOfPhaseEncodingSteps": "255", "EchoTrainLength": "1", "PercentSampling": "100", "PercentPhaseFieldOfView": "93.75",
    "PixelBandwidth": "240", "DeviceSerialNumber": "66012", "SoftwareVersions": "syngo MR E11", "ProtocolName": "t1_mprage_sag",
    "TransmitCoilName": "Body", "AcquisitionMatrix": [0, 256, 240, 0], "InPlanePhaseEncodingDirection": "ROW", "FlipAngle": "9",
    "VariableFlipAngleFlag": "N", "SAR": "0.05", "dBdt": "0", "PatientPosition": "HFS", "AcquisitionNumber": "1",
    "WindowCenter": "300", "WindowWidth": "600", "RequestedProcedureDescription": "MRI BRAIN", "PerformedProcedureStepID": "PPS1234",
    "PerformedProcedureStepStartDate": "20230318", "PerformedProcedureStepStartTime": "101500", "PerformedProcedureStepDescription": "MRI BRAIN",
    "BodyPartExamined": "HEAD", "ImageComments": "", "SliceLocation": "0", "PositionReferenceIndicator": "",
}


def realistic(folder: Path, varying_references: bool = False) -> None:
    """Give each instance what a scanner writes: ~60 more attributes, reference and request sequences, and two
    private blocks (one a binary header), as a clinical MR image carries."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    localizers: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = dcmread(path)
        for keyword, value in MR_ATTRIBUTES.items():
            setattr(ds, keyword, value)
        refs = []  # every image of a series references the same three localizer images, as scanners write it
        uids = [generate_uid() for _ in range(3)]  # derived images: each references its own sources
        for uid in uids if varying_references else localizers.setdefault(ds.SeriesInstanceUID, uids):
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, uid
            refs.append(item)
        ds.ReferencedImageSequence = refs
        request = Dataset()
        request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP4711", "SPS4711"
        request.RequestedProcedureDescription = "MRI BRAIN"
        ds.RequestAttributesSequence = [request]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "MRBRAIN", "L", "MRI BRAIN"
        ds.ProcedureCodeSequence = [code]
        block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        block.add_new(0x08, "CS", "IMAGE NUM 4")
        block.add_new(0x10, "OB", bytes(range(256)) * 24)
        block.add_new(0x18, "CS", "MR")
        block.add_new(0x20, "OB", bytes(range(256)) * 40)
        mr = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        for element, value in ((0x08, "IMAGE NUM 4"), (0x09, "1.0"), (0x0B, "40"), (0x0F, "Fast")):
            mr.add_new(element, "LO", value)
        ds.save_as(path, enforce_file_format=True)


def fiona_study(args: tuple[list[str], str, int]) -> int:
    files, out, n = args
    engine = Pseudonymizer(ProjectPolicy("BENCH"), KEY, "bench")
    return engine.study([Path(f) for f in files], Path(out) / f"study{n}", f"P{n:03d}", "v1").images


def dicognito_study(args: tuple[list[str], str, int]) -> int:
    from dicognito.anonymizer import Anonymizer

    files, out, n = args
    anonymizer = Anonymizer(seed="bench")
    for i, f in enumerate(files):
        ds = dcmread(f)
        anonymizer.anonymize(ds)
        ds.save_as(Path(out) / f"{n}-{i}.dcm")
    return len(files)


def run_dicognito(studies: list[list[Path]], out: Path, workers: int) -> float:
    out.mkdir()
    return run_pool(dicognito_study, studies, out, workers)


def run_fiona(studies: list[list[Path]], out: Path, workers: int) -> float:
    return run_pool(fiona_study, studies, out, workers)


def run_pool(work, studies: list[list[Path]], out: Path, workers: int) -> float:
    """Seconds for ``work`` on every study, in this process or spread over a pool of ``workers``."""
    jobs = [([str(f) for f in files], str(out), n) for n, files in enumerate(studies)]
    start = time.perf_counter()
    if workers == 1:
        total = sum(work(job) for job in jobs)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            total = sum(pool.map(work, jobs, chunksize=1))
    assert total == sum(len(files) for files in studies)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--images", type=int, default=100, help="images per study (two series)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts (the machine's noise only slows)")
    parser.add_argument("--minimal", action="store_true", help="only the attributes the test fixtures write (36 per image)")
    parser.add_argument("--varying-references", action="store_true",
                        help="every image references three images of its own (as derived images do), not the series' localizers")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fiona-bench-anon-"))
    print(f"generating {args.studies} MR studies of {args.images} images (256x256) ...", flush=True)
    studies = []
    for n in range(args.studies):
        folder = tmp / "in" / f"study{n}"
        studies.append(sorted(make_study(folder, series=2, images=args.images // 2, rows=256, cols=256,
                                         ident=Identity(patient_id=f"PID{n:05d}", patient_name=f"DOE{n}^JANE")).files))
        if not args.minimal:
            realistic(folder, args.varying_references)
    files = [f for study in studies for f in study]
    print(f"{len(dcmread(files[0]))} attributes per image at the top level", flush=True)
    def best(run, name: str) -> float:
        times = []
        for r in range(args.repeat):
            times.append(run(tmp / f"{name}-{r}"))
            shutil.rmtree(tmp / f"{name}-{r}", ignore_errors=True)
        return min(times)

    results = {}
    for name, run in (("dicognito", run_dicognito), ("FIONA", run_fiona)):
        for workers in (1, 2):
            results[name, workers] = best(lambda out: run(studies, out, workers), f"{name}{workers}")
            print(f"{name}, {workers} process{'es' if workers > 1 else ''}: {len(files) / results[name, workers]:,.0f} files/s", flush=True)
    print(f"ratio FIONA/dicognito (1 core): {results['dicognito', 1] / results['FIONA', 1]:.2f}")
    print(f"ratio FIONA/dicognito (2 processes each): {results['dicognito', 2] / results['FIONA', 2]:.2f}")
    for name in ("FIONA", "dicognito"):
        print(f"scaling 1 -> 2 processes, {name}: {results[name, 1] / results[name, 2]:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
