"""retention: delete quarantined studies by state, never by age alone.

* a study whose transfers are all ``verified`` is removed ``timing.retention_verified_days``
  after its last verification;
* a study nobody assigned is removed ``timing.retention_unassigned_days`` after it completed;
* a study with any transfer requested, processing, sent or failed is kept, whatever its age.

Under disk pressure (free space in a quarantine below 4 × ``dicom.min_free_mb``) verified
studies go first regardless of age, oldest first; unsent data is never deleted to make room:
an alarm is logged and shown in the status file instead. Removed studies get
``study_state = removed`` in Incoming (one batched write). Expired coupling-list entries are
deleted and counted in the log. Staging folders left by a killed worker are removed.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time

from fiona_redcap import logs
from fiona_redcap.quarantine import quarantines
from fiona_redcap.state import client, coupling
from fiona_redcap.state.incoming import IncomingStudy
from fiona_redcap.state.transfers import parse_time

from .context import Context

log = logs.get_logger("fiona.scheduler")
STAGING_MAX_AGE = 24 * 3600


def verified_since(study: IncomingStudy) -> dt.datetime | None:
    """When the last transfer was verified, if every transfer is verified (and none wants a resend)."""
    if not study.transfers or any(t.state != "verified" or t.needs_send for t in study.transfers):
        return None
    times = [parse_time(t.verified_at) for t in study.transfers]
    return max(times) if all(times) else None


def removable(ctx: Context, study: IncomingStudy | None, now: dt.datetime, pressure: bool) -> bool:
    if study is None or not study.values:
        return False  # not in Incoming yet (the receiver's outbox is still writing it)
    timing = ctx.cfg.raw["timing"]
    verified = verified_since(study)
    if verified is not None:
        return pressure or now - verified >= dt.timedelta(days=float(timing["retention_verified_days"]))
    if study.transfers:
        return False  # pending, processing, sent or failing: keep
    completed = parse_time(study.get("completed_at")) or parse_time(study.get("last_arrival"))
    return bool(completed) and now - completed >= dt.timedelta(days=float(timing["retention_unassigned_days"]))


def run(ctx: Context) -> dict:
    ctx.refresh_lists(force=True)
    now = dt.datetime.now()
    removed: list[str] = []
    alarms: list[str] = []
    threshold = 4 * float(ctx.cfg.raw["dicom"].get("min_free_mb", 100)) * 1024 * 1024
    for site, q in quarantines(ctx.cfg).items():
        if not q.root.exists():
            continue
        pressure = shutil.disk_usage(q.root).free < threshold
        uids = q.studies()
        if pressure:  # oldest verified first
            uids.sort(key=lambda u: verified_since(ctx.studies[u]) or now if u in ctx.studies else now)
        for uid in uids:
            study = ctx.studies.get(uid)
            if not removable(ctx, study, now, pressure):
                continue
            q.remove_study(uid)
            removed.append(uid)
            with logs.correlation(study.key or None):
                logs.log_event(log, "study.removed", site=site, reason="disk pressure" if pressure else "retention")
            if pressure and shutil.disk_usage(q.root).free >= threshold:
                pressure = False
        if pressure:
            alarms.append(f"quarantine {site}: less than {threshold / 2**20:.0f} MB free and nothing more may be deleted "
                          "(the remaining studies are not yet verified)")
            logs.log_event(log, "disk.pressure", logging.ERROR, site=site, free_mb=round(shutil.disk_usage(q.root).free / 2**20))
    if removed:
        rows = [{"study_uid": uid, "study_state": "removed"} for uid in removed]
        client.import_records(ctx.incoming, rows)
        for uid in removed:
            ctx.studies[uid].values["study_state"] = "removed"
    expired = [e for e in ctx.coupling_entries if e.expired()]
    if expired:
        coupling.delete(ctx.project("coupling"), [e.id for e in expired])
        ctx.forget_coupling({e.id for e in expired})
        logs.log_event(log, "coupling.expired_removed", entries=len(expired))
    staging = ctx.cfg.data_dir / "staging"
    stale = 0
    if staging.exists():
        for d in staging.iterdir():
            if d.name != "packages" and time.time() - d.stat().st_mtime > STAGING_MAX_AGE:
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                else:
                    d.unlink(missing_ok=True)  # audit/review records of attempts that failed after pseudonymizing
                stale += 1
    return {"removed": len(removed), "coupling_expired": len(expired), "staging_removed": stale, "alarms": alarms}
