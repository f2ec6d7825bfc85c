"""The pseudonymization engine on realistic studies: identifiers anywhere, references, determinism,
key separation, dates, private blocks, refusal, burned-in text on every frame, and the CLI."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid

from fiona_redcap.deid import DeidOptions, DeidRefused, ProjectPolicy, Pseudonymizer
from tests.fixtures.dicom import Identity, make_instance, make_study

KEY = bytes(range(32))


def engine(project="PROJ1", key=KEY, **policy):
    return Pseudonymizer(ProjectPolicy(project, **policy), key, "kid")


def all_text(path: Path) -> str:
    ds = dcmread(path)
    parts = [repr(e.value) for e in ds.file_meta] + [repr(e.value) for e in ds.iterall() if e.tag != 0x7FE00010]
    return "\n".join(parts)


def planted_study(tmp_path, ident=None, study_uid=None, name="in") -> Path:
    ident = ident or Identity()
    study_uid = study_uid or generate_uid()
    folder = tmp_path / name
    folder.mkdir()
    series = generate_uid()
    first = None
    for i in range(3):
        ds = make_instance(study_uid, series, i + 1, ident)
        ds.ImageComments = f"Patient {ident.patient_name.replace('^', ' ')} id {ident.patient_id}; call +47 22 33 44 55"
        ds.SeriesDescription = f"T1 SAG for JANE DOE {ident.accession}"
        ds.ProtocolName = "T1_SAG_3D"
        ds.RequestAttributesSequence = Sequence([Dataset()])
        ds.RequestAttributesSequence[0].RequestedProcedureID = ident.patient_id
        ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription = f"Brain for {ident.patient_name}"
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0C, "FD", 1000.0)  # (0019,xx0C) B Value: a safe private attribute of this creator
        block.add_new(0x77, "LO", ident.patient_name)  # not safe
        other = ds.private_block(0x0029, "ACME PRIVATE", create=True)
        other.add_new(0x10, "LO", ident.patient_id)
        if first is not None:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = first.SOPClassUID, first.SOPInstanceUID
            ds.ReferencedImageSequence = Sequence([ref])
        ds.file_meta.SourceApplicationEntityTitle = "CLINPACS"
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        first = first or ds
    return folder


def test_planted_identifiers_are_gone_everywhere(tmp_path):
    ident = Identity()
    src = planted_study(tmp_path, ident)
    result = engine().study(sorted(src.glob("*.dcm")), tmp_path / "out", "P001", "baseline")
    assert result.images == 3
    for f in result.files:
        text = all_text(f)
        for planted in (ident.patient_name, "JANE", "DOE", ident.patient_id, "PID-0042", ident.accession, ident.birth_date,
                        ident.institution, "HOUSE", ident.study_id, "22 33 44 55", "CLINPACS"):
            assert planted not in text, planted
        ds = dcmread(f)
        assert ds.PatientName == "P001" and ds.PatientID == "P001" and ds.InstitutionName == "PROJ1"
        assert ds.ReferringPhysicianName == "EventName:baseline" and ds.ClinicalTrialTimePointID == "baseline"
        assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.SeriesDescription.startswith("T1 SAG for") and ds.ProtocolName == "T1_SAG_3D"  # descriptors survive, cleaned
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert "113100" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
        creators = [e.value for e in ds if e.tag.is_private_creator]
        assert creators == ["SIEMENS MR HEADER"]  # the safe block survives with only its safe element
        assert [e.value for e in ds if e.tag.is_private and not e.tag.is_private_creator] == [1000.0]
    audit = json.loads(result.audit_path.read_text())
    assert audit["key_id"] == "kid" and audit["profile"].endswith("2025b") and len(audit["instances"]) == 3
    assert ident.patient_id not in result.audit_path.read_text() and KEY.hex() not in result.audit_path.read_text()
    first = audit["instances"][0]
    assert len(first["input_sha256"]) == 64 and any(c["path"].startswith("(0040,0275)[0].") for c in first["changes"])


def test_references_stay_consistent_across_series_and_studies_of_a_participant(tmp_path):
    ident = Identity()
    a = planted_study(tmp_path, ident, name="a")
    result = engine().study(sorted(a.glob("*.dcm")), tmp_path / "out-a", "P001")
    by_new = {dcmread(f).SOPInstanceUID: dcmread(f) for f in result.files}
    for ds in by_new.values():
        for ref in ds.get("ReferencedImageSequence", []):
            assert ref.ReferencedSOPInstanceUID in by_new
    # a second study of the same participant shares the frame of reference: mapped identically
    b = planted_study(tmp_path, ident, name="b")
    for_a = {dcmread(f).FrameOfReferenceUID for f in result.files}
    result_b = engine().study(sorted(b.glob("*.dcm")), tmp_path / "out-b", "P001")
    originals = {dcmread(f).FrameOfReferenceUID for f in b.glob("*.dcm")}
    mapped = {dcmread(f).FrameOfReferenceUID for f in result_b.files}
    assert len(mapped) == 1 and all(uid.startswith("2.25.") and len(uid) <= 64 for uid in mapped | for_a)
    assert not (mapped & originals)


def test_same_input_and_key_give_byte_identical_output_and_other_keys_unlinkable(tmp_path):
    src = planted_study(tmp_path)
    files = sorted(src.glob("*.dcm"))
    one = engine().study(files, tmp_path / "one", "P001", "v1")
    two = engine().study(files, tmp_path / "two", "P001", "v1")
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in one.files] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in two.files]
    other = engine(project="PROJ2", key=b"\x01" * 32).study(files, tmp_path / "three", "P001", "v1")
    uids_one = {dcmread(f).SOPInstanceUID for f in one.files} | {one.study_uid}
    uids_other = {dcmread(f).SOPInstanceUID for f in other.files} | {other.study_uid}
    assert not (uids_one & uids_other)
    assert dcmread(one.files[0]).AccessionNumber != dcmread(other.files[0]).AccessionNumber


def test_dates_shift_by_one_offset_per_participant_and_keep_intervals(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity(), study_date="20240305")
    ds.SeriesDate = "20240315"
    ds.AcquisitionDateTime = "20240310101010.5"
    ds.save_as(folder / "a.dcm", enforce_file_format=True)
    out = dcmread(engine(date_shift_max_days=100).study([folder / "a.dcm"], tmp_path / "o1", "P001").files[0])
    import datetime as dt

    d = lambda s: dt.datetime.strptime(s[:8], "%Y%m%d")  # noqa: E731
    shift = (d(out.StudyDate) - d("20240305")).days
    assert -100 <= shift <= -1
    assert (d(out.SeriesDate) - d(out.StudyDate)).days == 10
    assert out.AcquisitionDateTime.endswith("101010.5") and (d(out.AcquisitionDateTime) - d("20240310")).days == shift
    again = dcmread(engine(date_shift_max_days=100).study([folder / "a.dcm"], tmp_path / "o2", "P001").files[0])
    assert again.StudyDate == out.StudyDate
    full = dcmread(engine(options=DeidOptions(retain_long_full_dates=True)).study([folder / "a.dcm"], tmp_path / "o3", "P001").files[0])
    assert full.StudyDate == "20240305" and full.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_identifier_left_where_no_rule_cleans_it_blocks_the_study(tmp_path):
    ident = Identity()
    folder = tmp_path / "in"
    folder.mkdir()
    ds = make_instance(generate_uid(), generate_uid(), 1, ident)
    ds.ManufacturerModelName = f"Scanner of {ident.patient_name}"  # kept by Retain Device Identity, never cleaned
    ds.save_as(folder / "a.dcm", enforce_file_format=True)
    with pytest.raises(DeidRefused) as err:
        engine().study([folder / "a.dcm"], tmp_path / "out", "P001")
    assert "residual identifiers" in err.value.reason and any(d.startswith("(0008,1090)") for d in err.value.details)
    assert ident.patient_name not in str(err.value) and "DOE" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_national_ids_and_emails_in_kept_text_are_caught(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity())
    ds.DeviceSerialNumber = "jane.doe@example.org"  # device identity kept
    ds.save_as(folder / "a.dcm", enforce_file_format=True)
    with pytest.raises(DeidRefused, match="e-mail"):
        engine().study([folder / "a.dcm"], tmp_path / "out", "P001")


def test_drop_rules_and_tag_rules(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    study_uid = generate_uid()
    make_instance(study_uid, generate_uid(), 1, Identity()).save_as(folder / "mr.dcm", enforce_file_format=True)
    sc = make_instance(study_uid, generate_uid(), 1, Identity(), modality="OT")
    sc.BurnedInAnnotation = "NO"
    sc.save_as(folder / "sc.dcm", enforce_file_format=True)
    result = engine(drop_secondary_captures=True, tag_rules=[("ProtocolName", r"^(T\d)_")]).study(
        sorted(folder.glob("*.dcm")), tmp_path / "out", "P001")
    assert result.images == 1 and result.dropped == 1
    with pytest.raises(DeidRefused, match="nothing left"):
        engine(drop_secondary_captures=True).study([folder / "sc.dcm"], tmp_path / "out2", "P001")


def test_policy_from_registry_record():
    record = {"project_name": "PROJ1", "deid_options___clean_descriptors": "1", "deid_options___retain_uids": "1",
              "deid_drop_pr": "1", "deid_tag_rules": "ProtocolName=^(T\\d)", "deid_pixel_exclude": "Modality=^MR$", "deid_date_shift_days": "30"}
    policy = ProjectPolicy.from_registry(record)
    assert policy.options.enabled() == ["clean_descriptors", "retain_uids"] and policy.drop_presentation_states
    assert policy.tag_rules == [("ProtocolName", "^(T\\d)")] and policy.pixel_exclusions == [("Modality", "^MR$")] and policy.date_shift_max_days == 30
    assert ProjectPolicy.from_registry({"project_name": "P2"}).options == DeidOptions.defaults()
    with pytest.raises(DeidRefused, match="rules are invalid"):
        ProjectPolicy.from_registry({"project_name": "P3", "deid_tag_rules": "ProtocolName=(["})


def text_frame(text: str, rows=256, cols=320) -> np.ndarray:
    img = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 22)
    draw.text((20, 120), text, fill=255, font=font)
    draw.ellipse((100, 170, 200, 240), fill=120)  # "anatomy"
    return np.array(img)


def ocr(frame: np.ndarray) -> str:
    import pytesseract

    return pytesseract.image_to_string(Image.fromarray(frame.astype(np.uint8)).resize((frame.shape[1] * 2, frame.shape[0] * 2)))


@pytest.mark.parametrize("compressed", [False, True])
def test_burned_in_text_is_removed_from_every_frame(tmp_path, compressed):
    frames = np.stack([text_frame("DOE JANE 4711"), text_frame("BORN 1970-01-31"), text_frame("ACC778899")]).astype(np.uint8)
    assert "4711" in ocr(frames[0])  # the test image really carries readable text
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity(), modality="US", rows=256, cols=320)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    if compressed:
        ds.compress(RLELossless, frames, encoding_plugin="pydicom")
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "us.dcm", enforce_file_format=True)
    result = engine().study([folder / "us.dcm"], tmp_path / "out", "P001")
    out = dcmread(result.files[0])
    assert out.BurnedInAnnotation == "NO" and result.pixel_cleaned == 1
    assert out.file_meta.TransferSyntaxUID == (RLELossless if compressed else ds.file_meta.TransferSyntaxUID)
    cleaned = out.pixel_array
    assert cleaned.shape == frames.shape
    for i, word in enumerate(["4711", "1970", "778899"]):
        assert word not in ocr(cleaned[i]), f"frame {i} still shows {word}"
        assert cleaned[i][200, 150] == 120  # the anatomy is untouched
    audit = json.loads(result.audit_path.read_text())
    assert audit["instances"][0]["pixels"]["frames"] == 3


def test_undecodable_pixels_that_need_cleaning_are_refused(tmp_path):
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity(), modality="US")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # claims JPEG baseline, data is not JPEG
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "bad.dcm", enforce_file_format=True)
    with pytest.raises(DeidRefused, match="burned-in text cannot be removed"):
        engine().study([folder / "bad.dcm"], tmp_path / "out", "P001")
    assert not (tmp_path / "out").exists()


def test_cli_anonymizes_folders_and_reports_refusals(tmp_path):
    study = make_study(tmp_path / "in", series=2, images=2)
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "anonymize", str(study.folder), str(tmp_path / "out"),
                           "--project", "PROJ1", "--participant", "P001", "--event", "v1", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 4
    assert (data / "keys" / "PROJ1.key").exists() and oct((data / "keys" / "PROJ1.key").stat().st_mode)[-3:] == "600"
    bad = make_instance(generate_uid(), generate_uid(), 1, Identity())
    bad.ManufacturerModelName = "DOE JANE"
    (tmp_path / "in2").mkdir()
    bad.save_as(tmp_path / "in2" / "x.dcm", enforce_file_format=True)
    refused = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "anonymize", str(tmp_path / "in2"), str(tmp_path / "out2"),
                              "--project", "PROJ1", "--participant", "P001", "--data-dir", str(data), "--option", "retain-device-identity"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "REFUSED" in refused.stderr and "DOE" not in refused.stderr
    unknown = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "anonymize", str(tmp_path / "in2"), str(tmp_path / "out3"),
                              "--project", "PROJ1", "--participant", "P001", "--data-dir", str(data), "--option", "keep-everything"],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown option" in unknown.stderr


def test_outcomes_reused_across_instances_still_follow_each_instances_context(tmp_path):
    """The engine remembers what it did to an element (same bytes, same context) and reuses it: every instance
    must still be treated fully, and the same bytes in another context (private creator, sequence content,
    character set) must not inherit another element's outcome."""
    ident = Identity()
    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "in"
    folder.mkdir()
    localizers = [generate_uid(), generate_uid()]
    originals = []
    for i in range(4):
        ds = make_instance(study, series, i + 1, ident)
        ds.RequestAttributesSequence = Sequence([Dataset()])
        ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription = f"Brain for {ident.patient_name}"
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = localizers[0] if i < 3 else localizers[1]  # the last one points elsewhere
        ds.ReferencedImageSequence = Sequence([ref])
        creator = "SIEMENS MR HEADER" if i < 2 else "ACME PRIVATE"  # same block, same element bytes, other creator
        ds.private_block(0x0019, creator, create=True).add_new(0x0C, "FD", 1000.0)
        if i == 3:
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageComments = "Scan ok for Ødegård"
            ds.PatientName = "ØDEGÅRD^JANE"
        else:
            ds.ImageComments = "Scan ok for DOE"
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
        originals.append(ds)
    result = engine().study(sorted(folder.glob("*.dcm")), tmp_path / "out", "P001", "v1")
    out = sorted((dcmread(f) for f in result.files), key=lambda d: int(d.InstanceNumber))
    assert len(out) == 4
    for ds in out:  # the sequence cleaned in every instance, not only the first that had it
        assert ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription.strip() == "Brain for"
        assert ds.ImageComments == "Scan ok for"  # "DOE", and "Ødegård" in Latin-1 in the last instance, removed
    refs = [ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID for ds in out]
    assert refs[0] == refs[1] == refs[2] != refs[3] and not set(refs) & set(localizers)
    kept = [[e.value for e in ds if e.tag.is_private and not e.tag.is_private_creator] for ds in out]
    assert kept == [[1000.0], [1000.0], [], []]  # safe only under its own creator
    assert out[3].SpecificCharacterSet == "ISO_IR 100"
    audit = json.loads(result.audit_path.read_text())
    for entry in audit["instances"]:
        paths = {c["path"] for c in entry["changes"]}
        assert "(0008,1140)[0].(0008,1155)" in paths and "(0040,0275)[0].(0040,0007)" in paths
    review = json.loads((tmp_path / "out.review.json").read_text())["attributes"]
    assert review["(0008,1140)>(0008,1155)"]["count"] == 4
    assert sum(review["(0008,1140)>(0008,1155)"]["values"].values()) == 4
    assert len(review["(0008,1140)>(0008,1155)"]["values"]) == 2


