"""Clean Recognizable Visual Features and overlay cleaning on real DICOM: a synthetic head phantom (skin,
skull, brain, eyes, nose, mouth, chin) written as MR series in several orientations and as an enhanced
multi-frame object, defaced, read back and checked voxel by voxel; overlays with rendered text are
cleaned and read with OCR."""

from pathlib import Path

import json

import numpy as np
import pytest
import pytesseract
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset, dcmread
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import RLELossless, generate_uid

from fiona_redcap.deid import visual
from tests.fixtures.dicom import Identity, make_instance
from tests.fixtures.dicom import make_instance as _make_instance

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
BACKGROUND, HEAD, SKULL, BRAIN, CHIN, NOSE, MOUTH, EYE = range(8)
INTENSITY = {BACKGROUND: 10, HEAD: 400, SKULL: 80, BRAIN: 800, CHIN: 450, NOSE: 500, MOUTH: 650, EYE: 1200}
FACE = (NOSE, MOUTH, EYE)


def _inside(xyz, centre, semi, scale=1.0):
    return (((xyz - np.array(centre)) / (np.array(semi) * scale)) ** 2).sum(-1) <= 1


def phantom_labels(xyz: np.ndarray) -> np.ndarray:
    """Tissue label at LPS points (mm): head 140x180x200 mm, brain in the upper back, face anterior-inferior."""
    labels = np.zeros(xyz.shape[:-1], dtype=np.uint8)
    head = ((0, 0, 0), (70, 90, 100))
    labels[_inside(xyz, *head)] = HEAD
    labels[_inside(xyz, *head, 0.92) & ~_inside(xyz, *head, 0.86) & (xyz[..., 2] > 5)] = SKULL  # the vault, above the brow
    labels[_inside(xyz, (0, 10, 30), (55, 70, 55))] = BRAIN
    labels[_inside(xyz, (0, -60, -85), (25, 20, 15))] = CHIN
    labels[_inside(xyz, (0, -95, -40), (12, 18, 25))] = NOSE
    labels[_inside(xyz, (0, -72, -65), (20, 8, 6))] = MOUTH
    for x in (-32, 32):
        labels[_inside(xyz, (x, -76, -20), (11, 11, 11))] = EYE
    return labels


def frame_coords(ipp, iop, spacing, rows, cols):
    r, c = np.array(iop[:3], float), np.array(iop[3:], float)
    i = np.arange(rows)[:, None, None]
    j = np.arange(cols)[None, :, None]
    return np.array(ipp, float) + j * spacing[1] * r + i * spacing[0] * c


def phantom_frame(ipp, iop, spacing, rows, cols, rng):
    labels = phantom_labels(frame_coords(ipp, iop, spacing, rows, cols))
    values = np.vectorize(INTENSITY.get)(labels) + rng.normal(0, 5, labels.shape)
    return np.clip(values, 0, 4095).astype(np.uint16), labels


ORIENTATIONS = {
    "axial": ([1, 0, 0], [0, 1, 0]),
    "sagittal": ([0, 1, 0], [0, 0, -1]),
    "coronal": ([1, 0, 0], [0, 0, -1]),
    "oblique": ([1, 0, 0], [0, np.cos(np.radians(20)), np.sin(np.radians(20))]),
}


def plane_positions(orientation, size=112, spacing=2.0, slices=80, step=2.8, centre=(0, -10, 0)):
    r, c = (np.array(v, float) for v in ORIENTATIONS[orientation])
    n = np.cross(r, c)
    corner = np.array(centre) - (size - 1) / 2 * spacing * (r + c)
    iop = [round(float(v), 6) for v in (*r, *c)]
    return iop, [corner + (k - (slices - 1) / 2) * step * n for k in range(slices)]


