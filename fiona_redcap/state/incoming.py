"""The Incoming project: one record per received study, its series, and its transfers.

The receiver writes a study and its series in one import when the study completes (and again,
on the same record and the same series instances, when late images reopen it). The scheduler
and the web app read studies back with :func:`list_studies`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from redcap import Project

from . import client
from .transfers import INSTRUMENT as TRANSFERS, Transfer

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def redcap_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime(TIME_FORMAT)


def dicom_date(value: str) -> str:
    """DICOM DA (YYYYMMDD) → REDCap date_ymd, or "" if it is not a valid date."""
    value = (value or "").strip()
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").strftime("%Y-%m-%d") if len(value) >= 8 else ""
    except ValueError:
        return ""


def dicom_time(value: str) -> str:
    """DICOM TM (HHMMSS.FFFFFF, possibly partial) → HH:MM:SS, or ""."""
    digits = (value or "").strip().split(".")[0].replace(":", "")
    if not digits.isdigit() or len(digits) not in (2, 4, 6):
        return ""
    digits = digits.ljust(6, "0")
    hh, mm, ss = int(digits[:2]), int(digits[2:4]), int(digits[4:6])
    return f"{hh:02d}:{mm:02d}:{ss:02d}" if hh < 24 and mm < 60 and ss < 60 else ""


def study_rows(study_uid: str, study: dict, series: list[dict], instance_of: dict[str, int]) -> list[dict]:
    """The Incoming rows of a completed study: the study record and one ``series`` instance per series.

    ``study`` holds the study-level values (keys without the ``study_`` prefix); ``instance_of``
    maps SeriesInstanceUID to its stable repeat instance.
    """
    base = {"study_uid": study_uid, "study_complete": "2"}
    for key, value in study.items():
        base[f"study_{key}"] = "" if value is None else str(value)
    rows = [base]
    for s in series:
        rows.append({
            "study_uid": study_uid,
            "redcap_repeat_instrument": "series",
            "redcap_repeat_instance": str(instance_of[s["series_uid"]]),
            "series_uid": s["series_uid"],
            "series_number": str(s.get("series_number") or ""),
            "series_description": s.get("series_description", ""),
            "series_modality": s.get("modality", ""),
            "series_sop_class": s.get("sop_class_uid", ""),
            "series_num_images": str(s.get("images", 0)),
            "series_manufacturer": s.get("manufacturer", ""),
            "series_model": s.get("model", ""),
            "series_classification": ",".join(s.get("classification", [])),
            "series_first_arrival": redcap_time(s["first_arrival"]) if s.get("first_arrival") else "",
            "series_last_arrival": redcap_time(s["last_arrival"]) if s.get("last_arrival") else "",
            "series_complete": "2",
        })
    return rows


def write_study(proj: Project, rows: list[dict]) -> None:
    """One batched, verified import of a study and its series (normal overwrite: never erases)."""
    client.import_records(proj, rows)


@dataclass
class IncomingStudy:
    study_uid: str
    values: dict
    series: list[dict] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(f"study_{name}", default) or default

    @property
    def key(self) -> str:
        return self.get("key")

    @property
    def complete(self) -> bool:
        return self.get("state") == "complete"


def list_studies(proj: Project, records: list[str] | None = None, since: dt.datetime | None = None,
                 filter_logic: str | None = None) -> list[IncomingStudy]:
    """Studies with their series and transfers, in one export (optionally only those changed since ``since``)."""
    kwargs: dict = {}
    if records is not None:
        if not records:
            return []
        kwargs["records"] = records
    if since is not None:
        kwargs["date_begin"] = since
    if filter_logic:
        kwargs["filter_logic"] = filter_logic
    rows = client.export_records(proj, **kwargs)
    studies: dict[str, IncomingStudy] = {}
    for row in rows:
        uid = row["study_uid"]
        study = studies.setdefault(uid, IncomingStudy(uid, {}))
        instrument = row.get("redcap_repeat_instrument", "")
        if instrument == "series":
            study.series.append(row)
        elif instrument == TRANSFERS:
            if row.get("transfer_project"):
                study.transfers.append(Transfer.from_row(row))
        else:
            study.values = row
    return list(studies.values())