def test_large_study_paths_give_the_same_output(tmp_path, monkeypatch):
    """Beyond HEADERS_KEPT instances headers are read a second time, and beyond MEMO_MISSES_PER_TAG values per tag
    outcomes are no longer remembered: both only bound memory, the output and its records stay the same."""
    import fiona_redcap.deid.engine as engine_module

    src = planted_study(tmp_path)
    files = sorted(src.glob("*.dcm"))
    normal = engine().study(files, tmp_path / "normal", "P001", "v1")
    monkeypatch.setattr(engine_module, "HEADERS_KEPT", 1)
    monkeypatch.setattr(engine_module, "MEMO_MISSES_PER_TAG", 0)
    bounded = engine().study(files, tmp_path / "bounded", "P001", "v1")
    assert [f.read_bytes() for f in normal.files] == [f.read_bytes() for f in bounded.files]
    assert json.loads(normal.audit_path.read_text()) == json.loads(bounded.audit_path.read_text())
    assert (tmp_path / "normal.review.json").read_text() == (tmp_path / "bounded.review.json").read_text()


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")  # pydicom's dictionary: Siemens' B value is IS, written FD
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"],
                         ids=["implicit-VR-little-endian", "deflated", "explicit-VR-big-endian"])
def test_uncompressed_transfer_syntaxes_are_kept_and_pseudonymized(tmp_path, syntax):
    """Elements are copied from the input's bytes where unchanged: that must hold for every encoding, not only the
    explicit VR little endian the other tests use (implicit VR is what many PACS send)."""
    from pydicom.uid import UID

    ident = Identity()
    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        ds = make_instance(study, series, i + 1, ident)
        ds.ImageComments = f"Patient {ident.patient_name.replace('^', ' ')} id {ident.patient_id}"
        ds.RequestAttributesSequence = Sequence([Dataset()])
        ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription = f"Brain for {ident.patient_name}"
        ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "FD", 1000.0)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    inputs = sorted(folder.glob("*.dcm"))
    result = engine().study(inputs, tmp_path / "out", "P001", "v1")
    assert result.images == 3
    by_number = {int(dcmread(f).InstanceNumber): dcmread(f) for f in inputs}
    for f in result.files:
        text = all_text(f)
        for planted in (ident.patient_name, "JANE", "DOE", ident.patient_id, ident.accession, ident.institution):
            assert planted not in text, planted
        ds = dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == UID(syntax) and ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PatientName == "P001" and ds.SeriesDescription == "T1 SAG" and ds.Rows == 64
        assert ds.RequestAttributesSequence[0].ScheduledProcedureStepDescription.strip() == "Brain for"
        source = by_number[int(ds.InstanceNumber)]
        private = [(e.tag, e.value) for e in ds if e.tag.is_private and not e.tag.is_private_creator]
        assert len(private) == 1 and private == [(e.tag, e.value) for e in source if e.tag == private[0][0]]  # the safe one
        assert ds.PixelData == source.PixelData


