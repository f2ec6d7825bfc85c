"""populate-projects: one Imaging instance per sent study in the research project's own REDCap.

The project's REDCap is the one named in the Projects registry (URL + a token *reference*
resolved from FIONA's config). Writing the Imaging instance on the participant's record (and
event, for longitudinal projects) also creates the participant if needed. Idempotent: an
existing instance with the same ``imaging_study_uid`` is updated instead of adding another.
Pending writes live in ``<data>/scheduler/populate/`` until the project's REDCap accepted them,
so a research REDCap that is down delays the Imaging instance but never loses it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fiona_redcap import logs
from fiona_redcap.datadir import write_private
from fiona_redcap.state import client, projects

from .context import Context

log = logs.get_logger("fiona.scheduler")
INSTRUMENT = "imaging"


def queue_dir(ctx: Context) -> Path:
    d = ctx.dir / "populate"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def enqueue(ctx: Context, ref: str, item: dict) -> Path:
    """Remember an Imaging instance to write (``ref`` = ``<study_key>-<instance>``, no identifiers)."""
    path = queue_dir(ctx) / f"{ref}.json"
    write_private(path, json.dumps(dict(item, ref=ref)))
    return path


def _rows(rc, items: list[dict], longitudinal: bool, existing: dict[tuple[str, str], str]) -> list[dict]:
    rows = []
    for item in items:
        row = {
            rc.def_field: item["participant"],
            "redcap_repeat_instrument": INSTRUMENT,
            "redcap_repeat_instance": existing.get((item["participant"], item["study_uid"]), "new"),
            "imaging_study_uid": item["study_uid"],
            "imaging_event": item.get("event", ""),
            "imaging_description": item.get("description", ""),
            "imaging_date": item.get("date", ""),
            "imaging_modalities": item.get("modalities", ""),
            "imaging_series": str(item.get("series", "")),
            "imaging_images": str(item.get("images", "")),
            "imaging_sent_at": item.get("sent_at", ""),
            "imaging_fiona_ref": item["ref"],
            "imaging_complete": "2",
        }
        if longitudinal:
            row["redcap_event_name"] = item.get("event", "")
        rows.append(row)
    return rows


def write_items(ctx: Context, items: list[dict], check_existing: bool = True) -> int:
    """Write Imaging instances, batched per project (one export, one import per ``new`` round)."""
    done = 0
    by_project: dict[str, list[dict]] = {}
    for item in items:
        by_project.setdefault(item["project"], []).append(item)
    for name, group in by_project.items():
        project = ctx.research_projects.get(name)
        if project is None:
            raise projects.ProjectError(f"project {name} is not in the Projects registry")
        rc = ctx.research_redcap(project)
        if rc is None:
            done += len(group)  # the project keeps no REDCap of its own: nothing to write
            continue
        _, longitudinal = ctx.events(project)
        existing: dict[tuple[str, str], str] = {}
        if check_existing:
            rows = client.export_records(rc, records=sorted({i["participant"] for i in group}), forms=[INSTRUMENT])
            for row in rows:
                if row.get("redcap_repeat_instrument") == INSTRUMENT and row.get("imaging_study_uid"):
                    existing[(row[rc.def_field], row["imaging_study_uid"])] = str(row["redcap_repeat_instance"])
        rows = _rows(rc, group, longitudinal, existing)
        while rows:  # one "new" instance per record and import
            batch, seen, rest = [], set(), []
            for row in rows:
                key = (row[rc.def_field], row.get("redcap_event_name", ""))
                (rest if key in seen and row["redcap_repeat_instance"] == "new" else batch).append(row)
                if row["redcap_repeat_instance"] == "new":
                    seen.add(key)
            client.import_records(rc, batch)
            rows = rest
        done += len(group)
    return done


def populate_now(ctx: Context, ref: str, item: dict, check_existing: bool) -> bool:
    """Write one Imaging instance right after a send; on failure it stays queued for the job."""
    path = enqueue(ctx, ref, item)
    try:
        write_items(ctx, [dict(item, ref=ref)], check_existing)
    except (client.RedcapUnavailable, client.RedcapRejected, projects.ProjectError) as exc:
        logs.log_event(log, "imaging.deferred", logging.WARNING, project=item["project"], error=str(exc)[:200])
        return False
    path.unlink(missing_ok=True)
    return True


def run(ctx: Context) -> dict:
    """The populate-projects job: write every queued Imaging instance."""
    paths = sorted(queue_dir(ctx).glob("*.json"))
    if not paths:
        return {"written": 0, "pending": 0}
    items = {p: json.loads(p.read_text()) for p in paths}
    written, failed = 0, []
    by_project: dict[str, list[Path]] = {}
    for p, item in items.items():
        by_project.setdefault(item["project"], []).append(p)
    for name, group in by_project.items():
        try:
            write_items(ctx, [items[p] for p in group], check_existing=True)
        except (client.RedcapUnavailable, client.RedcapRejected, projects.ProjectError) as exc:
            failed.append(f"{name}: {exc}"[:200])
            continue
        for p in group:
            p.unlink(missing_ok=True)
        written += len(group)
    if failed:
        logs.log_event(log, "imaging.pending", logging.WARNING, pending=len(items) - written, error="; ".join(failed)[:400])
    return {"written": written, "pending": len(items) - written}
