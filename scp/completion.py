"""Study completion and the REDCap outbox.

A study is complete after ``timing.quiet_period_seconds`` without a new instance. Its Incoming
rows (study + series, one batched import) are first written durably to ``<data>/outbox/`` and
then sent to REDCap in order; while REDCap is unreachable, receiving goes on and the outbox
grows. Late instances reopen a study; it completes again and the same record and series
instances are updated, never duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from fiona_redcap import logs
from fiona_redcap.config import Config
from fiona_redcap.datadir import write_private
from fiona_redcap.quarantine import Quarantine
from fiona_redcap.state import client, incoming

from . import index
from .classify import Classifier

log = logs.get_logger("fiona.scp")


class Outbox:
    """Durable FIFO of REDCap imports, one JSON file per item, named by sequence number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()

    def items(self) -> list[Path]:
        return sorted(p for p in self.path.glob("*.json") if not p.name.startswith("."))

    def put(self, name: str, payload: dict) -> Path:
        with self._lock:
            last = self.items()
            seq = int(last[-1].name.split("-")[0]) + 1 if last else 1
            path = self.path / f"{seq:012d}-{name}.json"
            write_private(path, json.dumps(payload))
            return path

    def __len__(self) -> int:
        return len(self.items())


class Completion:
    """Finds complete studies, queues their Incoming rows, and flushes the outbox to REDCap."""

    def __init__(self, cfg: Config, quarantines: dict[str, Quarantine], quiet_seconds: float | None = None,
                 classifier: Classifier | None = None, before_tick: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.quarantines = quarantines
        self.classifier = classifier
        self.before_tick = before_tick  # flushes this process's buffered arrivals, so the quiet period sees them
        self.quiet = float(cfg.raw["timing"]["quiet_period_seconds"] if quiet_seconds is None else quiet_seconds)
        self.outbox = Outbox(cfg.data_dir / "outbox")
        self.redcap_ok: bool | None = None
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_flush = 0.0
        self._backoff = 1.0
        self._project = None

    # -- completion ---------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[str]:
        """Queue every study that became complete; returns their study keys."""
        if self.before_tick is not None:
            self.before_tick()
        now = now or time.time()
        done = []
        for site, q in self.quarantines.items():
            for uid in q.studies():
                info = q.study_info(uid)
                if info.get("state") != "receiving" or now - float(info.get("last_arrival", now)) < self.quiet:
                    continue
                key = self.complete(q, uid, info, now)
                if key:
                    done.append(key)
        return done

    def complete(self, q: Quarantine, uid: str, info: dict, now: float) -> str | None:
        # Counts come from the files, not from the buffered summaries: a receiver killed between an
        # acknowledged image and its summary flush must not make REDCap show fewer images than are here.
        if self.classifier is None:
            self.classifier = Classifier.load()
        info = index.rebuild_study(q, uid, self.classifier) or info
        series = q.series_summaries(uid)
        modalities = sorted({s.get("modality", "") for s in series if s.get("modality")})
        completed_at = incoming.redcap_time(now)
        study_values = {
            "key": info["study_key"],
            "site": info.get("site", ""),
            "calling_aet": info.get("calling_aet", ""),
            "called_aet": info.get("called_aet", ""),
            "accession": info.get("accession", ""),
            "patient_hash": info.get("patient_hash", ""),
            "date": incoming.dicom_date(info.get("study_date", "")),
            "time": incoming.dicom_time(info.get("study_time", "")),
            "description": info.get("study_description", ""),
            "modalities": ",".join(modalities),
            "num_series": len(series),
            "num_images": sum(int(s.get("images", 0)) for s in series),
            "first_arrival": incoming.redcap_time(info["first_arrival"]),
            "last_arrival": incoming.redcap_time(info["last_arrival"]),
            "state": "complete",
            "completed_at": completed_at,
        }
        rows = incoming.study_rows(uid, study_values, series, {k: int(v) for k, v in info["series_instances"].items()})
        with logs.correlation(info["study_key"]):
            # Mark first under the study lock: if an image arrived meanwhile, the study stays open.
            marked = index.mark(q, uid, state="complete", completed_at=now, reported_images=study_values["num_images"]) if \
                q.study_info(uid).get("last_arrival") == info.get("last_arrival") else None
            if marked is None:
                return None
            self.outbox.put(info["study_key"], {"study_key": info["study_key"], "rows": rows})
            logs.log_event(log, "study.complete", series=len(series), images=study_values["num_images"],
                           modalities=study_values["modalities"], site=study_values["site"])
        return info["study_key"]

    # -- outbox ---------------------------------------------------------------------------------
    def flush(self) -> int:
        """Send queued imports in order; stop at the first failure. Returns how many were sent."""
        sent = 0
        items = self.outbox.items()
        if not items:
            return 0
        try:
            if self._project is None:  # one PyCap project for the life of the receiver (its metadata is read once)
                self._project = client.control_project(self.cfg, "incoming")
            proj = self._project
        except Exception as exc:  # a config without token: visible in status, receiving goes on
            self.redcap_ok, self.last_error = False, str(exc)
            return 0
        for path in items:
            payload = json.loads(path.read_text())
            with logs.correlation(payload.get("study_key")):
                try:
                    incoming.write_study(proj, payload["rows"])
                except client.RedcapUnavailable as exc:
                    self.redcap_ok, self.last_error = False, str(exc)
                    logs.log_event(log, "redcap.unavailable", logging.WARNING, backlog=len(items) - sent, error=str(exc)[:200])
                    return sent
                except client.RedcapRejected as exc:
                    # Kept aside, never dropped: an operator can fix the dictionary and move it back.
                    self.redcap_ok, self.last_error = True, "REDCap rejected a study record; see outbox/rejected"
                    rejected = self.outbox.path / "rejected"
                    rejected.mkdir(exist_ok=True, mode=0o700)
                    os.replace(path, rejected / path.name)
                    # REDCap's error lines quote record IDs and values (identifiers): only their number is logged.
                    logs.log_event(log, "redcap.rejected", logging.ERROR, problems=max(1, str(exc).count("\n")),
                                   kept=f"outbox/rejected/{path.name}")
                    continue
                path.unlink()
                sent += 1
                logs.log_event(log, "study.incoming_written")
        self.redcap_ok, self.last_error = True, ""
        return sent

    # -- thread ---------------------------------------------------------------------------------
    def start(self, interval: float = 1.0) -> None:
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.tick()
                    if time.monotonic() >= self._next_flush:
                        before = len(self.outbox)
                        self.flush()
                        if self.redcap_ok is False and len(self.outbox):
                            self._backoff = min(self._backoff * 2, 60.0)
                        else:
                            self._backoff = 1.0
                        self._next_flush = time.monotonic() + (self._backoff if before else 0)
                except Exception as exc:  # keep the loop alive; the error is visible in the log
                    logs.log_event(log, "completion.error", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])

        self._thread = threading.Thread(target=loop, name="completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
