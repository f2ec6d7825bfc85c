"""What the jobs share: the configuration, REDCap handles, and caches refreshed by cheap polls.

REDCap calls must not grow with the number of images or studies polled, so:

* Incoming is read once in full when the process starts, then only what changed since the
  previous poll (one export of every instrument with ``dateRangeBegin``); the poll time is kept
  in ``<data>/scheduler/poll.json``.
* The Projects registry, coupling lists, routing rules and AutoID entries are small lists
  re-read by the create-transfer-requests job at its interval, not per study.
* Writes to Incoming that fail because REDCap is down are kept in ``<data>/scheduler/outbox``
  and replayed first by the next job, so a result is never lost.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

from fiona_redcap import logs
from fiona_redcap.config import Config
from fiona_redcap.datadir import write_private
from fiona_redcap.quarantine import read_json
from fiona_redcap.state import client, coupling, incoming, projects, routing, transfers
from fiona_redcap.state.incoming import IncomingStudy
from fiona_redcap.state.projects import ResearchProject
from fiona_redcap.state.transfers import Transfer

log = logs.get_logger("fiona.scheduler")

POLL_OVERLAP = dt.timedelta(seconds=10)  # re-read a little before the last poll: clocks and commits are not exact
FULL_RESYNC_SECONDS = 3600
MIN_POLL_GAP = 0.0  # polls are cheap (changes only); a gap would let a job miss a write made just before it
LEASE_SECONDS = 1800
LIST_TTL_SECONDS = 300  # lists are re-read by create-transfer-requests; other jobs re-read them only if older


UID_LIKE = re.compile(r"\d+(?:\.\d+){3,}")


def safe_reason(exc: Exception) -> str:
    """An unexpected error as text fit for REDCap and logs: no file names (they hold UIDs), no UID-like values."""
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or 'input/output error'}"
    return UID_LIKE.sub("[uid]", f"{type(exc).__name__}: {exc}")


def _proc_start(pid: int) -> str:
    """Start time of a process (clock ticks since boot): tells a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class Outbox:
    """Durable FIFO of Incoming imports that could not be written yet (one JSON file each)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def items(self) -> list[Path]:
        return sorted(self.path.glob("*.json"))

    def put(self, rows: list[dict]) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}.json"
        write_private(self.path / name, json.dumps(rows))

    def flush(self, proj) -> int:
        sent = 0
        for item in self.items():
            client.import_records(proj, json.loads(item.read_text()), overwrite="overwrite")
            item.unlink()
            sent += 1
        return sent


class Context:
    """State shared by the jobs of one scheduler process. Jobs hold ``lock`` while they run."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dir = cfg.data_dir / "scheduler"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock = threading.RLock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_proc_start(os.getpid())}"
        self.outbox = Outbox(self.dir / "outbox")
        self.studies: dict[str, IncomingStudy] = {}
        self.last_poll: dt.datetime | None = None
        self.last_full: float = 0.0
        self._last_poll_mono = 0.0
        self._projects: dict[str, ResearchProject] = {}
        self._coupling: list[coupling.CouplingEntry] = []
        self._coupling_index: tuple[list, dict] | None = None
        self._rules: list[routing.RoutingRule] = []
        self._lists_at = -1e9
        self._events: dict[str, tuple[float, list[tuple[str, str]], bool]] = {}
        self._proj: dict[str, object] = {}
        self.patient_cache: dict[str, tuple[str, str]] = {}
        self.periodic_reads = 0  # polls and list reads: made per interval, whatever the number of studies

    # -- REDCap handles ------------------------------------------------------------------------
    def project(self, name: str):
        if name not in self._proj:
            self._proj[name] = client.control_project(self.cfg, name)
        return self._proj[name]

    def research_redcap(self, project: ResearchProject):
        """The research project's own REDCap (cached: PyCap reads the metadata once per handle), or None."""
        key = f"research:{project.redcap_url}:{project.token_ref}"
        if key not in self._proj:
            self._proj[key] = projects.own_redcap(self.cfg, project)
        return self._proj[key]

    @property
    def incoming(self):
        return self.project("incoming")

    # -- Incoming ------------------------------------------------------------------------------
    def flush_outbox(self) -> int:
        if not self.outbox.items():
            return 0
        sent = self.outbox.flush(self.incoming)
        logs.log_event(log, "outbox.flushed", writes=sent)
        return sent

    def poll(self, force: bool = False) -> int:
        """Bring the Incoming cache up to date; returns how many studies changed."""
        now_mono = time.monotonic()
        if not force and self.last_poll is not None and now_mono - self._last_poll_mono < MIN_POLL_GAP:
            return 0
        full = self.last_poll is None or now_mono - self.last_full > FULL_RESYNC_SECONDS
        started = dt.datetime.now()
        since = None if full else self.last_poll - POLL_OVERLAP
        self.periodic_reads += 1
        changed = incoming.list_studies(self.incoming, since=since)
        if full:
            self.studies = {}
        for study in changed:
            self._merge(study)
        self.last_poll = started
        self._last_poll_mono = now_mono
        if full:
            self.last_full = now_mono
        write_private(self.dir / "poll.json", json.dumps({"last_poll": started.strftime(transfers.TIME_FORMAT),
                                                          "full": full, "studies": len(self.studies),
                                                          "pid": os.getpid(), "periodic_reads": self.periodic_reads}))
        return len(changed)

    def _merge(self, fresh: IncomingStudy) -> None:
        old = self.studies.get(fresh.study_uid)
        if old is None:
            self.studies[fresh.study_uid] = fresh
            return
        if fresh.values:
            old.values = fresh.values
        by_instance = {t.instance: t for t in old.transfers}
        for t in fresh.transfers:
            by_instance[t.instance] = t
        old.transfers = sorted(by_instance.values(), key=lambda t: t.instance)
        series = {r.get("redcap_repeat_instance"): r for r in old.series}
        series.update({r.get("redcap_repeat_instance"): r for r in fresh.series})
        old.series = list(series.values())

    def reload_studies(self, uids: list[str]) -> None:
        """Re-read these records (e.g. to learn the instance numbers REDCap gave new requests)."""
        for study in incoming.list_studies(self.incoming, records=list(uids)):
            self._merge(study)

    def write(self, transfer: Transfer, **values) -> None:
        """Write fields of one transfer; if REDCap is down the write waits in the outbox (never lost)."""
        try:
            transfers.update(self.incoming, transfer, **values)
        except client.RedcapUnavailable as exc:
            self.outbox.put([transfers._row(transfer.study_uid, transfer.instance, values)])
            for key, value in values.items():
                setattr(transfer, key, value)
            logs.log_event(log, "transfer.write_queued", logging.WARNING, instance=transfer.instance, error=str(exc)[:200])

    def warm_up(self) -> None:
        """Read what PyCap reads once per handle (metadata, events) at start, not during the first study."""
        _ = self.incoming.def_field
        for project in self.research_projects.values():
            if project.active and project.redcap_url:
                try:
                    self.events(project)
                    _ = self.research_redcap(project).def_field
                except (client.RedcapUnavailable, client.RedcapRejected, projects.ProjectError) as exc:
                    logs.log_event(log, "project.redcap_unavailable", logging.WARNING, project=project.name, error=str(exc)[:200])

    # -- leases --------------------------------------------------------------------------------
    def lease_value(self) -> str:
        expiry = dt.datetime.now() + dt.timedelta(seconds=LEASE_SECONDS)
        return f"{self.owner} until {expiry.strftime(transfers.TIME_FORMAT)}"

    def lease_is_live(self, lease: str) -> bool:
        """True if another live worker holds this lease (ours counts as not blocking us)."""
        if not lease:
            return False
        owner, _, until = lease.partition(" until ")
        if owner == self.owner:
            return False
        expiry = transfers.parse_time(until)
        if expiry is None or expiry < dt.datetime.now():
            return False
        host, _, rest = owner.partition(":")
        pid, _, start = rest.partition(":")
        if host == socket.gethostname() and pid.isdigit():
            return _proc_start(int(pid)) == start and start != ""
        return True

    def holds(self, transfer: Transfer) -> bool:
        return transfer.lease.partition(" until ")[0] == self.owner

    # -- registry and lists --------------------------------------------------------------------
    def refresh_lists(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._lists_at < LIST_TTL_SECONDS:
            return
        self._projects = {p.name: p for p in projects.load_projects(self.cfg)}
        self._coupling = coupling.list_entries(self.project("coupling"))
        self._rules = routing.list_rules(self.project("routing"))
        self.periodic_reads += 3
        self._lists_at = time.monotonic()

    @property
    def research_projects(self) -> dict[str, ResearchProject]:
        self.refresh_lists()
        return self._projects

    @property
    def coupling_entries(self) -> list[coupling.CouplingEntry]:
        self.refresh_lists()
        return self._coupling

    @property
    def routing_rules(self) -> list[routing.RoutingRule]:
        self.refresh_lists()
        return self._rules

    def coupling_for(self, study_uid: str, accession: str) -> list[coupling.CouplingEntry]:
        """Entries keyed on this study's UID or accession number (an index, not a scan per study)."""
        entries = self.coupling_entries
        if self._coupling_index is None or self._coupling_index[0] is not entries:
            index: dict[tuple[str, str], list[coupling.CouplingEntry]] = {}
            for e in entries:
                index.setdefault((e.key_type, e.key), []).append(e)
            self._coupling_index = (entries, index)
        index = self._coupling_index[1]
        found = index.get(("study_uid", study_uid), []) + (index.get(("accession", accession), []) if accession else [])
        return coupling.matching(found, study_uid, accession)

    def forget_coupling(self, ids: set[str]) -> None:
        self._coupling = [e for e in self._coupling if e.id not in ids]

    def events(self, project: ResearchProject) -> tuple[list[tuple[str, str]], bool]:
        """(events, longitudinal) of a project, cached for the list TTL (its own REDCap is asked at most that often)."""
        cached = self._events.get(project.name)
        if cached and time.monotonic() - cached[0] < LIST_TTL_SECONDS:
            return cached[1], cached[2]
        rc = self.research_redcap(project)
        longitudinal = bool(rc is not None and client.call(lambda: rc.is_longitudinal))
        events = project.events
        if longitudinal:
            events = [(e["unique_event_name"], e.get("event_name") or e["unique_event_name"]) for e in client.call(rc.export_events)]
        self._events[project.name] = (time.monotonic(), events, longitudinal)
        return events, longitudinal

    # -- quarantine helpers ----------------------------------------------------------------
    def quarantine_info(self, q, study_uid: str) -> dict:
        return read_json(q.study_dir(study_uid) / "study.json") or {}
