"""anonymize-and-send and resend-project: the transfer state machine.

``requested → processing → sent → verified``, or ``failed`` with a reason, the attempt count
and the next attempt time (bounded exponential backoff; after the last attempt a transfer stays
failed until a person resends it). A worker owns a transfer through ``transfer_lease``
(owner + expiry); a lease of a dead or expired worker is taken over, so a transfer left in
``processing`` by a killed scheduler is finished after the restart.

Each transfer is handled in its own try/except and runs are time-boxed, so one failing or huge
study never blocks the queue. Reasons written to REDCap name the project, the destination and
counts, never a patient identifier.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from fiona_redcap import logs
from fiona_redcap.forward import Delivery, ForwardError, calling_aet, deliver, destination
from fiona_redcap.forward.verify import stored_instances
from fiona_redcap.quarantine import find_study
from fiona_redcap.state import client, transfers
from fiona_redcap.state.incoming import IncomingStudy
from fiona_redcap.state.projects import ProjectError
from fiona_redcap.state.transfers import Transfer, parse_time

from . import assign, research
from .context import Context, safe_reason

log = logs.get_logger("fiona.scheduler")
RUN_BUDGET_SECONDS = 600.0  # a run starts no new transfer after this long; the next run continues


class Refused(Exception):
    """Retrying cannot help (validation failed, engine refused, study gone): stays failed until a resend."""


@dataclass
class Work:
    study: IncomingStudy
    transfer: Transfer
    mode: str  # first | retry | resend | late


def _later(a: str, b: str) -> bool:
    ta, tb = parse_time(a), parse_time(b)
    return bool(ta and tb and ta > tb)


def mode_of(ctx: Context, study: IncomingStudy, t: Transfer, now: dt.datetime) -> str | None:
    """Why (and how) this transfer needs work now, or None."""
    if t.state == "processing":
        if ctx.holds(t):
            return "first" if t.attempts <= 1 and not t.sent_at else "retry"
        return None if ctx.lease_is_live(t.lease) else "retry"
    if t.needs_send:
        return "resend" if t.sent_at else "first"
    if t.state == "failed":
        nxt = parse_time(t.next_attempt)
        if nxt and nxt <= now and t.attempts < int(ctx.cfg.raw["transfer"]["max_attempts"]):
            return "retry"
        return None
    if t.state in ("sent", "verified") and t.sent_at and _later(study.get("completed_at"), t.sent_at):
        return "late"
    return None


def queue(ctx: Context, modes: set[str]) -> list[Work]:
    now = dt.datetime.now()
    work = []
    for study in ctx.studies.values():
        if not study.values:
            continue  # transfers typed in before the receiver's study record exists wait for it
        for t in study.transfers:
            mode = mode_of(ctx, study, t, now)
            if mode in modes:
                work.append(Work(study, t, mode))
    return sorted(work, key=lambda w: (w.transfer.requested_at, w.study.study_uid, w.transfer.instance))


def backoff(ctx: Context, attempts: int) -> str:
    """Next attempt time after ``attempts`` failed ones, or "" when no attempt is left."""
    conf = ctx.cfg.raw["transfer"]
    if attempts >= int(conf["max_attempts"]):
        return ""
    delay = float(conf["backoff_first_seconds"]) * float(conf["backoff_factor"]) ** max(attempts - 1, 0)
    return (dt.datetime.now() + dt.timedelta(seconds=delay)).strftime(transfers.TIME_FORMAT)


def run(ctx: Context, modes: set[str], budget: float | None = None) -> dict:
    """One pass over the due transfers, oldest first."""
    budget = RUN_BUDGET_SECONDS if budget is None else budget
    started = time.monotonic()
    counts = {"verified": 0, "sent": 0, "failed": 0, "waiting": 0, "deferred": 0}
    for item in queue(ctx, modes):
        if time.monotonic() - started > budget:
            counts["deferred"] += 1
            continue
        with logs.correlation(item.study.key or None):
            outcome = process(ctx, item)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def process(ctx: Context, item: Work) -> str:
    """Handle one transfer completely; returns its outcome (verified, sent, failed or waiting)."""
    study, t = item.study, item.transfer
    q = find_study(ctx.cfg, study.study_uid, study.get("site") or None)
    quiet = float(ctx.cfg.raw["timing"]["quiet_period_seconds"])
    if q is not None and not q.is_complete(study.study_uid, quiet):
        return "waiting"  # images are still arriving: send after the quiet period, not a partial study
    begun = transfers.now_text()  # the sent date: a resend asked for while this runs is later, so it is not lost
    if not (t.state == "processing" and ctx.holds(t)):
        ctx.write(t, state="processing", lease=ctx.lease_value(), attempts=t.attempts + 1)
    started = time.monotonic()
    logs.register_sensitive(study.study_uid, study.get("accession"))
    logs.log_event(log, "transfer.start", instance=t.instance, project=t.project, mode=item.mode, attempt=t.attempts)
    try:
        if q is None:
            raise Refused("the study is no longer in the quarantine (removed by retention); it cannot be sent again")
        values = send_study(ctx, study, t, q, item.mode, begun)
    except Refused as exc:
        reason = str(exc)
        ctx.write(t, state="failed", last_error=reason[:1000], next_attempt="", lease="")
        logs.log_event(log, "transfer.refused", logging.WARNING, instance=t.instance, reason=reason[:300])
        return "failed"
    except client.RedcapUnavailable:
        raise  # the job fails visibly; the lease lets the next run (or a restart) take it up again
    except Exception as exc:  # one study must not block the queue: record and go on
        reason = str(exc) if isinstance(exc, (ForwardError, ProjectError, client.RedcapRejected)) else safe_reason(exc)
        nxt = backoff(ctx, t.attempts)
        ctx.write(t, state="failed", last_error=reason[:1000], next_attempt=nxt, lease="")
        logs.log_event(log, "transfer.failed", logging.WARNING, instance=t.instance, attempt=t.attempts,
                       next_attempt=nxt or "none (resend needed)", reason=reason[:300])
        return "failed"
    ctx.write(t, **values)
    logs.log_event(log, "transfer.done", instance=t.instance, state=values["state"], images=values["images_sent"],
                   seconds=round(time.monotonic() - started, 2))
    return values["state"] if values["state"] != "failed" else "failed"


def _problem(ctx: Context, t: Transfer):
    project = ctx.research_projects.get(t.project)
    if project is None:
        raise Refused(f"project {t.project} is not in the Projects registry")
    try:
        events, _ = ctx.events(project)
    except client.RedcapUnavailable as exc:  # the project's own REDCap, not Incoming: retry this transfer later
        raise ForwardError(f"the REDCap of project {project.name} is not reachable ({exc})") from None
    problem = project.assign_problem(t.participant, t.event, events)
    if problem:
        raise Refused(problem)
    return project


def _sop_uids(files: list[Path]) -> dict[str, Path]:
    return {str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID): f for f in files}


def send_study(ctx: Context, study: IncomingStudy, t: Transfer, q, mode: str, begun: str) -> dict:
    """Validate, pseudonymize into staging, forward, verify and report; returns the fields to write."""
    from .pseudonymize import pseudonymize  # the engine is imported only when there is work

    project = _problem(ctx, t)
    name, dest = destination(ctx.cfg, project.destination)
    ref = f"{study.key or 'study'}-{t.instance}"
    staging = ctx.cfg.data_dir / "staging" / ref
    shutil.rmtree(staging, ignore_errors=True)
    try:
        classifications = {s["series_uid"]: s.get("classification", []) for s in q.series_summaries(study.study_uid)}
        result = pseudonymize(ctx.cfg, project, q.instances(study.study_uid), staging, t.participant, t.event, classifications)
        files = list(result.files)
        if not files:
            raise Refused("pseudonymization left no image to send (every series was dropped by the project's rules)")
        expected = _sop_uids(files) if dest["type"] == "dicom" else {}
        to_send = files
        if dest["type"] == "dicom" and mode in ("retry", "late"):
            present = stored_instances(dest, result.study_uid, calling_aet(ctx.cfg, dest))
            to_send = [f for uid, f in expected.items() if uid not in present]
        delivery = deliver(ctx.cfg, name, dest, to_send, ref, root=staging) if to_send else Delivery(name, 0)
        verified, verify_error = _verify(ctx, dest, result.study_uid, expected, delivery)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _keep_audit(ctx, staging)
    now = transfers.now_text()
    values = {"sent_at": begun, "images_sent": len(files), "mapped_study_uid": result.study_uid, "destination": name,
              "lease": "", "next_attempt": ""}
    if verify_error is None and verified == len(files):
        values.update(state="verified", verified_at=now, images_verified=verified, last_error="")
    elif verify_error is not None:  # could not ask: the verify job asks again later
        values.update(state="sent", images_verified="", last_error=f"verification pending: {verify_error}"[:1000])
    else:
        values.update(state="failed", images_verified=verified, next_attempt=backoff(ctx, t.attempts),
                      last_error=f"verification: {verified} of {len(files)} images found in destination {name}")
    item = {"project": project.name, "participant": t.participant, "event": t.event, "study_uid": result.study_uid,
            "description": result.description, "date": result.study_date, "modalities": ",".join(result.modalities),
            "series": len(result.series), "images": len(files), "sent_at": now}
    research.populate_now(ctx, ref, item, check_existing=bool(t.sent_at) or t.attempts > 1 or mode != "first")
    return values


def _keep_audit(ctx: Context, staging: Path) -> None:
    """Move the engine's audit record next to the others (``<data>/audit/<study_key>-<instance>.json``)."""
    audit = staging.with_name(staging.name + ".audit.json")
    if audit.exists():
        target = ctx.cfg.data_dir / "audit"
        target.mkdir(exist_ok=True, mode=0o700)
        audit.replace(target / f"{staging.name}.json")
    # The engine's summary of the pseudonymized output feeds the project's Review page.
    review = staging.with_name(staging.name + ".review.json")
    if review.exists():
        try:
            project = json.loads(review.read_text()).get("project", "")
        except (OSError, ValueError):
            project = ""
        if project and project.replace("_", "").replace("-", "").isalnum():
            target = ctx.cfg.data_dir / "review" / project
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            review.replace(target / f"{staging.name}.json")
        else:
            review.unlink(missing_ok=True)


