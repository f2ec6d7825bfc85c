"""The engine over pydicom's own test files: odd encodings, compressed and multi-frame pixel data, code-extension
character sets, sequences of undefined length, malformed and truncated files. Every file is either pseudonymized
into a complete instance (read back by pydicom and by dcmtk's dcmdump, and stored by Orthanc) or refused with a
specific reason: never an internal error, never a broken file."""

import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread

from fiona_redcap.deid import DeidRefused, ProjectPolicy, Pseudonymizer
from fiona_redcap.dicom_net import send_files
from tests.fixtures.dicom import DCMTK

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"


def readable_instances() -> list[Path]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")):
            try:
                dcmread(path, stop_before_pixels=True)
            except Exception:  # not DICOM at all (pydicom's corpus has other test data too)
                continue
            out.append(path)
    return out


@pytest.mark.filterwarnings("ignore")
def test_every_file_is_pseudonymized_completely_or_refused_with_a_reason(tmp_path, research_pacs):
    files = readable_instances()
    assert len(files) > 100, "pydicom's test files are missing"
    done, refused, internal, outputs = 0, 0, [], []
    for n, path in enumerate(files):
        engine = Pseudonymizer(ProjectPolicy("CORPUS"), bytes(32), "kid")
        try:
            result = engine.study([path], tmp_path / f"s{n}", "P001", "v1")
        except DeidRefused as exc:
            refused += 1
            if str(exc).startswith("pseudonymization failed"):
                internal.append(f"{path.name}: {exc}")
            continue
        done += 1
        for out in result.files:
            ds = dcmread(out)  # the whole instance, pixel data included, reads back
            assert ds.PatientName == "P001" and ds.PatientIdentityRemoved == "YES", path.name
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID and ds.StudyInstanceUID.startswith("2.25."), path.name
            if "PixelData" in ds:
                assert len(ds.PixelData) > 0, path.name
            dump = subprocess.run([DCMTK + "dcmdump", "-q", "+E", str(out)], capture_output=True, text=True, timeout=60)
            assert dump.returncode == 0 and not dump.stderr.strip(), f"{path.name}: dcmdump: {dump.stderr[-300:]}"
            outputs.append(out)
    assert not internal, "internal errors:\n" + "\n".join(internal)
    assert done > refused
    sent = send_files(outputs, research_pacs.aet, "127.0.0.1", research_pacs.dicom_port)
    assert not sent.failed and sent.sent == len(outputs), sent.failed
