"""The quarantine index: study.json and <SeriesUID>.json summaries, updated with every instance.

The index is derived data: images are the truth, and :func:`rebuild_study` recreates the index
from the files (after a crash between an image's rename and its index update). Study-level
values that identify the patient stay inside the quarantine; only keyed hashes leave it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydicom import Dataset, dcmread

from fiona_redcap.quarantine import Quarantine, read_json, study_lock, write_json_atomic

from .classify import Classifier


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _series_summary(ds: Dataset, classifier: Classifier, now: float, calling_aet: str, called_aet: str) -> dict:
    return {
        "series_uid": str(ds.SeriesInstanceUID),
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


def _study_summary(ds: Dataset, site: str, calling_aet: str, called_aet: str, patient_hash: str, study_key: str, now: float) -> dict:
    return {
        "study_uid": str(ds.StudyInstanceUID),
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


class Recorder:
    """Arrivals counted in memory and merged into the summaries every ``flush_seconds``.

    Writing two JSON files per image cost more than the image's own fsync; the summaries are
    derived data (recounted from the files at completion), so a few hundred milliseconds of delay
    lose nothing. Merging adds this process's counts to what is on disk under the study lock, so
    several receiver processes can share a study. The first instance of a series that this
    process sees is classified; later ones only count.
    """

    def __init__(self, q: Quarantine, classifier: Classifier, flush_seconds: float = 0.25) -> None:
        self.q = q
        self.classifier = classifier
        self.flush_seconds = flush_seconds
        self._pending: dict[str, dict] = {}
        self._known_series: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def needs_header(self, series_uid: str) -> bool:
        """True when ``add`` will read more than the UIDs (the series is new to this process)."""
        return series_uid not in self._known_series

    def add(self, ds: Dataset, site: str, calling_aet: str, called_aet: str, patient_hash: str, study_key: str,
            now: float | None = None) -> None:
        now = now or time.time()
        study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        summary = self._known_series.get(series_uid)
        if summary is None:  # classification outside the lock: it reads the header
            summary = _series_summary(ds, self.classifier, now, calling_aet, called_aet)
        with self._lock:
            self._known_series.setdefault(series_uid, summary)
            study = self._pending.get(study_uid)
            if study is None:
                study = self._pending[study_uid] = {
                    "init": _study_summary(ds, site, calling_aet, called_aet, patient_hash, study_key, now),
                    "images": 0, "last": now, "series": {}}
            series = study["series"].setdefault(series_uid, {"init": summary, "images": 0, "first": now, "last": now})
            series["images"] += 1
            series["last"] = study["last"] = now
            study["images"] += 1

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for study_uid, delta in pending.items():
            _merge(self.q, study_uid, delta)

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.flush_seconds):
                try:
                    self.flush()
                except OSError:  # images are safe; the next flush (or completion's recount) catches up
                    pass

        self._thread = threading.Thread(target=loop, name="index-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.flush()


def _merge(q: Quarantine, study_uid: str, delta: dict) -> None:
    study_dir = q.study_dir(study_uid)
    with study_lock(study_dir):
        study_path = study_dir / "study.json"
        study = read_json(study_path) or dict(delta["init"])
        instances = study.setdefault("series_instances", {})
        for series_uid, sd in delta["series"].items():
            series_path = study_dir / f"{series_uid}.json"
            series = read_json(series_path) or dict(sd["init"], first_arrival=sd["first"])
            series["images"] = int(series.get("images", 0)) + sd["images"]
            series["last_arrival"] = max(float(series.get("last_arrival", 0)), sd["last"])
            write_json_atomic(series_path, series)
            if series_uid not in instances:
                instances[series_uid] = max(instances.values(), default=0) + 1
        study["images"] = int(study.get("images", 0)) + delta["images"]
        study["last_arrival"] = max(float(study.get("last_arrival", 0)), delta["last"])
        study["state"] = "receiving"
        write_json_atomic(study_path, study)


def record_instance(q: Quarantine, ds: Dataset, site: str, calling_aet: str, called_aet: str,
                    classifier: Classifier, patient_hash: str, study_key: str, now: float | None = None) -> dict:
    """Add one stored instance to the summaries at once (tests and tools; the receiver uses a Recorder)."""
    recorder = Recorder(q, classifier)
    recorder.add(ds, site, calling_aet, called_aet, patient_hash, study_key, now)
    recorder.flush()
    return q.study_info(str(ds.StudyInstanceUID))


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
