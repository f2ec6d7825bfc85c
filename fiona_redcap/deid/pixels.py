"""Burned-in text removal (Clean Pixel Data): decide, find text with OCR and region rules, mask, re-encode.

Every frame is decoded (any photometric interpretation pydicom can decode), text boxes found
by Tesseract and the regions of matching rules (``fiona_redcap/data/pixel_regions.json``) are
masked, and the pixels are written back uncompressed, or RLE Lossless when the input was
compressed. Anything that cannot be decoded or encoded raises :class:`CannotClean`: the
study is refused, never forwarded with text left in it.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import lru_cache
from importlib import resources

import numpy as np
from pydicom import Dataset
from pydicom.uid import RLELossless

RISKY_MODALITIES = {"US", "IVUS", "XA", "RF", "DX", "CR", "OT", "SC", "DOC", "ES", "XC", "SM", "MG", "IO", "PX"}
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
RISKY_TYPES = {"burned-in-annotation", "pixel-phi-risk", "secondary-capture", "dose-report"}
MIN_CONFIDENCE = 30


class CannotClean(Exception):
    """Pixel data that need cleaning but cannot be decoded, cleaned or encoded."""


@lru_cache(maxsize=1)
def region_rules() -> list[dict]:
    return json.loads(resources.files("fiona_redcap").joinpath("data/pixel_regions.json").read_text())


def needs_cleaning(ds: Dataset, classification: list[str], exclusions: list[tuple[str, str]]) -> bool:
    """Burned In Annotation YES, or absent on a risky SOP class/modality or classification, unless excluded."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return False
    for keyword, pattern in exclusions:
        value = ds.get(keyword)
        if value is not None and re.search(pattern, str(value)):
            return False
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if burned == "YES":
        return True
    if burned == "NO":
        return False
    return (str(ds.get("Modality", "")) in RISKY_MODALITIES or str(ds.get("SOPClassUID", "")) in SECONDARY_CAPTURE
            or bool(RISKY_TYPES & set(classification)))


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    if hi <= lo:
        return np.zeros(frame.shape[:2], dtype=np.uint8)
    g = (f - lo) * (255.0 / (hi - lo))
    if g.ndim == 3:
        g = g.mean(axis=2)
    return g.astype(np.uint8)


def ocr_boxes(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Text boxes (x0, y0, x1, y1) found by Tesseract in one frame (both polarities)."""
    import pytesseract
    from PIL import Image

    if shutil.which("tesseract") is None:
        raise CannotClean("Tesseract OCR is not installed (Debian package tesseract-ocr)")
    gray = _to_uint8(frame)
    scale = 2 if max(gray.shape) < 1024 else 1
    boxes = []
    for image in (gray, 255 - gray):
        img = Image.fromarray(image)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        data = pytesseract.image_to_data(img, config="--psm 11", output_type=pytesseract.Output.DICT)
        for i, text in enumerate(data["text"]):
            try:
                conf = float(data["conf"][i])
            except ValueError:
                conf = -1
            if text.strip() and conf >= MIN_CONFIDENCE and any(c.isalnum() for c in text):
                x, y, w, h = (data[k][i] // scale for k in ("left", "top", "width", "height"))
                pad = max(2, h // 4)
                boxes.append((max(0, x - pad), max(0, y - pad), x + w + pad, y + h + pad))
    return boxes


def rule_boxes(ds: Dataset, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    boxes = []
    for rule in region_rules():
        if not re.search(rule.get("modality", ".*"), str(ds.get("Modality", ""))):
            continue
        if not re.search(rule.get("manufacturer", ".*"), str(ds.get("Manufacturer", ""))):
            continue
        if not re.search(rule.get("model", ".*"), str(ds.get("ManufacturerModelName", ""))):
            continue
        if "rows" in rule and rule["rows"] != rows or "columns" in rule and rule["columns"] != cols:
            continue
        for x0, y0, x1, y1 in rule.get("regions", []):
            boxes.append((x0, y0, x1, y1))
        for fx0, fy0, fx1, fy1 in rule.get("regions_fraction", []):
            boxes.append((int(fx0 * cols), int(fy0 * rows), int(round(fx1 * cols)), int(round(fy1 * rows))))
    return boxes


def write_pixels(ds: Dataset, out: np.ndarray, compressed: bool) -> str:
    """Store cleaned pixels: uncompressed, or RLE Lossless when the input was compressed (never lossy)."""
    try:
        if compressed:
            ds.compress(RLELossless, out, encoding_plugin="pydicom")
            return "re-encoded RLE Lossless (input was compressed)"
        ds.PixelData = out.tobytes()
        return "uncompressed"
    except Exception as exc:
        raise CannotClean(f"cleaned pixel data cannot be encoded ({type(exc).__name__}: {exc})") from None


def clean(ds: Dataset) -> dict:
    """Mask burned-in text on every frame; returns what was done (for the audit)."""
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable data
        raise CannotClean(f"pixel data cannot be decoded ({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    arr = np.array(arr, copy=True)
    stack = arr if frames > 1 else arr[np.newaxis, ...]
    rows, cols = stack.shape[1], stack.shape[2]
    fixed = rule_boxes(ds, rows, cols)
    masked = 0
    fill = stack.min()
    for i in range(stack.shape[0]):
        boxes = fixed + ocr_boxes(stack[i])
        for x0, y0, x1, y1 in boxes:
            stack[i, max(0, y0):min(rows, y1), max(0, x0):min(cols, x1), ...] = fill
        masked += len(boxes)
    out = stack if frames > 1 else stack[0]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if samples == 3 and photometric.startswith("YBR"):
        ds.PhotometricInterpretation = "RGB"  # pydicom decoded to RGB
    encoding = write_pixels(ds, out.astype(arr.dtype), compressed)
    if samples == 3 and "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 0
    ds.BurnedInAnnotation = "NO"
    return {"frames": int(stack.shape[0]), "boxes_masked": masked, "encoding": encoding}
