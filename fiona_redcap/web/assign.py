"""Assign: quarantined studies waiting for a project, participant and event; history and resend.

Studies are addressed by their study key (a keyed hash), never by UID or accession number, so
no identifier appears in a URL. An assignment is exactly the ``transfers`` instance a person
could enter in the REDCap form.
"""

from __future__ import annotations

import datetime as dt
import re

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for

from .. import logs
from ..state import client, incoming, transfers
from ..state.incoming import IncomingStudy
from .auth import login_required

bp = Blueprint("assign", __name__)
log = logs.get_logger("fiona.web")


def _cfg():
    return current_app.extensions["fiona_cfg"]


def _access():
    return current_app.extensions["fiona_access"]


def studies() -> list[IncomingStudy]:
    return incoming.list_studies(transfers.incoming(_cfg()))


def find_study(key: str) -> IncomingStudy:
    if not re.fullmatch(r"[0-9a-f]{16}", key or ""):
        abort(404, description="No such study.")
    found = incoming.list_studies(transfers.incoming(_cfg()), filter_logic=f'[study_key] = "{key}"')
    if not found:
        abort(404, description="No such study (it may have been removed from the quarantine).")
    return found[0]


def visible(study: IncomingStudy, retention_days: float) -> bool:
    if study.get("state") == "removed":
        return False
    arrived = transfers.parse_time(study.get("last_arrival"))
    return arrived is None or dt.datetime.now() - arrived <= dt.timedelta(days=retention_days)


@bp.get("/")
@login_required
def home():
    return redirect(url_for("assign.index"))


@bp.get("/assign")
@login_required
def index():
    if not _access().may_see_quarantine(g.user):
        return render_template("assign_list.html", user=g.user, studies=[], denied=True, q="", date="")
    q = request.args.get("q", "").strip()
    date = request.args.get("date", "").strip()
    days = float(_cfg().raw["timing"]["retention_unassigned_days"])
    try:
        rows = [s for s in studies() if visible(s, days)]
    except client.RedcapUnavailable as exc:
        return render_template("error.html", code=503, message=f"REDCap cannot be reached: {exc}", user=g.user), 503
    if q:
        rows = [s for s in rows if q.lower() in s.get("accession").lower()]
    if date:
        rows = [s for s in rows if s.get("date") == date]
    rows.sort(key=lambda s: s.get("last_arrival"), reverse=True)
    return render_template("assign_list.html", user=g.user, studies=rows, denied=False, q=q, date=date)


def _study_page(study: IncomingStudy, form: dict | None = None, errors: list[str] | None = None, status: int = 200):
    access = _access()
    projects = access.projects_for(g.user, "assign")
    chosen = None
    events, participants = [], []
    name = (form or {}).get("project") or request.args.get("project", "")
    if name:
        chosen = next((p for p in projects if p.name == name), None)
        if chosen is None:
            errors = (errors or []) + ["You may not assign studies to that project."]
        else:
            try:
                events, participants = access.events(chosen), access.participants(chosen)
            except Exception as exc:  # the project's REDCap is down or misconfigured: say so
                errors = (errors or []) + [f"The project's REDCap cannot be read: {exc}"]
    history = sorted(study.transfers, key=lambda t: t.instance, reverse=True)
    viewable = {p.name for p in access.projects_for(g.user, "resend")}
    return render_template("study.html", user=g.user, study=study, projects=projects, chosen=chosen, events=events,
                           participants=participants, form=form or {}, errors=errors or [], history=history,
                           resendable=viewable), status


@bp.get("/assign/<key>")
@login_required
def study(key: str):
    if not _access().may_see_quarantine(g.user):
        abort(403, description="Quarantined studies are identifying: you need FIONA's assign right to see them.")
    return _study_page(find_study(key))[0]


def _validate(study: IncomingStudy, form: dict) -> tuple[list[str], object]:
    access = _access()
    project = next((p for p in access.projects_for(g.user, "assign") if p.name == form.get("project")), None)
    if project is None:
        return ["Choose a project you may assign to."], None
    if not study.complete:
        return ["The study is still arriving; wait until it is complete."], project
    problem = project.assign_problem(form.get("participant", "").strip(), form.get("event", "").strip(), access.events(project))
    return ([problem] if problem else []), project


def _posted_assignment(key: str):
    """The study and the submitted (project, participant, event), validated; both steps use it."""
    if not _access().may_see_quarantine(g.user):
        abort(403, description="You need FIONA's assign right.")
    study = find_study(key)
    form = {k: request.form.get(k, "").strip() for k in ("project", "participant", "event")}
    errors, project = _validate(study, form)
    return study, form, errors, project


@bp.post("/assign/<key>/confirm")
@login_required
def confirm(key: str):
    study, form, errors, project = _posted_assignment(key)
    if errors:
        return _study_page(study, form, errors, 400)
    event_label = dict(_access().events(project)).get(form["event"], form["event"])
    return render_template("assign_confirm.html", user=g.user, study=study, form=form, project=project, event_label=event_label)


@bp.post("/assign/<key>")
@login_required
def assign(key: str):
    study, form, errors, project = _posted_assignment(key)
    if errors:
        return _study_page(study, form, errors, 400)
    transfers.request(transfers.incoming(_cfg()), study.study_uid, project.name, form["participant"], form["event"], g.user, "assign")
    logs.log_event(log, "web.assigned", user=g.user, cid=study.key, project=project.name)
    flash(f"Assigned to {project.name}, participant {form['participant']}" + (f", event {form['event']}" if form["event"] else "") +
          ". FIONA will pseudonymize and send it.")
    return redirect(url_for("assign.study", key=key))


@bp.post("/assign/<key>/resend/<int:instance>")
@login_required
def resend(key: str, instance: int):
    study = find_study(key)
    transfer = next((t for t in study.transfers if t.instance == instance), None)
    if transfer is None:
        abort(404, description="No such transfer.")
    project = _access().all_projects().get(transfer.project)
    if project is None or not _access().can(g.user, project, "resend"):
        abort(403, description="You may not resend transfers of this project.")
    transfers.resend(transfers.incoming(_cfg()), transfer, g.user)
    logs.log_event(log, "web.resend", user=g.user, cid=study.key, project=transfer.project)
    flash("Resend requested: the study will be pseudonymized and sent again.")
    return redirect(request.form.get("back") or url_for("assign.study", key=key))
