"""Assignment jobs: transfer requests from coupling lists, routing rules and AutoID.

A request is created only if the study has no transfer yet for the same project, participant
and event (whoever made it: a person in the Assign page or a REDCap form, or this job), so a
restarted scheduler never asks twice. Requests are new ``transfers`` instances
(``redcap_repeat_instance: "new"``), allocated by REDCap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom import dcmread

from fiona_redcap import logs
from fiona_redcap.datadir import keyed_hash, installation_key
from fiona_redcap.quarantine import find_study
from fiona_redcap.state import autoid, client, projects, transfers
from fiona_redcap.state.incoming import IncomingStudy
from fiona_redcap.state.routing import RuleError

from .context import Context, safe_reason

log = logs.get_logger("fiona.scheduler")


@dataclass(frozen=True)
class Assignment:
    project: str
    participant: str
    event: str
    source: str


def assignable(study: IncomingStudy) -> bool:
    return bool(study.values) and study.get("state") == "complete"


def already_requested(study: IncomingStudy, a: Assignment) -> bool:
    return any(t.project == a.project and t.participant == a.participant and (t.event or "") == (a.event or "")
               for t in study.transfers)


def patient_values(ctx: Context, study: IncomingStudy) -> tuple[str, str]:
    """PatientID and PatientName of a quarantined instance (for routing pre-pseudonymized data), read once per study."""
    cached = ctx.patient_cache.get(study.study_uid)
    if cached is not None:
        return cached
    q = find_study(ctx.cfg, study.study_uid, study.get("site") or None)
    if q is None:
        return "", ""
    files = q.instances(study.study_uid)
    if not files:
        return "", ""
    ds = dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID", "PatientName"])
    logs.register_sensitive(ds.get("PatientID"), ds.get("PatientName"))
    values = str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or "")
    ctx.patient_cache[study.study_uid] = values
    return values


def wanted(ctx: Context, study: IncomingStudy) -> list[Assignment]:
    """Every assignment the coupling lists and routing rules ask for (all matches, not only the first)."""
    out = [Assignment(e.project, e.participant, e.event, "coupling")
           for e in ctx.coupling_for(study.study_uid, study.get("accession"))]
    rules = [r for r in ctx.routing_rules if r.active]
    if rules:
        patient: tuple[str, str] | None = None
        for rule in rules:
            if (rule.patient_id_regex or rule.patient_name_regex) and patient is None:
                patient = patient_values(ctx, study)
            pid, pname = patient or ("", "")
            try:
                if rule.matches(study.get("called_aet"), study.get("calling_aet"), pid, pname):
                    out.append(Assignment(rule.project, pid, rule.event, "routing"))
            except RuleError as exc:
                logs.log_event(log, "routing.rule_invalid", logging.WARNING, rule=rule.id, error=str(exc))
    return out


def _request_row(study_uid: str, a: Assignment, lease: str | None) -> dict:
    row = transfers._row(study_uid, "new", {
        "requested_at": transfers.now_text(), "project": a.project, "participant": a.participant, "event": a.event,
        "requested_by": f"fiona-{a.source}", "source": a.source, "state": "processing" if lease else "requested",
        "attempts": 1 if lease else 0, "lease": lease or "",
    })
    row["transfers_complete"] = "2"
    return row


ALL_SOURCES = frozenset({"coupling", "routing", "autoid"})


def create_requests(ctx: Context, start_now: bool = False, sources: frozenset[str] = ALL_SOURCES) -> int:
    """Create the requests the lists and rules ask for; returns how many were created.

    With ``start_now`` (used by anonymize-and-send, which processes them right away) a request
    is created already leased by this worker, saving a separate claim write.
    """
    rows, touched = [], []
    for study in ctx.studies.values():
        if not assignable(study):
            continue
        new = []
        try:
            found = wanted(ctx, study) if sources & {"coupling", "routing"} else []
            found += autoid_assignments(ctx, study) if "autoid" in sources else []
        except client.RedcapUnavailable:
            raise
        except Exception as exc:  # one study's problem (e.g. an AutoID pattern that cannot generate) must not stop the others
            with logs.correlation(study.key or None):
                logs.log_event(log, "assign.error", logging.WARNING, error=safe_reason(exc)[:300])
            continue
        for a in found:
            if a.source not in sources:
                continue
            if a.participant and not already_requested(study, a) and a not in new:
                new.append(a)
        for a in new:
            rows.append(_request_row(study.study_uid, a, ctx.lease_value() if start_now else None))
            with logs.correlation(study.key):
                logs.log_event(log, "transfer.requested", project=a.project, source=a.source)
        if new:
            touched.append(study.study_uid)
    if not rows:
        return 0
    created = len(rows)
    # At most one "new" instance per record in one import: REDCap numbers each record's new instances on its own.
    while rows:
        batch, seen, rest = [], set(), []
        for row in rows:
            (rest if row["study_uid"] in seen else batch).append(row)
            seen.add(row["study_uid"])
        client.import_records(ctx.incoming, batch)
        rows = rest
    ctx.reload_studies(touched)
    return created


# -- AutoID ------------------------------------------------------------------------------------
def autoid_projects(ctx: Context) -> dict[str, projects.ResearchProject]:
    """AutoID projects by their called AE title."""
    return {p.autoid_aet.upper(): p for p in ctx.research_projects.values() if p.autoid and p.autoid_aet and p.active}


def autoid_assignments(ctx: Context, study: IncomingStudy) -> list[Assignment]:
    """The AutoID assignment of a study sent to a project's AutoID AE title (generating the ID if new)."""
    by_aet = autoid_projects(ctx)
    project = by_aet.get((study.get("called_aet") or "").strip().upper())
    if project is None or not study.get("patient_hash") or any(t.project == project.name for t in study.transfers):
        return []
    participant = participant_for(ctx, project, study.get("patient_hash"))
    events, _ = ctx.events(project)
    return [Assignment(project.name, participant, events[0][0] if events else "", "autoid")]


def participant_for(ctx: Context, project: projects.ResearchProject, patient_hash: str) -> str:
    """Same patient → same ID; a new patient gets a fresh ID checked against every existing participant."""
    # The AutoID project stores a project-specific keyed hash, so its entries cannot be linked across projects.
    key = keyed_hash(installation_key(ctx.cfg.data_dir), "autoid", project.name, patient_hash)
    proj = ctx.project("autoid")
    found = autoid.lookup(proj, project.name, key)
    if found:
        return found
    taken = autoid.all_ids(proj, project.name)
    taken |= set(projects.project_participants(ctx.cfg, project))
    taken |= {t.participant for s in ctx.studies.values() for t in s.transfers if t.project == project.name}
    participant = autoid.generate(project.participant_regex, taken)
    autoid.record(proj, project.name, key, participant)
    logs.log_event(log, "autoid.generated", project=project.name)
    return participant