@pytest.mark.parametrize("syntax", [RLELossless, "1.2.840.10008.1.2.4.90"], ids=["RLE", "JPEG-2000-lossless"])
def test_large_compressed_images_pass_through_unchanged(tmp_path, syntax):
    """Compressed pixel data larger than what the engine keeps in memory per value (64 KB) stays on disk until the
    instance is written: it must come out byte for byte, in its transfer syntax, when no pixel cleaning applies."""
    from pydicom.uid import UID

    ident = Identity()
    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(2):
        ds = make_instance(study, series, i + 1, ident, rows=384, cols=384)
        noise = rng.integers(0, 4096, size=(384, 384), dtype=np.uint16)  # noise: compresses to well over 64 KB
        ds.PixelData = noise.tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless, noise, encoding_plugin="pydicom")
        else:
            ds.compress(syntax, noise)
        assert len(ds.PixelData) > 64 * 1024
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    inputs = sorted(folder.glob("*.dcm"))
    result = engine().study(inputs, tmp_path / "out", "P001", "v1")
    sources = {int(dcmread(f).InstanceNumber): dcmread(f) for f in inputs}
    for f in result.files:
        ds = dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == UID(syntax) and ds.PatientName == "P001"
        assert ds.PixelData == sources[int(ds.InstanceNumber)].PixelData
        assert np.array_equal(ds.pixel_array, sources[int(ds.InstanceNumber)].pixel_array)


