"""Status: what the gateway is doing, and what failed, in plain words."""

from __future__ import annotations

import shutil
import time

from flask import Blueprint, current_app, g, jsonify, render_template

from ..quarantine import quarantines, read_json
from ..state import client, incoming, transfers
from .auth import login_required

bp = Blueprint("status", __name__)


def gather(cfg, access, user: str | None) -> dict:
    now = time.time()
    services = {}
    for name in ("scp", "scheduler"):
        info = read_json(cfg.data_dir / "status" / f"{name}.json") or {}
        services[name] = {"running": bool(info) and now - float(info.get("updated", 0)) < 120, "info": info}
    redcap = {"url": cfg.redcap_url, "ok": False, "error": ""}
    counts = {s: 0 for s in ("receiving", "complete", "assigned", "requested", "processing", "sent", "verified", "failed")}
    failures = []
    try:
        studies = incoming.list_studies(transfers.incoming(cfg))
        redcap["ok"] = True
        visible = {p.name for p in access.projects_for(user, "view")} if user else set()
        for s in studies:
            state = s.get("state") or "receiving"
            counts[state] = counts.get(state, 0) + 1
            if s.transfers:
                counts["assigned"] += 1
            for t in s.transfers:
                counts[t.state] = counts.get(t.state, 0) + 1
                if t.state == "failed" and t.project in visible:
                    failures.append((s, t))
    except (client.RedcapUnavailable, client.RedcapRejected) as exc:
        redcap["error"] = str(exc)
    destinations = {}
    from ..dicom_net import echo

    for name, dest in cfg.raw["destinations"].items():
        if dest["type"] == "dicom":
            destinations[name] = echo(dest["aet"], dest["host"], dest["port"], calling_aet=dest.get("calling_aet", "FIONA"), timeout=3)
        else:
            destinations[name] = None
    disk = []
    for site, q in quarantines(cfg).items():
        usage = shutil.disk_usage(q.root if q.root.exists() else cfg.data_dir)
        disk.append({"site": site, "studies": len(q.studies()), "used_mb": round(q.size_bytes() / 2**20, 1),
                     "free_gb": round(usage.free / 2**30, 1), "free_pct": round(100 * usage.free / usage.total, 1)})
    return {"services": services, "redcap": redcap, "counts": counts, "failures": failures, "destinations": destinations, "disk": disk}


@bp.get("/status")
@login_required
def page():
    cfg, access = current_app.extensions["fiona_cfg"], current_app.extensions["fiona_access"]
    return render_template("status.html", user=g.user, s=gather(cfg, access, g.user))
