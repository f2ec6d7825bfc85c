"""Record export, import and delete with REDCap's semantics.

Rows look as REDCap exports them: the record ID first, then ``redcap_event_name`` (longitudinal
projects), ``redcap_repeat_instrument`` and ``redcap_repeat_instance`` (projects with repeating
instruments or events), then the fields in dictionary order with checkboxes as
``field___code`` and a ``<form>_complete`` after each form.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass

from . import logic
from .store import Design, Store, now
from .validation import check_value, choices_of

SPECIAL = ("redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance", "redcap_data_access_group", "redcap_survey_identifier")


class ApiError(Exception):
    """An error REDCap would return: message and HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# ---------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------
@dataclass
class Column:
    name: str  # export column name
    field: str  # dictionary field (or "<form>_complete")
    form: str
    code: str | None = None  # checkbox code


def export_columns(design: Design, fields: list[str] | None = None, forms: list[str] | None = None) -> list[Column]:
    """The data columns (without the special redcap_* columns) for a field/form selection."""
    meta = design.fields()
    unknown = [f for f in (fields or []) if f not in meta and not _is_complete_field(design, f)]
    if unknown:
        raise ApiError(f"The following values in the parameter \"fields\" are not valid: '{', '.join(unknown)}'")
    bad_forms = [f for f in (forms or []) if f not in design.form_order()]
    if bad_forms:
        raise ApiError(f"The following values in the parameter \"forms\" are not valid: '{', '.join(bad_forms)}'")
    wanted_fields = set(fields or [])
    wanted_forms = set(forms or [])
    everything = not wanted_fields and not wanted_forms
    rid = design.record_id_field
    cols: list[Column] = []
    order = design.form_order()
    for form in order:
        form_fields = [m for m in design.metadata if m["form_name"] == form]
        take_form = everything or form in wanted_forms
        for m in form_fields:
            name = m["field_name"]
            if name == rid:
                continue
            if not (take_form or name in wanted_fields):
                continue
            if m["field_type"] == "descriptive":
                continue
            if m["field_type"] == "checkbox":
                for code, _ in choices_of(m):
                    cols.append(Column(f"{name}___{_checkbox_suffix(code)}", name, form, code))
            else:
                cols.append(Column(name, name, form))
        complete = f"{form}_complete"
        if take_form or complete in wanted_fields:
            cols.append(Column(complete, complete, form))
    return cols


def _checkbox_suffix(code: str) -> str:
    return code.lower().replace("-", "_").replace(".", "_")


def _is_complete_field(design: Design, name: str) -> bool:
    return name.endswith("_complete") and name[: -len("_complete")] in design.form_order()


# ---------------------------------------------------------------------------------------------
# Loading data
# ---------------------------------------------------------------------------------------------
RecordData = dict  # event -> (instrument, instance) -> {field: value}


def load(db: sqlite3.Connection, project_id: int, records: list[str] | None) -> dict[str, RecordData]:
    sql = "SELECT record, event, instrument, instance, field, value FROM data WHERE project_id=?"
    out: dict[str, RecordData] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    # SQLite builds allow as few as 32766 parameters per statement: select many records in chunks.
    chunks = [None] if records is None else [records[i:i + 5000] for i in range(0, len(records), 5000)]
    for chunk in chunks:
        query, params = sql, [project_id]
        if chunk is not None:
            query += f" AND record IN ({','.join('?' * len(chunk))})"
            params += chunk
        for row in db.execute(query, params):
            out[row[0]][row[1]][(row[2], row[3])][row[4]] = row[5]
    return out


def record_order(db: sqlite3.Connection, project_id: int, records: list[str] | None, begin: str | None, end: str | None) -> list[str]:
    sql = "SELECT record FROM records WHERE project_id=?"
    params: list = [project_id]
    if begin:
        sql += " AND modified_at >= ?"
        params.append(begin)
    if end:
        sql += " AND modified_at <= ?"
        params.append(end)
    sql += " ORDER BY seq"
    ordered = [r[0] for r in db.execute(sql, params)]
    if records is not None:
        wanted = set(records)
        ordered = [r for r in ordered if r in wanted]
    return ordered


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
@dataclass
class ExportOptions:
    records: list[str] | None = None
    fields: list[str] | None = None
    forms: list[str] | None = None
    events: list[str] | None = None
    raw_or_label: str = "raw"
    checkbox_label: bool = False
    dags: bool = False
    filter_logic: str = ""
    date_begin: str | None = None
    date_end: str | None = None