def test_multi_valued_character_set_and_missing_uids(tmp_path):
    """Code extension character sets (ISO 2022, as Japanese and Korean sites send) are multi-valued; an instance
    without its UIDs is not storable and is refused with a reason, not an internal error."""
    ident = Identity()
    folder = tmp_path / "in"
    folder.mkdir()
    ds = make_instance(generate_uid(), generate_uid(), 1, ident)
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 100"]
    ds.save_as(folder / "a.dcm", enforce_file_format=True)
    result = engine().study([folder / "a.dcm"], tmp_path / "out", "P001", "v1")
    out = dcmread(result.files[0])
    assert out.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 100"] and out.PatientName == "P001"
    del ds.SeriesInstanceUID
    ds.save_as(folder / "b.dcm", enforce_file_format=True)
    with pytest.raises(DeidRefused, match="lacks SeriesInstanceUID"):
        engine().study([folder / "b.dcm"], tmp_path / "out2", "P001", "v1")


def test_cli_jobs_spread_studies_over_processes_with_the_same_output(tmp_path):
    folder = tmp_path / "in"
    for n in range(3):
        make_study(folder / f"s{n}", series=1, images=2, ident=Identity(patient_id=f"PID{n:05d}"))
    bad = make_instance(generate_uid(), generate_uid(), 1, Identity())
    bad.ManufacturerModelName = "DOE JANE"  # kept by retain-device-identity: the residual scan refuses the study
    bad.save_as(folder / "bad.dcm", enforce_file_format=True)
    data = tmp_path / "data"
    runs = {}
    for jobs in ("1", "3"):
        out = tmp_path / f"out{jobs}"
        proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "anonymize", str(folder), str(out), "--project", "PROJ1",
                               "--participant", "P001", "--data-dir", str(data), "--option", "retain-device-identity", "--jobs", jobs],
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 1 and proc.stderr.count("REFUSED") == 1 and "DOE" not in proc.stderr, proc.stderr
        assert proc.stdout.count("instances written") == 3
        runs[jobs] = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*.dcm"))}
    assert len(runs["1"]) == 6 and runs["1"] == runs["3"]