def head_series(folder: Path, orientation: str, compressed=False, slices=80, body_part="HEAD", description="T1 MPRAGE", modality="MR"):
    """A single-frame series of the phantom, files in shuffled order; returns (paths, labels per file). CT is signed,
    air at -1014 and the corners outside the reconstruction circle padded with -3024, as scanners do."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    iop, positions = plane_positions(orientation, slices=slices)
    study, series = generate_uid(), generate_uid()
    paths, labels = [], {}
    for k in rng.permutation(len(positions)):
        ds = make_instance(study, series, int(k) + 1, Identity(), modality, rows=112, cols=112, series_description=description)
        ds.StudyDescription, ds.BodyPartExamined = description, body_part
        ds.ImageOrientationPatient, ds.ImagePositionPatient = iop, [round(float(v), 4) for v in positions[k]]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.8
        pixels, labels_k = phantom_frame(ds.ImagePositionPatient, iop, [2.0, 2.0], 112, 112, rng)
        if modality == "CT":
            pixels = pixels.astype(np.int16) - 1024
            i, j = np.ogrid[:112, :112]
            pixels[(i - 55.5) ** 2 + (j - 55.5) ** 2 > 56 ** 2] = -3024
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.PixelData = pixels.tobytes()
        if compressed:
            ds.compress(RLELossless, pixels, encoding_plugin="pydicom")
        path = folder / f"{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        labels[path] = labels_k
    return paths, labels


def enhanced_head(path: Path, orientation="coronal", slices=80) -> np.ndarray:
    """One enhanced MR multi-frame object: shared orientation and spacing, per-frame positions; returns labels."""
    rng = np.random.default_rng(11)
    iop, positions = plane_positions(orientation, slices=slices)
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity(), rows=112, cols=112, series_description="3D FLAIR")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        del ds[keyword]
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = iop
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing, shared.PixelMeasuresSequence[0].SliceThickness = [2.0, 2.0], 2.8
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, labels, per_frame = [], [], Sequence()
    for pos in positions:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [round(float(v), 4) for v in pos]
        per_frame.append(item)
        pixels, labels_k = phantom_frame(item.PlanePositionSequence[0].ImagePositionPatient, iop, [2.0, 2.0], 112, 112, rng)
        frames.append(pixels)
        labels.append(labels_k)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = slices
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return np.stack(labels)


def check_defaced(before: np.ndarray, after: np.ndarray, labels: np.ndarray, fill: int) -> None:
    face = np.isin(labels, FACE)
    assert (after[face] == fill).all(), f"{int((after[face] != fill).sum())} face voxels survived"
    brain = labels == BRAIN
    assert np.array_equal(after[brain], before[brain]), "brain voxels changed"
    assert not bool(((after != before) & (labels == SKULL)).any()), "the skull vault was cut"


@pytest.mark.parametrize("orientation,compressed,modality", [("axial", False, "MR"), ("sagittal", False, "MR"), ("oblique", True, "MR"),
                                                         ("axial", False, "CT")])
def test_single_frame_head_series_loses_its_face_and_keeps_its_brain(tmp_path, orientation, compressed, modality):
    paths, labels = head_series(tmp_path / "in", orientation, compressed=compressed, modality=modality)
    datasets = [dcmread(p) for p in paths]
    assert all(visual.needs_defacing(ds) for ds in datasets)
    before = {p: ds.pixel_array.copy() for p, ds in zip(paths, datasets)}
    fill = min(int(a.min()) for a in before.values())
    all_labels = np.stack([labels[p] for p in paths])
    assert np.isin(all_labels, FACE).sum() > 2000 and (all_labels == BRAIN).sum() > 50000  # the phantom is really there
    note = visual.deface_series(datasets)
    for p, ds in zip(paths, datasets):
        ds.save_as(tmp_path / "out.dcm", enforce_file_format=True)
        out = dcmread(tmp_path / "out.dcm")
        assert out.file_meta.TransferSyntaxUID == (RLELossless if compressed else "1.2.840.10008.1.2.1")
        assert out.RecognizableVisualFeatures == "NO"
        after = out.pixel_array
        assert after.dtype == before[p].dtype and after.shape == before[p].shape
        check_defaced(before[p], after, labels[p], fill)
    assert note["voxels_removed"] > np.isin(all_labels, FACE).sum() * 0.9 and note["instances_changed"] > 5
    assert set(note) >= {"method", "voxels_removed", "frames"} and note["frames"] == len(paths)


def test_enhanced_multiframe_head_is_defaced(tmp_path):
    labels = enhanced_head(tmp_path / "mf.dcm")
    ds = dcmread(tmp_path / "mf.dcm")
    assert visual.needs_defacing(ds)
    before = ds.pixel_array.copy()
    note = visual.deface_series([ds])
    assert note["frames"] == 80 and note["voxels_removed"] > 0
    ds.save_as(tmp_path / "out.dcm", enforce_file_format=True)
    after = dcmread(tmp_path / "out.dcm").pixel_array
    check_defaced(before, after, labels, int(before.min()))


def test_only_head_volumes_are_selected(tmp_path):
    ident = Identity()

    def make_instance(*args, **kwargs):
        ds = _make_instance(*args, **kwargs)
        ds.PixelSpacing = [0.5, 0.5]
        return ds
    head = make_instance(generate_uid(), generate_uid(), 1, ident)
    head.StudyDescription = head.SeriesDescription = "routine"
    assert not visual.needs_defacing(head)  # no head hint at all
    head.BodyPartExamined = "BRAIN"
    assert visual.needs_defacing(head)
    abdomen = make_instance(generate_uid(), generate_uid(), 1, ident, modality="CT")
    abdomen.BodyPartExamined, abdomen.StudyDescription, abdomen.SeriesDescription = "ABDOMEN", "CT ABDOMEN", "PORTAL VENOUS"
    assert not visual.needs_defacing(abdomen)
    ct_head = make_instance(generate_uid(), generate_uid(), 1, ident, modality="CT")
    ct_head.StudyDescription, ct_head.SeriesDescription = "CT Schaedel nativ", "Axial 1mm"
    assert visual.needs_defacing(ct_head)
    ct_head.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert not visual.needs_defacing(ct_head)
    us = make_instance(generate_uid(), generate_uid(), 1, ident, modality="US")
    assert not visual.needs_defacing(us)
    no_geometry = make_instance(generate_uid(), generate_uid(), 1, ident)
    del no_geometry.ImagePositionPatient
    assert not visual.needs_defacing(no_geometry)


def test_series_that_cannot_be_defaced_are_reported(tmp_path):
    paths, _ = head_series(tmp_path / "few", "axial", slices=6)
    assert visual.deface_series([dcmread(p) for p in paths])["skipped"].startswith("fewer than")
    paths, _ = head_series(tmp_path / "ax", "axial", slices=30)
    mixed = [dcmread(p) for p in paths]
    mixed[3].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    with pytest.raises(visual.CannotDeface, match="orientation"):
        visual.deface_series(mixed)
    empty = [dcmread(p) for p in paths]
    for ds in empty:
        ds.PixelData = bytes(len(ds.PixelData))
    with pytest.raises(visual.CannotDeface, match="no head"):
        visual.deface_series(empty)
    broken = [dcmread(p) for p in paths]
    broken[0].PixelData = broken[0].PixelData[:100]
    with pytest.raises(visual.CannotDeface, match="cannot be decoded"):
        visual.deface_series(broken)


def test_objects_with_faces_fiona_cannot_remove_are_refused():
    ident = Identity()
    photo = make_instance(generate_uid(), generate_uid(), 1, ident, modality="XC")
    photo.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    assert "VL Photographic" in visual.refuses_visual_features(photo)
    camera = make_instance(generate_uid(), generate_uid(), 1, ident, modality="XC")
    assert "photography" in visual.refuses_visual_features(camera)
    video = make_instance(generate_uid(), generate_uid(), 1, ident, modality="ES")
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    assert "video" in visual.refuses_visual_features(video)
    rendering = make_instance(generate_uid(), generate_uid(), 1, ident, modality="CT")
    rendering.ImageType, rendering.SeriesDescription = ["DERIVED", "SECONDARY", "VRT"], "Head 3D"
    assert "rendering" in visual.refuses_visual_features(rendering)
    marked = make_instance(generate_uid(), generate_uid(), 1, ident, modality="US")
    marked.RecognizableVisualFeatures = "YES"
    assert "Recognizable Visual Features YES" in visual.refuses_visual_features(marked)
    plain_head = make_instance(generate_uid(), generate_uid(), 1, ident)
    plain_head.RecognizableVisualFeatures, plain_head.PixelSpacing = "YES", [1, 1]  # defaced instead of refused
    assert visual.refuses_visual_features(plain_head) is None
    abdomen_mip = make_instance(generate_uid(), generate_uid(), 1, ident, modality="CT")
    abdomen_mip.ImageType, abdomen_mip.BodyPartExamined, abdomen_mip.StudyDescription = ["DERIVED", "SECONDARY", "MIP"], "ABDOMEN", "CT ABDOMEN"
    assert visual.refuses_visual_features(abdomen_mip) is None


def overlay_image(text: str, rows=256, cols=320) -> np.ndarray:
    img = Image.new("1", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    draw.text((20, 30), text, fill=1, font=ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", 24))
    draw.ellipse((160, 140, 260, 240), fill=1)  # a region of interest, not text
    return np.array(img, dtype=np.uint8)


def ocr(bitmap: np.ndarray) -> str:
    img = Image.fromarray((bitmap * 255).astype(np.uint8))
    return pytesseract.image_to_string(img.resize((img.width * 2, img.height * 2)))


def with_overlay(bitmap: np.ndarray, group=0x6000) -> Dataset:
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity(), rows=bitmap.shape[0], cols=bitmap.shape[1])
    ds.add_new((group, 0x0010), "US", bitmap.shape[0])
    ds.add_new((group, 0x0011), "US", bitmap.shape[1])
    ds.add_new((group, 0x0040), "CS", "G")
    ds.add_new((group, 0x0050), "SS", [1, 1])
    ds.add_new((group, 0x0100), "US", 1)
    ds.add_new((group, 0x0102), "US", 0)
    ds.add_new((group, 0x0022), "LO", "measured for DOE JANE")
    ds.add_new((group, 0x1500), "LO", "DOE")
    ds.add_new((group, 0x3000), "OW", pack_bits(bitmap.ravel()))
    return ds


def test_overlay_text_is_blanked_and_shapes_survive(tmp_path):
    bitmap = overlay_image("DOE JANE 4711")
    assert "4711" in ocr(bitmap)  # the overlay really carries readable text
    ds = with_overlay(bitmap)
    changed = visual.clean_overlays(ds)
    ds.save_as(tmp_path / "o.dcm", enforce_file_format=True)
    out = dcmread(tmp_path / "o.dcm")
    cleaned = out.overlay_array(0x6000)
    text = ocr(cleaned)
    assert "4711" not in text and "DOE" not in text and "JANE" not in text
    circle = overlay_image("")
    assert np.array_equal(cleaned[circle == 1], circle[circle == 1]), "the circle lost pixels"
    assert cleaned[:, :150].sum() < bitmap[:, :150].sum() * 0.1
    assert (0x6000, 0x0022) not in out and (0x6000, 0x1500) not in out
    assert any(c.startswith("(6000,3000): ") and "blanked" in c for c in changed)
    assert "(6000,0022): Overlay Description removed" in changed and not any("DOE" in c for c in changed)


def test_undecodable_overlay_is_removed_and_embedded_overlay_bits_cleared():
    ds = with_overlay(overlay_image("X"), group=0x6002)
    ds[0x6002, 0x3000].value = b"\x00" * 10  # far too short for 256 x 320
    changed = visual.clean_overlays(ds)
    assert not [t for t in ds.keys() if t.group == 0x6002]
    assert changed == ["(6002,xxxx): overlay removed (cannot be decoded)"]

    ds = make_instance(generate_uid(), generate_uid(), 1, Identity())  # 16 bits allocated, 12 stored
    values = np.frombuffer(ds.PixelData, dtype="<u2").copy()
    marked = np.zeros(values.shape, bool)
    marked[::7] = True
    ds.PixelData = (values | (marked.astype(np.uint16) << 13)).tobytes()
    ds.add_new((0x6004, 0x0010), "US", 64)
    ds.add_new((0x6004, 0x0011), "US", 64)
    ds.add_new((0x6004, 0x0100), "US", 16)
    ds.add_new((0x6004, 0x0102), "US", 13)
    changed = visual.clean_overlays(ds)
    cleared = np.frombuffer(ds.PixelData, dtype="<u2")
    assert not (cleared & (1 << 13)).any() and np.array_equal(cleared, values)
    assert changed == ["(6004,0102): embedded overlay cleared from the pixel data and removed"]
    assert not [t for t in ds.keys() if t.group == 0x6004]


# -- through the engine (what the pipeline runs) ----------------------------------------------------

def _engine(**options):
    from fiona_redcap.deid import DeidOptions, ProjectPolicy, Pseudonymizer

    return Pseudonymizer(ProjectPolicy("PROJ1", options=DeidOptions(**options)), b"k" * 32, "kid")


def test_engine_defaces_a_head_series_when_the_project_asks(tmp_path):
    paths, labels = head_series(tmp_path / "in", "axial")
    before = {str(dcmread(p).SOPInstanceUID): (dcmread(p).pixel_array.copy(), labels[p]) for p in paths}
    fill = min(int(a.min()) for a, _ in before.values())
    plain = _engine(clean_graphics=True).study(paths, tmp_path / "plain", "P001")
    result = _engine(clean_visual_features=True).study(paths, tmp_path / "out", "P001")
    assert result.images == len(paths)
    out = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in result.files}
    pseudo = _engine(clean_visual_features=True).pseudo
    for uid, (pixels_before, lab) in before.items():
        ds = out[pseudo.uid(uid)]
        assert ds.RecognizableVisualFeatures == "NO"
        check_defaced(pixels_before, ds.pixel_array, lab, fill)
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert "113102" in codes  # Clean Recognizable Visual Features Option
    audit = json.loads(result.audit_path.read_text())
    assert any(c["rule"] == "clean_recognizable_visual_features" for i in audit["instances"] for c in i["changes"])
    # without the option the same study keeps its face
    kept = {str(dcmread(f).SOPInstanceUID): dcmread(f).pixel_array for f in plain.files}
    assert sum(int(np.isin(lab, FACE).sum() and (kept[pseudo.uid(u)][np.isin(lab, FACE)] != fill).sum())
               for u, (_, lab) in before.items()) > 1000


def test_engine_refuses_a_photo_when_faces_must_be_removed(tmp_path):
    from fiona_redcap.deid import DeidRefused

    photo = make_instance(generate_uid(), generate_uid(), 1, Identity(), modality="XC")
    photo.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    photo.file_meta.MediaStorageSOPClassUID = photo.SOPClassUID
    photo.save_as(tmp_path / "photo.dcm", enforce_file_format=True)
    with pytest.raises(DeidRefused, match="recognizable visual features cannot be removed"):
        _engine(clean_visual_features=True).study([tmp_path / "photo.dcm"], tmp_path / "out", "P001")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_engine_keeps_overlays_cleaned_under_clean_graphics_and_removes_them_otherwise(tmp_path):
    bitmap = overlay_image("DOE JANE 4711")
    ds = with_overlay(bitmap)
    ds.save_as(tmp_path / "ov.dcm", enforce_file_format=True)
    cleaned = dcmread(_engine(clean_graphics=True).study([tmp_path / "ov.dcm"], tmp_path / "a", "P001").files[0])
    overlay = cleaned.overlay_array(0x6000)
    assert "4711" not in ocr(overlay)
    circle = overlay_image("")
    assert np.array_equal(overlay[circle == 1], circle[circle == 1])
    del ds[0x6000, 0x0022], ds[0x6000, 0x1500]  # (free text the Basic profile keeps would block the study)
    ds.save_as(tmp_path / "ov.dcm", enforce_file_format=True)
    basic = dcmread(_engine().study([tmp_path / "ov.dcm"], tmp_path / "b", "P001").files[0])
    assert (0x6000, 0x3000) not in basic  # Basic profile: Overlay Data is removed
