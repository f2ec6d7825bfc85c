"""Clean Recognizable Visual Features (defacing head CT/MR volumes, refusing photos/video/surfaces) and
cleaning of overlays under Clean Graphics.

Defacing is a documented geometric heuristic, not a learned or atlas-based method: the head is found
by an Otsu threshold and its largest connected component, and every voxel anterior-inferior of a
cutting plane placed relative to the head's extent (in LPS patient coordinates: anterior = -Y,
superior = +Z) is set to the series' minimum stored value. The plane's constants live in
``fiona_redcap/data/visual_features.json``. Objects whose faces FIONA cannot remove (photographs,
video, surface scans, 3D renderings of the head) are refused, never forwarded.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

import numpy as np
from pydicom import Dataset
from pydicom.overlays import get_overlay_array
from pydicom.pixels import pack_bits

from . import pixels

METHOD = "FIONA head-extent cutting plane v1 (Otsu + largest component)"


class CannotDeface(pixels.CannotClean):
    """A head series that needs defacing but cannot be defaced (undecodable, inconsistent geometry, no head)."""


@lru_cache(maxsize=1)
def config() -> dict:
    return json.loads(resources.files("fiona_redcap").joinpath("data/visual_features.json").read_text())


def _text(ds: Dataset, *keywords: str) -> str:
    return " ".join(str(ds.get(k, "") or "") for k in keywords).upper()


def is_head(ds: Dataset) -> bool:
    """Body Part Examined names a head part, or a description/protocol matches a head pattern."""
    cfg = config()
    if str(ds.get("BodyPartExamined", "") or "").strip().upper() in cfg["head_body_parts"]:
        return True
    text = _text(ds, "StudyDescription", "SeriesDescription", "ProtocolName")
    return any(re.search(p, text) for p in cfg["head_description_patterns"])


def _image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType", []) or []
    return [str(v).upper() for v in (value if not isinstance(value, str) else value.split("\\"))]


def needs_defacing(ds: Dataset) -> bool:
    """A CT/MR head image that is part of a 3D volume: single-frame with Image Position/Orientation and Pixel
    Spacing, or multi-frame with per-frame plane positions and at least ``min_slices`` frames. Localizers
    are not volumes. Whether a single-frame series has enough slices is decided by :func:`deface_series`."""
    cfg = config()
    if str(ds.get("Modality", "")) not in cfg["deface_modalities"] or "Rows" not in ds:
        return False
    if "LOCALIZER" in _image_type(ds) or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or not is_head(ds):
        return False
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        if frames < cfg["min_slices"]:
            return False
        try:
            _geometry(ds)
        except CannotDeface:
            return False
        return True
    return all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))


def _geometry(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame: (Image Position, Image Orientation, Pixel Spacing), from the functional groups if present."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        out = []
        for item in ds.PerFrameFunctionalGroupsSequence:
            def get(seq: str, keyword: str):
                for source in (item, shared):
                    inner = source.get(seq)
                    if inner and keyword in inner[0]:
                        return np.array(inner[0][keyword].value, dtype=float)
                raise CannotDeface(f"frame geometry is incomplete ({seq} missing)")
            out.append((get("PlanePositionSequence", "ImagePositionPatient"),
                        get("PlaneOrientationSequence", "ImageOrientationPatient"), get("PixelMeasuresSequence", "PixelSpacing")))
        if len(out) != frames:
            raise CannotDeface("the number of per-frame functional groups does not match the number of frames")
        return out
    if frames == 1 and all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
        return [(np.array(ds.ImagePositionPatient, dtype=float), np.array(ds.ImageOrientationPatient, dtype=float),
                 np.array(ds.PixelSpacing, dtype=float))]
    raise CannotDeface("the image has no plane geometry (Image Position/Orientation Patient, Pixel Spacing)")


def _coords(ipp: np.ndarray, iop: np.ndarray, spacing: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """LPS coordinates (rows, cols, 3) of a frame's pixel centres (PS3.3 C.7.6.2.1.1)."""
    i = np.arange(rows, dtype=float)[:, None, None]
    j = np.arange(cols, dtype=float)[None, :, None]
    return ipp + j * spacing[1] * iop[:3] + i * spacing[0] * iop[3:]


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def deface_series(datasets: list[Dataset]) -> dict:
    """Remove the face from one head series (all its instances, pixel data loaded); pixels are written back
    in place. Returns a note for the audit (counts and method, never a patient value). Raises
    :class:`CannotDeface` when the series cannot be defaced."""
    from scipy import ndimage

    cfg = config()
    frames, arrays = [], []  # frames: (dataset index, frame index, ipp, iop, spacing)
    for d, ds in enumerate(datasets):
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise CannotDeface("only single-sample (grayscale) volumes can be defaced")
        try:
            arr = np.array(ds.pixel_array, copy=True)
        except Exception as exc:  # pydicom raises many types for undecodable data
            raise CannotDeface(f"pixel data cannot be decoded ({type(exc).__name__})") from None
        stack = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
        arrays.append(stack)
        frames += [(d, f, *g) for f, g in enumerate(_geometry(ds))]
    if not frames:
        raise CannotDeface("the series has no frames")
    shape, iop0, sp0 = arrays[0].shape[1:], frames[0][3], frames[0][4]
    if any(a.shape[1:] != shape for a in arrays) or any(not np.allclose(f[3], iop0, atol=1e-3) or not np.allclose(f[4], sp0, rtol=1e-3) for f in frames):
        raise CannotDeface("the frames do not share one orientation, size and pixel spacing")
    normal = np.cross(iop0[:3], iop0[3:])
    # One volume slice per distinct position (echoes, time points and repeats are merged by maximum).
    slices: dict[float, np.ndarray] = {}
    for d, f, ipp, _, _ in frames:
        key = round(float(ipp @ normal), 2)
        slices[key] = np.maximum(slices[key], arrays[d][f]) if key in slices else arrays[d][f]
    if len(slices) < cfg["min_slices"]:
        return {"method": METHOD, "voxels_removed": 0, "skipped": f"fewer than {cfg['min_slices']} slice positions: not a 3D volume"}
    positions = sorted(slices)
    step = max(1, max(shape) // 256)  # the head's extent needs no more than ~256 pixels across
    volume = np.stack([slices[p][::step, ::step] for p in positions]).astype(np.float32)
    if volume.max() <= volume.min():
        raise CannotDeface("no head found in the volume (constant pixel values)")
    mask = ndimage.binary_opening(volume > _otsu(volume))
    labels, count = ndimage.label(mask)
    if count == 0:
        raise CannotDeface("no head found in the volume")
    sizes = np.bincount(labels.ravel())[1:]
    head = labels == (int(np.argmax(sizes)) + 1)
    if not 0.005 * head.size <= sizes.max() <= 0.95 * head.size:
        raise CannotDeface("no head found in the volume")
    # Head extent in LPS: the position of slice k is the geometry of any frame at that position.
    by_position = {round(float(f[2] @ normal), 2): f[2] for f in frames}
    y_ant, y_post, z_top = np.inf, -np.inf, -np.inf
    for k, p in enumerate(positions):
        if head[k].any():
            xyz = _coords(by_position[p], iop0, sp0 * step, *head.shape[1:])[head[k]]
            y_ant, y_post, z_top = min(y_ant, xyz[:, 1].min()), max(y_post, xyz[:, 1].max()), max(z_top, xyz[:, 2].max())
    length = y_post - y_ant
    plane = cfg["deface_plane"]
    z_brow = z_top - plane["brow_below_vertex"] * length
    fill = min(a.min() for a in arrays)
    removed, changed = 0, set()
    for d, f, ipp, _, _ in frames:
        xyz = _coords(ipp, iop0, sp0, *shape)
        depth = np.minimum(plane["face_depth_at_brow"] * length + plane["tilt_back_per_depth"] * (z_brow - xyz[..., 2]),
                           plane["max_face_depth"] * length)
        face = (xyz[..., 2] < z_brow) & (xyz[..., 1] < y_ant + depth) & (arrays[d][f] != fill)
        if face.any():
            arrays[d][f][face] = fill
            removed += int(face.sum())
            changed.add(d)
    encodings = set()
    for d, ds in enumerate(datasets):
        if d in changed:
            out = arrays[d] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arrays[d][0]
            encodings.add(pixels.write_pixels(ds, out, ds.file_meta.TransferSyntaxUID.is_compressed))
        ds.RecognizableVisualFeatures = "NO"
    return {"method": METHOD, "voxels_removed": removed, "instances_changed": len(changed), "frames": len(frames),
            "encoding": sorted(encodings)}


def refuses_visual_features(ds: Dataset) -> str | None:
    """Why this object's recognizable visual features cannot be removed by FIONA (photographs, video, surface
    scans, 3D renderings of the head, or Recognizable Visual Features YES on something FIONA does not
    deface); None when there is nothing to refuse."""
    cfg = config()
    sop = str(ds.get("SOPClassUID", ""))
    if sop in cfg["refuse_sop_classes"]:
        return f"{cfg['refuse_sop_classes'][sop]} objects may show a face and cannot be cleaned"
    modality = str(ds.get("Modality", ""))
    if modality in cfg["refuse_modalities"]:
        return f"{cfg['refuse_modalities'][modality]} may show a face and cannot be cleaned"
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if any(syntax.startswith(p) for p in cfg["video_transfer_syntax_prefixes"]):
        return "video may show a face and cannot be cleaned"
    image_type = _image_type(ds)
    derived = (image_type[:1] == ["DERIVED"] or sop in pixels.SECONDARY_CAPTURE)
    if derived and (is_head(ds) or not ds.get("BodyPartExamined")):
        described = _text(ds, "SeriesDescription", "DerivationDescription", "ImageComments")
        if (any(re.search(p, v) for p in cfg["rendering_image_type_patterns"] for v in image_type[1:])
                or any(re.search(p, described) for p in cfg["rendering_description_patterns"])):
            return "a 3D rendering of the head may show the face and cannot be cleaned"
    if str(ds.get("RecognizableVisualFeatures", "") or "").upper() == "YES" and not needs_defacing(ds):
        return "the object is marked Recognizable Visual Features YES and FIONA cannot deface it"
    return None


def _remove_group(ds: Dataset, group: int) -> None:
    for tag in [t for t in ds.keys() if t.group == group]:
        del ds[tag]


def _clear_embedded_bit(ds: Dataset, bit: int) -> None:
    """Clear one unused high bit of every pixel (a retired embedded overlay) in uncompressed pixel data."""
    if ds.file_meta.TransferSyntaxUID.is_compressed or int(ds.get("BitsAllocated", 0)) != 16:
        raise pixels.CannotClean("an embedded overlay can only be cleared from uncompressed 16-bit pixel data")
    words = np.frombuffer(ds.PixelData, dtype="<u2" if ds.file_meta.TransferSyntaxUID.is_little_endian else ">u2").copy()
    words &= np.uint16(~(1 << bit) & 0xFFFF)
    ds.PixelData = words.tobytes()


def clean_overlays(ds: Dataset) -> list[str]:
    """Clean Graphics for overlay planes (60xx): blank text found by OCR in each overlay bitmap, clear embedded
    overlays from the pixels' unused high bits, drop overlay descriptions and labels. An overlay that cannot
    be decoded is removed. Returns what changed, as tag paths for the audit (no values)."""
    changed = []
    groups = sorted({t.group for t in ds.keys() if 0x6000 <= t.group <= 0x601E and t.group % 2 == 0})
    for g in groups:
        if (g, 0x3000) in ds:
            try:
                bitmap = np.array(get_overlay_array(ds, g), dtype=np.uint8, copy=True)
            except Exception:  # missing attributes, wrong length: nothing trustworthy to clean
                _remove_group(ds, g)
                changed.append(f"({g:04X},xxxx): overlay removed (cannot be decoded)")
                continue
            stack = bitmap if bitmap.ndim == 3 else bitmap[np.newaxis]
            boxes = 0
            for frame in stack:
                for x0, y0, x1, y1 in pixels.ocr_boxes(frame):
                    frame[max(0, y0):y1, max(0, x0):x1] = 0
                    boxes += 1
            if boxes:
                ds[g, 0x3000].value = pack_bits(stack.ravel())
                changed.append(f"({g:04X},3000): {boxes} text box(es) blanked")
        elif (g, 0x0102) in ds and int(ds[g, 0x0100].value if (g, 0x0100) in ds else 1) > 1:
            bit = int(ds[g, 0x0102].value)
            if bit <= int(ds.get("HighBit", 15)):
                raise pixels.CannotClean("an embedded overlay claims a bit that holds pixel values")
            _clear_embedded_bit(ds, bit)
            _remove_group(ds, g)
            changed.append(f"({g:04X},0102): embedded overlay cleared from the pixel data and removed")
            continue
        for element, name in ((0x0022, "Overlay Description"), (0x1500, "Overlay Label")):
            if (g, element) in ds:
                del ds[g, element]
                changed.append(f"({g:04X},{element:04X}): {name} removed")
    return changed
