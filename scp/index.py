"""The quarantine index: study.json and <SeriesUID>.json summaries, updated with every instance.

The index is derived data: images are the truth, and :func:`rebuild_study` recreates the index
from the files (after a crash between an image's rename and its index update). Study-level
values that identify the patient stay inside the quarantine; only keyed hashes leave it.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import Dataset, dcmread

from fiona_redcap.quarantine import Quarantine, read_json, study_lock, write_json_atomic

from .classify import Classifier


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def record_instance(q: Quarantine, ds: Dataset, site: str, calling_aet: str, called_aet: str,
                    classifier: Classifier, patient_hash: str, study_key: str, now: float | None = None) -> dict:
    """Add one stored instance to the study and series summaries; returns the study info."""
    now = now or time.time()
    study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    study_dir = q.study_dir(study_uid)
    with study_lock(study_dir):
        series_path = study_dir / f"{series_uid}.json"
        series = read_json(series_path)
        if series is None:
            series = {
                "series_uid": series_uid,
                "modality": _str(ds, "Modality"),
                "sop_class_uid": _str(ds, "SOPClassUID"),
                "series_description": _str(ds, "SeriesDescription"),
                "series_number": _str(ds, "SeriesNumber"),
                "manufacturer": _str(ds, "Manufacturer"),
                "model": _str(ds, "ManufacturerModelName"),
                "classification": classifier.classify(ds),
                "images": 0,
                "first_arrival": now,
                "calling_aet": calling_aet,
                "called_aet": called_aet,
            }
        series["images"] += 1
        series["last_arrival"] = now
        write_json_atomic(series_path, series)

        study_path = study_dir / "study.json"
        study = read_json(study_path)
        if study is None:
            study = {
                "study_uid": study_uid,
                "study_key": study_key,
                "site": site,
                "calling_aet": calling_aet,
                "called_aet": called_aet,
                "first_arrival": now,
                "images": 0,
                "series_instances": {},
                "accession": _str(ds, "AccessionNumber"),
                "patient_hash": patient_hash,
                "study_date": _str(ds, "StudyDate"),
                "study_time": _str(ds, "StudyTime"),
                "study_description": _str(ds, "StudyDescription"),
                "reported_images": 0,
            }
        instances = study["series_instances"]
        if series_uid not in instances:
            instances[series_uid] = max(instances.values(), default=0) + 1
        study["images"] += 1
        study["last_arrival"] = now
        study["state"] = "receiving"
        write_json_atomic(study_path, study)
        return study


def rebuild_study(q: Quarantine, study_uid: str, classifier: Classifier) -> dict | None:
    """Recount a study's summaries from its files (keeps arrival times and REDCap instance numbers)."""
    study_dir = q.study_dir(study_uid)
    with study_lock(study_dir):
        study = read_json(study_dir / "study.json")
        if study is None:
            return None
        total = 0
        for series_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
            files = sorted(series_dir.glob("*.dcm"))
            series_path = study_dir / f"{series_dir.name}.json"
            series = read_json(series_path)
            if series is None and files:
                ds = dcmread(files[0], defer_size=256)
                series = {"series_uid": series_dir.name, "modality": _str(ds, "Modality"), "sop_class_uid": _str(ds, "SOPClassUID"),
                          "series_description": _str(ds, "SeriesDescription"), "series_number": _str(ds, "SeriesNumber"),
                          "manufacturer": _str(ds, "Manufacturer"), "model": _str(ds, "ManufacturerModelName"),
                          "classification": classifier.classify(ds), "first_arrival": study.get("last_arrival", time.time()),
                          "last_arrival": study.get("last_arrival", time.time()),
                          "calling_aet": study.get("calling_aet", ""), "called_aet": study.get("called_aet", "")}
            if series is None:
                continue
            series["images"] = len(files)
            total += len(files)
            write_json_atomic(series_path, series)
            instances = study.setdefault("series_instances", {})
            if series_dir.name not in instances:
                instances[series_dir.name] = max(instances.values(), default=0) + 1
        study["images"] = total
        write_json_atomic(study_dir / "study.json", study)
        return study


def mark(q: Quarantine, study_uid: str, **values) -> dict | None:
    """Set study-level state (e.g. complete, reported_images) if nothing arrived meanwhile."""
    with study_lock(q.study_dir(study_uid)):
        path = q.study_dir(study_uid) / "study.json"
        study = read_json(path)
        if study is None:
            return None
        study.update(values)
        write_json_atomic(path, study)
        return study