def _verify(ctx: Context, dest: dict, study_uid: str, expected: dict[str, Path], delivery: Delivery) -> tuple[int, str | None]:
    """(images found, None) or (0, why the destination could not be asked)."""
    if dest["type"] != "dicom":
        return int(delivery.images_verified or 0), None
    try:
        present = stored_instances(dest, study_uid, calling_aet(ctx.cfg, dest))
    except ForwardError as exc:
        return 0, str(exc)
    return len(present & set(expected)), None


def verify_sent(ctx: Context) -> dict:
    """The verify job: transfers still ``sent`` (their destination could not be asked right after sending)."""
    counts = {"verified": 0, "failed": 0, "pending": 0}
    for study in ctx.studies.values():
        for t in study.transfers:
            if t.state != "sent" or not t.mapped_study_uid or t.needs_send:
                continue
            with logs.correlation(study.key or None):
                try:
                    name, dest = destination(ctx.cfg, t.destination)
                    if dest["type"] != "dicom":
                        continue
                    found = len(stored_instances(dest, t.mapped_study_uid, calling_aet(ctx.cfg, dest)))
                except ForwardError as exc:
                    ctx.write(t, last_error=f"verification pending: {exc}"[:1000])
                    counts["pending"] += 1
                    continue
                if found >= t.images_sent:
                    ctx.write(t, state="verified", verified_at=transfers.now_text(), images_verified=found, last_error="")
                    counts["verified"] += 1
                else:
                    ctx.write(t, state="failed", images_verified=found, next_attempt=backoff(ctx, t.attempts),
                              last_error=f"verification: {found} of {t.images_sent} images found in destination {name}")
                    counts["failed"] += 1
                logs.log_event(log, "transfer.verify", instance=t.instance, found=found, expected=t.images_sent)
    return counts


def anonymize_and_send(ctx: Context) -> dict:
    """New requests (from every source) and due retries, including work a killed worker left behind."""
    created = assign.create_requests(ctx, start_now=True)
    counts = run(ctx, {"first", "retry"})
    return dict(counts, created=created)


def resend_project(ctx: Context) -> dict:
    """Resends asked for by a person, and series that arrived after a send (only what is new)."""
    return run(ctx, {"resend", "late"})
