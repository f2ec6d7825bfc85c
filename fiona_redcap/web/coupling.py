"""Coupling lists: upload a CSV, see every problem before anything is stored, preview the matches, store."""

from __future__ import annotations

import base64
import datetime as dt

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for

from .. import logs
from ..state import coupling, incoming, transfers
from .auth import login_required

bp = Blueprint("coupling", __name__)
log = logs.get_logger("fiona.web")


def _ctx():
    return current_app.extensions["fiona_cfg"], current_app.extensions["fiona_access"]


def _require():
    cfg, access = _ctx()
    if not access.may_see_quarantine(g.user):
        abort(403, description="Coupling lists name clinical accession numbers: you need FIONA's assign right.")
    return cfg, access


def _parse(data: bytes):
    cfg, access = _ctx()
    allowed = {p.name for p in access.projects_for(g.user, "assign")}
    proj = coupling.coupling_project(cfg)
    return coupling.parse_csv(data, access.all_projects(), access.events, coupling.list_entries(proj), allowed), proj


def _expiry(text: str) -> str | None:
    if not text:
        return ""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None
    return day.isoformat() if day >= dt.date.today() else None


@bp.get("/coupling")
@login_required
def index():
    cfg, access = _require()
    entries = coupling.list_entries(coupling.coupling_project(cfg))
    return render_template("coupling.html", user=g.user, entries=entries, errors=[], preview=None)


@bp.post("/coupling/preview")
@login_required
def preview():
    cfg, _ = _require()
    upload = request.files.get("file")
    expires = request.form.get("expires", "").strip()
    errors: list = []
    if upload is None or not upload.filename:
        errors = ["Choose a CSV file to upload."]
    elif _expiry(expires) is None:
        errors = ["The expiry date must be today or later (YYYY-MM-DD)."]
    if errors:
        entries = coupling.list_entries(coupling.coupling_project(cfg))
        return render_template("coupling.html", user=g.user, entries=entries, errors=errors, preview=None), 400
    data = upload.read(coupling.MAX_UPLOAD_BYTES + 1)
    (parsed, row_errors), proj = _parse(data)
    if row_errors:
        logs.log_event(log, "web.coupling_rejected", user=g.user, errors=len(row_errors))
        return render_template("coupling.html", user=g.user, entries=coupling.list_entries(proj), errors=[str(e) for e in row_errors],
                               preview=None), 400
    studies = incoming.list_studies(transfers.incoming(cfg))
    matches = []
    for entry in parsed:
        hit = [s for s in studies if entry.matches(s.study_uid, s.get("accession"))]
        matches.append((entry, hit))
    return render_template("coupling.html", user=g.user, entries=coupling.list_entries(proj), errors=[],
                           preview={"matches": matches, "data": base64.b64encode(data).decode(), "expires": expires})


@bp.post("/coupling/store")
@login_required
def store():
    _require()
    try:
        data = base64.b64decode(request.form.get("data", ""), validate=True)
    except ValueError:
        abort(400, description="The upload could not be read back; upload the file again.")
    expires = _expiry(request.form.get("expires", "").strip())
    if expires is None:
        abort(400, description="The expiry date must be today or later.")
    (parsed, row_errors), proj = _parse(data)
    if row_errors:
        abort(400, description="The list changed meanwhile and is no longer valid; upload it again.")
    ids = coupling.store(proj, parsed, g.user, expires)
    logs.log_event(log, "web.coupling_stored", user=g.user, entries=len(ids))
    flash(f"Stored {len(ids)} coupling-list entries.")
    return redirect(url_for("coupling.index"))


@bp.post("/coupling/delete")
@login_required
def delete():
    cfg, _ = _require()
    ids = [i for i in request.form.getlist("id") if i.isdigit()]
    if not ids:
        flash("Select the entries to delete.")
        return redirect(url_for("coupling.index"))
    count = coupling.delete(coupling.coupling_project(cfg), ids)
    logs.log_event(log, "web.coupling_deleted", user=g.user, entries=count)
    flash(f"Deleted {count} entries.")
    return redirect(url_for("coupling.index"))