def export_flat(store: Store, db: sqlite3.Connection, project_id: int, design: Design, opts: ExportOptions) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a flat record export."""
    cols = export_columns(design, opts.fields, opts.forms)
    if opts.events:
        bad = [e for e in opts.events if e not in design.event_names()]
        if bad:
            raise ApiError(f"The following values in the parameter \"events\" are not valid: '{', '.join(bad)}'")
    rid = design.record_id_field
    header = [rid]
    if design.longitudinal:
        header.append("redcap_event_name")
    if design.has_repeating:
        header += ["redcap_repeat_instrument", "redcap_repeat_instance"]
    if opts.dags:
        header.append("redcap_data_access_group")
    header += [c.name for c in cols]

    node = None
    if opts.filter_logic.strip():
        fields = design.fields()
        try:
            node, _ = logic.compile_logic(
                opts.filter_logic,
                known_field=lambda f: f in fields or _is_complete_field(design, f),
                known_event=lambda e: e in design.event_names(),
            )
        except logic.LogicError as exc:
            raise ApiError(f"The filterLogic parameter is not valid: {exc}") from None

    order = record_order(db, project_id, opts.records, opts.date_begin, opts.date_end)
    data = load(db, project_id, order if (opts.records is not None or opts.date_begin or opts.date_end) else None)
    dags = {}
    if opts.dags:
        dags = {r[0]: r[1] for r in db.execute("SELECT record, dag FROM records WHERE project_id=?", (project_id,))}
    events = design.event_names() or [""]
    if opts.events:
        events = [e for e in events if e in opts.events]
    labels = _label_maps(design) if opts.raw_or_label == "label" else None
    rows: list[dict] = []
    for record in order:
        rec = data.get(record, {})
        for event in events:
            ev = rec.get(event)
            if not ev:
                continue
            forms_here = set(design.forms_on_event(event))
            repeating = design.repeating_forms(event)
            for (instrument, instance) in sorted(ev, key=lambda k: (k[0] != "", design.form_order().index(k[0]) if k[0] in design.form_order() else -1, k[1])):
                if (instrument and instrument not in repeating) or (not instrument and instance != 1 and not design.repeating_event(event)):
                    continue  # data kept from a form or event that no longer repeats (REDCap keeps it, hidden)
                values = ev[(instrument, instance)]
                if instrument:
                    row_forms = {instrument}
                elif design.repeating_event(event):
                    row_forms = forms_here
                else:
                    row_forms = forms_here - repeating
                row = {rid: record}
                if design.longitudinal:
                    row["redcap_event_name"] = event
                if design.has_repeating:
                    row["redcap_repeat_instrument"] = instrument
                    row["redcap_repeat_instance"] = instance if (instrument or design.repeating_event(event)) else ""
                if opts.dags:
                    row["redcap_data_access_group"] = dags.get(record, "")
                has_value = False
                for col in cols:
                    if col.form not in row_forms:
                        row[col.name] = ""
                        continue
                    if col.code is not None:
                        checked = col.code in (values.get(col.field, "") or "").split("\x1f")
                        v = "1" if checked else "0"
                        if checked:
                            has_value = True
                    else:
                        v = values.get(col.field, "")
                        if col.field.endswith("_complete") and col.field not in design.fields():
                            if v == "" and _form_has_data(design, col.form, values):
                                v = "0"
                        elif v != "":
                            has_value = True
                    row[col.name] = v
                if not instrument and not has_value and not design.repeating_event(event):
                    # The base row of a record that only has repeating data still appears (as in
                    # REDCap) unless the export selects only repeating data.
                    # A selection of only the record ID keeps every row (REDCap lists each row's keys).
                    if cols and any(k[0] for k in ev) and not any(c.form in row_forms for c in cols):
                        continue
                if node is not None and not logic.evaluate(node, _resolver(design, rec, event, instrument, instance)):
                    continue
                if labels is not None:
                    _apply_labels(row, cols, labels, opts.checkbox_label, design)
                rows.append(row)
    for row in rows:
        inst = row.get("redcap_repeat_instance")
        if isinstance(inst, int):
            row["redcap_repeat_instance"] = inst
    return header, rows


def _survey_timestamp(design: Design, column: str, meta: dict) -> bool:
    """REDCap ignores the survey pseudo-field ``<form>_timestamp`` on import (it is not a real field)."""
    return column.endswith("_timestamp") and column not in meta and column[: -len("_timestamp")] in design.form_order()


def _form_has_data(design: Design, form: str, values: dict) -> bool:
    return any(values.get(m["field_name"]) for m in design.metadata if m["form_name"] == form and m["field_name"] != design.record_id_field)


def _resolver(design: Design, rec: RecordData, event: str, instrument: str, instance: int):
    form_of = {m["field_name"]: m["form_name"] for m in design.metadata}

    def resolve(ev: str | None, field: str, code: str | None) -> str:
        target_event = ev if ev is not None else event
        form = form_of.get(field) or field[: -len("_complete")]
        slots = rec.get(target_event, {})
        if form in design.repeating_forms(target_event):
            values = slots.get((form, instance), {}) if (ev is None and instrument == form) else {}
        elif design.repeating_event(target_event):
            values = slots.get(("", instance if ev is None else 1), {})
        else:
            values = slots.get(("", 1), {})
        raw = values.get(field, "")
        if code is not None:
            return "1" if code in raw.split("\x1f") else "0"
        return raw

    return resolve


def _label_maps(design: Design) -> dict[str, dict[str, str]]:
    return {m["field_name"]: dict(choices_of(m)) for m in design.metadata if choices_of(m)}


def _apply_labels(row: dict, cols: list[Column], labels: dict, checkbox_label: bool, design: Design) -> None:
    status = {"0": "Incomplete", "1": "Unverified", "2": "Complete"}
    for col in cols:
        v = row.get(col.name, "")
        if v == "":
            continue
        if col.code is not None:
            if checkbox_label:
                row[col.name] = labels[col.field].get(col.code, "") if v == "1" else ""
            else:
                row[col.name] = "Checked" if v == "1" else "Unchecked"
        elif col.field in labels:
            row[col.name] = labels[col.field].get(v, v)
        elif col.field.endswith("_complete") and col.field not in design.fields():
            row[col.name] = status.get(v, v)
    if row.get("redcap_repeat_instrument"):
        for ins in design.instruments:
            if ins["instrument_name"] == row["redcap_repeat_instrument"]:
                row["redcap_repeat_instrument"] = ins["instrument_label"]
    if row.get("redcap_event_name"):
        for e in design.events:
            if e["unique_event_name"] == row["redcap_event_name"]:
                # REDCap names the arm only when the project has several (PyCap's label example: "Event 1")
                if len(design.arms) > 1:
                    arm = next((a["name"] for a in design.arms if a["arm_num"] == e["arm_num"]), str(e["arm_num"]))
                    row["redcap_event_name"] = f"{e['event_name']} (Arm {e['arm_num']}: {arm})"
                else:
                    row["redcap_event_name"] = e["event_name"]


def flat_to_eav(design: Design, header: list[str], rows: list[dict]) -> list[dict]:
    rid = design.record_id_field
    out = []
    for row in rows:
        for name in header:
            if name in (rid,) + SPECIAL:
                continue
            value = row.get(name, "")
            if value == "" or (("___" in name) and value == "0"):
                continue
            item = {"record": row[rid], "field_name": name.split("___")[0] if "___" in name else name, "value": name.split("___")[1] if "___" in name else value}
            if "redcap_event_name" in row:
                item["redcap_event_name"] = row["redcap_event_name"]
            if "redcap_repeat_instrument" in row:
                item["redcap_repeat_instrument"] = row["redcap_repeat_instrument"]
                item["redcap_repeat_instance"] = row["redcap_repeat_instance"]
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------
@dataclass
class ImportOptions:
    overwrite: bool = False
    force_auto_number: bool = False
    date_format: str = "YMD"
    return_content: str = "count"
    can_create: bool = True


def eav_to_flat(items: list[dict], design: Design) -> list[dict]:
    rid = design.record_id_field
    grouped: dict[tuple, dict] = {}
    meta = design.fields()
    for item in items:
        if "record" not in item or "field_name" not in item:
            raise ApiError("EAV data must have the columns record, field_name and value")
        key = (item["record"], item.get("redcap_event_name", ""), item.get("redcap_repeat_instrument", ""), str(item.get("redcap_repeat_instance", "")))
        row = grouped.setdefault(key, {rid: item["record"]})
        for special in SPECIAL:
            if item.get(special):
                row[special] = item[special]
        name, value = item["field_name"], item.get("value", "")
        if name in meta and meta[name]["field_type"] == "checkbox":
            row[f"{name}___{_checkbox_suffix(value)}"] = "1"
        else:
            row[name] = value
    return list(grouped.values())


def import_rows(store: Store, db: sqlite3.Connection, project_id: int, design: Design, rows: list[dict], opts: ImportOptions, username: str) -> list[str] | int:
    """Validate every row, then write all of them (inside the caller's transaction)."""
    rid = design.record_id_field
    meta = design.fields()
    checkbox_cols = {}
    for m in design.metadata:
        if m["field_type"] == "checkbox":
            for code, _ in choices_of(m):
                checkbox_cols[f"{m['field_name']}___{_checkbox_suffix(code)}"] = (m["field_name"], code)
    complete_fields = {f"{form}_complete": form for form in design.form_order()}
    errors: list[tuple[str, str, str, str]] = []
    existing = {r[0] for r in db.execute("SELECT record FROM records WHERE project_id=?", (project_id,))}

    # Auto-numbering: REDCap gives each distinct record of the file the next number.
    renamed: dict[str, str] = {}
    if opts.force_auto_number:
        next_id = next_record_name(db, project_id)
        for row in rows:
            old = str(row.get(rid, ""))
            if old not in renamed:
                renamed[old] = str(next_id)
                next_id += 1

    writes: list[tuple[int, str, str, str, int | str, str, str, str]] = []  # (row, record, event, instrument, instance, field, value, column)
    creating: set[str] = set()
    for idx, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ApiError("The data being imported is not formatted correctly")
        record = str(row.get(rid, "")).strip()
        if record == "":
            errors.append(("", rid, "", "The record ID is missing"))
            continue
        if opts.force_auto_number:
            record = renamed[str(row.get(rid, ""))]
        event = str(row.get("redcap_event_name", "") or "")
        if design.longitudinal:
            if event not in design.event_names():
                errors.append((record, "redcap_event_name", event, "The event name is not valid for this project"))
                continue
        elif event:
            errors.append((record, "redcap_event_name", event, "This project is not longitudinal; redcap_event_name is not allowed"))
            continue
        instrument = str(row.get("redcap_repeat_instrument", "") or "")
        raw_instance = str(row.get("redcap_repeat_instance", "") or "").strip()
        repeat_event = design.repeating_event(event)
        if instrument and instrument not in design.repeating_forms(event):
            errors.append((record, "redcap_repeat_instrument", instrument, "This instrument is not set as repeating (on this event)"))
            continue
        if instrument or repeat_event:
            if raw_instance == "":
                raw_instance = "1"
            if raw_instance != "new" and not (raw_instance.isdigit() and int(raw_instance) >= 1):
                errors.append((record, "redcap_repeat_instance", raw_instance, "The repeat instance must be a positive integer or 'new'"))
                continue
            instance: int | str = raw_instance if raw_instance == "new" else int(raw_instance)
        else:
            if raw_instance not in ("", "1"):
                errors.append((record, "redcap_repeat_instance", raw_instance, "A repeat instance was given for data that does not repeat"))
                continue
            instance = 1
        forms_here = set(design.forms_on_event(event))
        allowed_forms = {instrument} if instrument else (forms_here if repeat_event else forms_here - design.repeating_forms(event))
        for column, value in row.items():
            if column in SPECIAL or column == rid or _survey_timestamp(design, column, meta):
                continue
            if isinstance(value, (dict, list)):
                errors.append((record, column, json.dumps(value)[:100], "The value must be text or a number, not a list or object"))
                continue
            value = "" if value is None else str(value)
            if column in checkbox_cols:
                field, code = checkbox_cols[column]
                form = meta[field]["form_name"]
                if value not in ("", "0", "1"):
                    errors.append((record, column, value, "Checkbox values must be 0 or 1"))
                    continue
            elif column in complete_fields and column not in meta:
                field, form = column, complete_fields[column]
                if value not in ("", "0", "1", "2"):
                    errors.append((record, column, value, "The form status must be 0, 1 or 2"))
                    continue
            elif column in meta:
                field, form = column, meta[column]["form_name"]
                if meta[column]["field_type"] == "checkbox":
                    errors.append((record, column, value, "Checkbox fields must be imported as field___code columns"))
                    continue
                if value != "":
                    err, value = check_value(meta[column], value, opts.date_format)
                    if err:
                        errors.append((record, column, value, err))
                        continue
            else:
                errors.append((record, column, value, "The field does not exist in the project"))
                continue
            if form not in allowed_forms:
                if value == "":
                    continue
                where = f"instrument {instrument}" if instrument else ("this event" if form not in forms_here else "non-repeating data")
                errors.append((record, column, value, f"The field belongs to form {form}, which is not part of {where}"))
                continue
            writes.append((idx, record, event, instrument, instance, field, value, column))
        if record not in existing and record not in creating:
            creating.add(record)
            if not opts.can_create:
                errors.append((record, rid, record, "You do not have permission to create new records"))
    if errors:
        lines = [f'"{r}","{f}","{v}","{m}"' for r, f, v, m in errors[:100]]
        more = f"\n({len(errors) - 100} more errors)" if len(errors) > 100 else ""
        raise ApiError("There were data validation errors:\n" + "\n".join(lines) + more)

    # Write: allocate "new" instances atomically (we hold SQLite's write lock).
    stamp = now()
    new_instance: dict[tuple, int] = {}
    touched: dict[str, list[str]] = defaultdict(list)
    records_in_file = []
    first_event: dict[str, str] = {}
    for row in rows:
        record = renamed.get(str(row.get(rid, ""))) if opts.force_auto_number else str(row.get(rid, "")).strip()
        if record not in records_in_file:
            records_in_file.append(record)
            first_event[record] = str(row.get("redcap_event_name", "") or "")
    seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records WHERE project_id=?", (project_id,)).fetchone()[0]
    for record in records_in_file:
        if record not in existing:
            seq += 1
            db.execute(
                "INSERT INTO records(project_id, record, created_at, modified_at, seq) VALUES (?,?,?,?,?)",
                (project_id, record, stamp, stamp, seq),
            )
            # The record ID is stored with the record's first data (the event its first imported row names).
            db.execute(
                "INSERT OR IGNORE INTO data(project_id, record, event, instrument, instance, field, value) VALUES (?,?,?,?,?,?,?)",
                (project_id, record, first_event[record], "", 1, rid, record),
            )
    stored = _current_values(db, project_id, [r for r in records_in_file if r in existing])
    row_instance: dict[int, int] = {}
    for idx, row in enumerate(rows):
        if str(row.get("redcap_repeat_instance", "")).strip() == "new":
            record = renamed.get(str(row.get(rid, ""))) if opts.force_auto_number else str(row.get(rid, "")).strip()
            event = str(row.get("redcap_event_name", "") or "")
            instrument = str(row.get("redcap_repeat_instrument", "") or "")
            key = (record, event, instrument)
            if key not in new_instance:
                current = db.execute(
                    "SELECT COALESCE(MAX(instance), 0) FROM data WHERE project_id=? AND record=? AND event=? AND instrument=? AND field<>?",
                    (project_id, record, event, instrument, rid),
                ).fetchone()[0]
                new_instance[key] = current
            new_instance[key] += 1
            row_instance[idx] = new_instance[key]
    resolved = [(rec, ev, ins, row_instance[idx] if inst == "new" else inst, field, value, column)
                for idx, rec, ev, ins, inst, field, value, column in writes]
    ops: list[tuple[str, tuple]] = []
    for rec, ev, ins, inst, field, value, column in resolved:
        key = (project_id, rec, ev, ins, inst, field)
        if column in checkbox_cols:
            _flush(db, ops)  # a checkbox reads the stored codes: earlier writes must be visible
        if column in checkbox_cols:
            _, code = checkbox_cols[column]
            cur = db.execute("SELECT value FROM data WHERE project_id=? AND record=? AND event=? AND instrument=? AND instance=? AND field=?", key).fetchone()
            codes = [c for c in (cur[0].split("\x1f") if cur else []) if c]
            before = list(codes)
            if value == "1" and code not in codes:
                codes.append(code)
            elif value == "0" and code in codes:
                codes.remove(code)
            elif value == "":
                if not opts.overwrite:
                    continue
                codes = [c for c in codes if c != code]
            if codes == before:
                continue
            desc = f"{checkbox_cols[column][0]}({code}) = {'checked' if code in codes else 'unchecked'}"  # as REDCap's logging
            value = "\x1f".join(codes)
        elif stored.get(key[1:], "") == value:
            continue  # REDCap logs (and dates) only what changes
        else:
            desc = f"{column} = '{value}'"
        if value == "":
            if opts.overwrite or column in checkbox_cols:
                ops.append(("del", key))
                stored.pop(key[1:], None)
                touched[rec].append(desc)
            continue
        ops.append(("up", key + (value,)))
        stored[key[1:]] = value
        if column in checkbox_cols:
            _flush(db, ops)
        touched[rec].append(desc)
    _flush(db, ops)
    for record in records_in_file:
        if record in existing and not touched.get(record):
            continue
        if record in existing:
            db.execute("UPDATE records SET modified_at=? WHERE project_id=? AND record=?", (stamp, project_id, record))
        action = "record_add" if record not in existing else "record_edit"
        store.log(db, project_id, username, action, record, ", ".join(touched.get(record, []))[:4000])

    if opts.return_content == "ids":
        return records_in_file
    if opts.return_content == "auto_ids":
        if opts.force_auto_number:
            back = {v: k for k, v in renamed.items()}
            return [f"{r},{back[r]}" for r in records_in_file]
        return [f"{r},{r}" for r in records_in_file]
    return len(records_in_file)


UPSERT = ("INSERT INTO data(project_id, record, event, instrument, instance, field, value) VALUES (?,?,?,?,?,?,?) "
          "ON CONFLICT(project_id, record, event, instrument, instance, field) DO UPDATE SET value=excluded.value")
DELETE = "DELETE FROM data WHERE project_id=? AND record=? AND event=? AND instrument=? AND instance=? AND field=?"


def _current_values(db: sqlite3.Connection, project_id: int, records: list[str]) -> dict[tuple, str]:
    """Stored values of these records, keyed (record, event, instrument, instance, field)."""
    out: dict[tuple, str] = {}
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        for rec, ev, ins, inst, field, value in db.execute(
                "SELECT record, event, instrument, instance, field, value FROM data WHERE project_id=? "
                f"AND record IN ({','.join('?' * len(chunk))})", [project_id, *chunk]):
            out[(rec, ev, ins, inst, field)] = value
    return out


def _flush(db: sqlite3.Connection, ops: list[tuple[str, tuple]]) -> None:
    """Run queued writes in order, batching consecutive writes of the same kind."""
    i = 0
    while i < len(ops):
        kind = ops[i][0]
        j = i
        while j < len(ops) and ops[j][0] == kind:
            j += 1
        db.executemany(UPSERT if kind == "up" else DELETE, [params for _, params in ops[i:j]])
        i = j
    ops.clear()


def next_record_name(db: sqlite3.Connection, project_id: int) -> int:
    best = 0
    for (record,) in db.execute("SELECT record FROM records WHERE project_id=?", (project_id,)):
        if record.isdigit():
            best = max(best, int(record))
    return best + 1


# ---------------------------------------------------------------------------------------------
# Delete
# ---------------------------------------------------------------------------------------------
def delete_records(store: Store, db: sqlite3.Connection, project_id: int, design: Design, records: list[str], username: str,
                   instrument: str = "", event: str = "", repeat_instance: str = "", arm: str = "") -> int:
    if not records:
        raise ApiError("You did not provide any records to delete")
    records = list(dict.fromkeys(records))  # a record named twice is deleted (and counted) once
    existing = {r[0] for r in db.execute("SELECT record FROM records WHERE project_id=?", (project_id,))}
    missing = [r for r in records if r not in existing]
    if missing:
        raise ApiError("One or more of the records provided cannot be deleted because they do not exist in the project. "
                       f"The following records do not exist: {', '.join(missing)}")
    if instrument and instrument not in design.form_order():
        raise ApiError(f"The instrument '{instrument}' does not exist")
    if event and event not in design.event_names():
        raise ApiError(f"The event '{event}' does not exist")
    arm_events: list[str] = []
    if arm:
        if not design.longitudinal or not any(str(a["arm_num"]) == str(arm).strip() for a in design.arms):
            raise ApiError(f"The arm '{arm}' does not exist")
        arm_events = [e["unique_event_name"] for e in design.events if str(e["arm_num"]) == str(arm).strip()]
        if event and event not in arm_events:
            raise ApiError(f"The event '{event}' is not in arm {arm}")
    stamp = now()
    for record in records:
        if arm and not instrument and not event:
            # Only the record's data in this arm goes; the record itself goes when nothing is left.
            marks = ",".join("?" * len(arm_events)) or "''"
            for table in ("data", "files"):
                db.execute(f"DELETE FROM {table} WHERE project_id=? AND record=? AND event IN ({marks})", (project_id, record, *arm_events))
            if db.execute("SELECT 1 FROM data WHERE project_id=? AND record=? LIMIT 1", (project_id, record)).fetchone() is None:
                db.execute("DELETE FROM records WHERE project_id=? AND record=?", (project_id, record))
            else:
                db.execute("UPDATE records SET modified_at=? WHERE project_id=? AND record=?", (stamp, project_id, record))
            store.log(db, project_id, username, "record_delete", record, f"Delete record in arm {arm}")
            continue
        if not instrument and not event:
            db.execute("DELETE FROM data WHERE project_id=? AND record=?", (project_id, record))
            db.execute("DELETE FROM files WHERE project_id=? AND record=?", (project_id, record))
            db.execute("DELETE FROM records WHERE project_id=? AND record=?", (project_id, record))
            store.log(db, project_id, username, "record_delete", record, "Delete record")
            continue
        fields = [m["field_name"] for m in design.metadata if (not instrument or m["form_name"] == instrument) and m["field_name"] != design.record_id_field]
        if instrument:
            fields.append(f"{instrument}_complete")
        else:
            fields += [f"{f}_complete" for f in design.form_order()]
        sql = f"DELETE FROM data WHERE project_id=? AND record=? AND field IN ({','.join('?' * len(fields))})"
        params: list = [project_id, record] + fields
        if event:
            sql += " AND event=?"
            params.append(event)
        elif arm:
            sql += f" AND event IN ({','.join('?' * len(arm_events)) or chr(39) * 2})"
            params += arm_events
        if repeat_instance:
            sql += " AND instance=?"
            params.append(int(repeat_instance))
            if instrument in design.repeating_forms(event):
                sql += " AND instrument=?"
                params.append(instrument)
        db.execute(sql, params)
        db.execute("UPDATE records SET modified_at=? WHERE project_id=? AND record=?", (stamp, project_id, record))
        store.log(db, project_id, username, "record_edit", record, f"Delete data of instrument {instrument or '(all)'} event {event or '(all)'} instance {repeat_instance or '(all)'}")
    return len(records)
