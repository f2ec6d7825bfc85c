"""Derive FIONA's de-identification profile table from the DICOM standard's Table E.1-1.

    python -m fiona_redcap.deid.profile_build ../shared/dicom-standard

reads ``ps3.15-table-E.1-1-<edition>.json`` and ``ps3.15-table-E.3.10-1-safe-private.tsv`` and
writes ``fiona_redcap/data/deid_profile.json``: the edition, one row per attribute (tag or tag
pattern, keyword-free, basic action, option actions) and the safe private attributes as
(Private Creator, element byte). The table is a fact of the standard; the project records
which edition it uses, and runtime never reads the shared folder.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

OPTION_COLUMNS = {
    "cleanGraphOpt": "clean_graphics",
    "cleanStructContOpt": "clean_structured_content",
    "cleanDescOpt": "clean_descriptors",
    "rtnLongFullDatesOpt": "retain_long_full_dates",
    "rtnLongModifDatesOpt": "retain_long_modified_dates",
    "rtnPatCharsOpt": "retain_patient_chars",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnUIDsOpt": "retain_uids",
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnInstIdOpt": "retain_institution_identity",
}
OUT = Path(__file__).resolve().parent.parent / "data" / "deid_profile.json"


def build(shared: Path) -> dict:
    table = next(shared.glob("ps3.15-table-E.1-1-*.json"))
    edition = re.search(r"E\.1-1-(\w+)\.json", table.name).group(1)
    rows = []
    for r in json.loads(table.read_text()):
        tag = r["tag"].upper().replace(" ", "")
        m = re.match(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$", tag)
        entry = {"tag": f"{m.group(1)}{m.group(2)}" if m else r["id"], "name": r["name"], "basic": r["basicProfile"]}
        for column, option in OPTION_COLUMNS.items():
            if r.get(column):
                entry.setdefault("options", {})[option] = r[column]
        rows.append(entry)
    safe = []
    tsv = next(shared.glob("ps3.15-table-E.3.10-1-safe-private.tsv"))
    with open(tsv, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader)
        for row in reader:
            if len(row) < 2:
                continue
            m = re.match(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-fxX]{2})([0-9A-Fa-fxX]{2})\)$", row[0].strip())
            if not m:
                continue
            safe.append({"group": m.group(1).upper(), "element": m.group(3).upper(), "creator": row[1].strip()})
    return {"edition": edition, "source": f"DICOM PS3.15 {edition} Table E.1-1 and Table E.3.10-1", "attributes": rows, "safe_private": safe}


def main(argv: list[str]) -> int:
    shared = Path(argv[0] if argv else "../shared/dicom-standard")
    data = build(shared)
    OUT.write_text(json.dumps(data, indent=0, sort_keys=True) + "\n")
    print(f"wrote {OUT}: edition {data['edition']}, {len(data['attributes'])} attributes, {len(data['safe_private'])} safe private")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
