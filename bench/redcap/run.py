"""Benchmark: the embedded REDCap server against plain SQLite, in one run.

    python bench/redcap/run.py [--records 10000] [--imports 1000]

Measures, through PyCap over HTTP, the export of N records and the import of M records
with repeating instances, and the same data written/read with plain SQLite queries
(the floor any SQLite-backed server pays), then prints the ratios.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

from redcap import Project

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fiona_redcap.embedded_redcap import admin  # noqa: E402
from fiona_redcap.embedded_redcap.server import make_server  # noqa: E402

FIELDS = ["record_id", "name", "age", "site", "note"]
DICTIONARY = [
    {"field_name": "record_id", "form_name": "base", "field_type": "text", "field_label": "ID"},
    {"field_name": "name", "form_name": "base", "field_type": "text", "field_label": "Name"},
    {"field_name": "age", "form_name": "base", "field_type": "text", "field_label": "Age", "text_validation_type_or_show_slider_number": "integer"},
    {"field_name": "site", "form_name": "base", "field_type": "text", "field_label": "Site"},
    {"field_name": "scan_uid", "form_name": "scan", "field_type": "text", "field_label": "UID"},
    {"field_name": "scan_images", "form_name": "scan", "field_type": "text", "field_label": "Images", "text_validation_type_or_show_slider_number": "integer"},
]


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"  {label}: {seconds:.3f} s", flush=True)
    return seconds, result


def rows(n: int, offset: int = 0, instances: int = 0) -> list[dict]:
    out = []
    for i in range(offset, offset + n):
        out.append({"record_id": str(i), "name": f"name {i}", "age": str(i % 90), "site": f"site{i % 7}"})
        for k in range(1, instances + 1):
            out.append({"record_id": str(i), "redcap_repeat_instrument": "scan", "redcap_repeat_instance": str(k),
                        "scan_uid": f"1.2.{i}.{k}", "scan_images": str(k * 10)})
    return out


def plain_sqlite(path: Path, n_export: int, n_import: int, instances: int) -> tuple[float, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE data (record TEXT, instrument TEXT, instance INTEGER, field TEXT, value TEXT, PRIMARY KEY (record, instrument, instance, field))")

    def eav(items):
        for r in items:
            inst = r.get("redcap_repeat_instrument", "")
            num = int(r.get("redcap_repeat_instance") or 1)
            for k, v in r.items():
                if not k.startswith("redcap_"):
                    yield (r["record_id"], inst, num, k, v)

    db.execute("BEGIN")
    db.executemany("INSERT INTO data VALUES (?,?,?,?,?)", eav(rows(n_export)))
    db.execute("COMMIT")

    def do_import():
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR REPLACE INTO data VALUES (?,?,?,?,?)", eav(rows(n_import, 10**6, instances)))
        db.execute("COMMIT")

    def do_export():
        out: dict = {}
        for rec, inst, num, field, value in db.execute("SELECT * FROM data WHERE record < 'A' ORDER BY record"):
            out.setdefault((rec, inst, num), {})[field] = value
        return out

    t_import, _ = timed(f"plain SQLite: import {n_import} records x {instances} instances", do_import)
    t_export, _ = timed(f"plain SQLite: export {n_export} records", do_export)
    return t_export, t_import


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000, help="records to export")
    parser.add_argument("--imports", type=int, default=1_000, help="records to import")
    parser.add_argument("--instances", type=int, default=3, help="repeating instances per imported record")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fiona-bench-redcap-"))
    db = admin.db_path(tmp)
    admin.ensure_user(db, "admin", password="x", super_user=True)
    pid = admin.create_project(db, "bench", "admin")
    token = admin.create_token(db, "admin", pid)
    server = make_server(db, "127.0.0.1", 0)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}/api/"
    project = Project(url, token, timeout=600)
    keys = ["field_name", "form_name", "section_header", "field_type", "field_label", "select_choices_or_calculations", "field_note",
            "text_validation_type_or_show_slider_number", "text_validation_min", "text_validation_max", "identifier", "branching_logic",
            "required_field", "custom_alignment", "question_number", "matrix_group_name", "matrix_ranking", "field_annotation"]
    project.import_metadata([{k: d.get(k, "") for k in keys} for d in DICTIONARY])
    project.import_repeating_instruments_events([{"event_name": "", "form_name": "scan", "custom_form_label": ""}])
    print(f"embedded REDCap at {url}", flush=True)
    print(f"setup: loading {args.records} records", flush=True)
    for start in range(0, args.records, 2000):
        project.import_records(rows(min(2000, args.records - start), start))
    t_import, _ = timed(f"embedded REDCap (PyCap/HTTP): import {args.imports} records x {args.instances} instances",
                        lambda: project.import_records(rows(args.imports, 10**6, args.instances)))
    t_export, got = timed(f"embedded REDCap (PyCap/HTTP): export {args.records + args.imports} records",
                          lambda: project.export_records())
    assert len({r["record_id"] for r in got}) == args.records + args.imports
    s_export, s_import = plain_sqlite(tmp / "plain.sqlite3", args.records + args.imports, args.imports, args.instances)
    print(f"ratio export (embedded / plain SQLite): {t_export / s_export:.1f}x")
    print(f"ratio import (embedded / plain SQLite): {t_import / s_import:.1f}x")
    print(f"export rate: {(args.records + args.imports) / t_export:,.0f} records/s; import rate: {args.imports / t_import:,.0f} records/s")
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
