"""The JSON API for scripts, under ``/api/v1/``, authenticated by the caller's REDCap API token.

The token is checked by asking REDCap with it: its project must be the own REDCap project of a
FIONA research project (compared by project id, read with FIONA's configured token for that
project). Writes need API import rights, checked by an empty import. The caller sees and acts
only for that one project. Described by ``/api/v1/openapi.json``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from importlib import resources

from flask import Blueprint, Response, abort, current_app, g, jsonify, request

from .. import logs
from ..state import client, coupling, incoming, projects as projects_state, transfers
from .status import gather

bp = Blueprint("api", __name__, url_prefix="/api/v1")
log = logs.get_logger("fiona.web")
_cache: dict[str, tuple[float, tuple]] = {}
_lock = threading.Lock()
TTL = 60.0


def _token() -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return (request.form.get("token") or "").strip()


def _identify(token: str) -> tuple[object, bool]:
    """(research project, may write) for a REDCap token; 401/403 otherwise. Cached for a minute."""
    cfg, access = current_app.extensions["fiona_cfg"], current_app.extensions["fiona_access"]
    key = hashlib.sha256(token.encode()).hexdigest()
    with _lock:
        hit = _cache.get(key)
    if hit and time.monotonic() - hit[0] < TTL:
        return hit[1]
    if len(token) != 32 or not token.isalnum():
        abort(401, description="Send your REDCap API token as 'Authorization: Bearer <token>'.")
    found = None
    for project in access.all_projects().values():
        if not project.redcap_url:
            continue
        try:
            theirs = client.call(client.project(project.redcap_url, token, cfg.redcap_timeout).export_project_info)
            ours = client.call(projects_state.own_redcap(cfg, project).export_project_info)
        except (client.RedcapRejected, client.RedcapUnavailable, projects_state.ProjectError, AssertionError):
            continue
        if str(theirs.get("project_id")) == str(ours.get("project_id")):
            found = project
            break
    if found is None:
        abort(403, description="This REDCap token does not belong to a project that FIONA serves.")
    probe = client.project(found.redcap_url, token, cfg.redcap_timeout)
    try:
        writable = client.call(probe.import_records, [], return_content="count") == {"count": 0}
    except (client.RedcapRejected, client.RedcapUnavailable):
        writable = False
    result = (found, writable)
    with _lock:
        _cache[key] = (time.monotonic(), result)
    return result


def _auth(write: bool = False):
    project, writable = _identify(_token())
    if write and not writable:
        abort(403, description="Your REDCap token has no API import rights in this project.")
    g.project = project
    g.user = f"api:{project.name}"
    return project


def _cfg():
    return current_app.extensions["fiona_cfg"]


def _transfer_json(study, t) -> dict:
    return {"study_key": study.key, "instance": t.instance, "project": t.project, "participant": t.participant, "event": t.event,
            "state": t.state, "requested_at": t.requested_at, "sent_at": t.sent_at, "verified_at": t.verified_at,
            "attempts": t.attempts, "last_error": t.last_error, "research_study_uid": t.mapped_study_uid,
            "images_sent": t.images_sent, "images_verified": t.images_verified}


@bp.get("/openapi.json")
def openapi():
    return Response(resources.files("fiona_redcap.web").joinpath("openapi.json").read_text(), mimetype="application/json")


@bp.get("/status")
def status():
    project = _auth()
    s = gather(_cfg(), current_app.extensions["fiona_access"], None)
    return jsonify(project=project.name, redcap_ok=s["redcap"]["ok"], counts=s["counts"],
                   services={k: v["running"] for k, v in s["services"].items()})


@bp.get("/transfers")
def list_transfers():
    project = _auth()
    out = []
    for study in incoming.list_studies(transfers.incoming(_cfg())):
        out += [_transfer_json(study, t) for t in study.transfers if t.project == project.name]
    return jsonify(transfers=out)


@bp.get("/studies")
def list_studies():
    """Studies assigned to the caller's project (pseudonymized facts only)."""
    project = _auth()
    out = []
    for study in incoming.list_studies(transfers.incoming(_cfg())):
        mine = [t for t in study.transfers if t.project == project.name]
        if mine:
            out.append({"study_key": study.key, "modalities": study.get("modalities"), "images": study.get("num_images"),
                        "series": study.get("num_series"), "transfers": [_transfer_json(study, t) for t in mine]})
    return jsonify(studies=out)


@bp.post("/assign")
def assign():
    """Assign the study with a given accession number (or StudyInstanceUID) to the caller's project."""
    project = _auth(write=True)
    body = request.get_json(silent=True) or {}
    accession, study_uid = str(body.get("accession_number", "")).strip(), str(body.get("study_instance_uid", "")).strip()
    participant, event = str(body.get("participant", "")).strip(), str(body.get("event", "")).strip()
    if bool(accession) == bool(study_uid):
        abort(400, description="Give exactly one of accession_number or study_instance_uid.")
    problem = project.assign_problem(participant, event, current_app.extensions["fiona_access"].events(project))
    if problem:
        abort(400, description=problem)
    studies = [s for s in incoming.list_studies(transfers.incoming(_cfg()))
               if (study_uid and s.study_uid == study_uid) or (accession and s.get("accession") == accession)]
    if not studies:
        abort(404, description="No study in the quarantine matches.")
    if len(studies) > 1:
        abort(409, description="More than one study matches; use study_instance_uid.")
    study = studies[0]
    if not study.complete:
        abort(409, description="The study is still arriving.")
    transfers.request(transfers.incoming(_cfg()), study.study_uid, project.name, participant, event, g.user, "api")
    logs.log_event(log, "api.assigned", cid=study.key, project=project.name)
    return jsonify(study_key=study.key, project=project.name, participant=participant, event=event, state="requested"), 201


@bp.post("/transfers/<key>/<int:instance>/resend")
def resend(key: str, instance: int):
    project = _auth(write=True)
    found = incoming.list_studies(transfers.incoming(_cfg()), filter_logic=f'[study_key] = "{key}"') if key.isalnum() else []
    transfer = next((t for s in found for t in s.transfers if t.instance == instance and t.project == project.name), None)
    if transfer is None:
        abort(404, description="No such transfer in your project.")
    transfers.resend(transfers.incoming(_cfg()), transfer, g.user)
    return jsonify(state="requested")


@bp.post("/coupling")
def upload_coupling():
    """A coupling list as CSV (body text/csv): rows for the caller's project only."""
    project = _auth(write=True)
    access = current_app.extensions["fiona_access"]
    proj = coupling.coupling_project(_cfg())
    entries, errors = coupling.parse_csv(request.get_data(), {project.name: project}, access.events, coupling.list_entries(proj), {project.name})
    if errors:
        return jsonify(error="the coupling list was not stored", problems=[str(e) for e in errors]), 400
    ids = coupling.store(proj, entries, g.user, request.args.get("expires", ""))
    return jsonify(stored=len(ids)), 201


@bp.errorhandler(401)
def unauthorized(exc):
    return jsonify(error=exc.description), 401


def openapi_document() -> dict:
    return json.loads(resources.files("fiona_redcap.web").joinpath("openapi.json").read_text())
