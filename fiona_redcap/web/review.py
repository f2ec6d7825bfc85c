"""Review: every attribute in a project's pseudonymized output, so the project can check its own de-identification.

The pipeline keeps the engine's per-study summary in ``<data>/review/<project>/``: tag, keyword,
VR, how many instances carry it, distinct values (up to 50) with counts. Values are
pseudonymized output, which project members may see.
"""

from __future__ import annotations

import csv
import io
import json

from flask import Blueprint, Response, abort, current_app, g, render_template, request

from .auth import login_required

bp = Blueprint("review", __name__)


def summary(data_dir, project: str) -> tuple[int, list[dict]]:
    merged: dict[str, dict] = {}
    instances = 0
    folder = data_dir / "review" / project
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        instances += int(doc.get("instances", 0))
        for tag, entry in doc.get("attributes", {}).items():
            m = merged.setdefault(tag, {"tag": tag, "keyword": entry["keyword"], "vr": entry["vr"], "count": 0, "values": {}})
            m["count"] += entry["count"]
            for value, n in entry["values"].items():
                if value in m["values"] or len(m["values"]) < 50:
                    m["values"][value] = m["values"].get(value, 0) + n
    rows = sorted(merged.values(), key=lambda r: r["tag"])
    for r in rows:
        r["distinct"] = len(r["values"])
        r["examples"] = [v for v, _ in sorted(r["values"].items(), key=lambda kv: -kv[1])[:5]]
    return instances, rows


def _cell(value) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas: prefix them with a quote."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _project():
    cfg, access = current_app.extensions["fiona_cfg"], current_app.extensions["fiona_access"]
    name = request.args.get("project", "")
    allowed = {p.name: p for p in access.projects_for(g.user, "view")}
    if name and name not in allowed:
        abort(403, description="You are not a member of that project.")
    return cfg, allowed, name


@bp.get("/review")
@login_required
def page():
    cfg, allowed, name = _project()
    instances, rows = summary(cfg.data_dir, name) if name else (0, [])
    return render_template("review.html", user=g.user, projects=sorted(allowed), project=name, instances=instances, rows=rows)


@bp.get("/review.csv")
@login_required
def export():
    cfg, _, name = _project()
    if not name:
        abort(400, description="Choose a project.")
    _, rows = summary(cfg.data_dir, name)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["tag", "keyword", "vr", "instances", "distinct_values", "examples"])
    for r in rows:
        w.writerow([_cell(v) for v in (r["tag"], r["keyword"], r["vr"], r["count"], r["distinct"], " | ".join(r["examples"]))])
    return Response(buf.getvalue(), mimetype="text/csv", headers={"Content-Disposition": f"attachment; filename=review-{name}.csv"})
