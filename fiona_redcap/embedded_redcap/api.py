"""The REDCap API endpoint: ``POST /api/``, dispatched on ``content`` (and ``action``).

Each handler receives a :class:`Request` (token owner, project, rights, parameters) and
returns Python data; :func:`respond` renders it in the requested ``format`` (json, csv or
xml) exactly as REDCap does, and errors in ``returnFormat`` with a 4xx status.
"""

from __future__ import annotations

import csv
import io
import logging
import json
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from xml.sax.saxutils import escape

from flask import Flask, Response, jsonify, request

from .. import __version__ as fiona_version
from .. import logs
from . import admin, odm, records
from .records import ApiError
from .store import Design, Store, now
from .validation import validate_dictionary

REDCAP_VERSION = "14.5.0"
log = logs.get_logger("fiona.redcap")

METADATA_KEYS = [
    "field_name", "form_name", "section_header", "field_type", "field_label", "select_choices_or_calculations",
    "field_note", "text_validation_type_or_show_slider_number", "text_validation_min", "text_validation_max",
    "identifier", "branching_logic", "required_field", "custom_alignment", "question_number", "matrix_group_name",
    "matrix_ranking", "field_annotation",
]
#: The human headers of a data dictionary CSV (as downloaded from REDCap's Dictionary page).
DICTIONARY_HEADERS = dict(zip([
    "Variable / Field Name", "Form Name", "Section Header", "Field Type", "Field Label",
    "Choices, Calculations, OR Slider Labels", "Field Note", "Text Validation Type OR Show Slider Number",
    "Text Validation Min", "Text Validation Max", "Identifier?", "Branching Logic (Show field only if...)",
    "Required Field?", "Custom Alignment", "Question Number (surveys only)", "Matrix Group Name", "Matrix Ranking?",
    "Field Annotation",
], METADATA_KEYS))


@dataclass
class Request:
    store: Store
    params: dict[str, Any]
    username: str
    project_id: int | None  # None for a super token
    rights: dict = field(default_factory=dict)
    super_user: bool = False

    @property
    def fmt(self) -> str:
        return (self.params.get("format") or "xml").lower()

    def need(self, *rights: str) -> None:
        missing = [r for r in rights if not _truthy(self.rights.get(r))]
        if missing:
            raise ApiError(f"You do not have {' / '.join(RIGHT_NAMES.get(r, r) for r in missing)} privileges", 403)

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name)
        if value is None or value == "":
            return default
        return str(value).lower() in ("true", "1", "yes")

    def list(self, name: str) -> list[str] | None:
        value = self.params.get(name)
        if value is None:
            return None
        if isinstance(value, list):
            items = value
        else:
            items = [v for v in re.split(r"\s*,\s*", str(value).strip())]
        items = [str(v).strip() for v in items if str(v).strip() != ""]
        return items or None


RIGHT_NAMES = {"api_export": "API Export", "api_import": "API Import/Update", "design": "Project Design and Setup",
               "record_delete": "Delete Record", "user_rights": "User Rights", "record_create": "Create Record"}


def _truthy(value) -> bool:
    return str(value) not in ("", "0", "None", "False")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def to_csv(rows: list[dict], header: list[str] | None = None, delimiter: str = ",") -> str:
    buf = io.StringIO()
    header = header or (list(rows[0].keys()) if rows else [])
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(h) is None else row.get(h) for h in header])
    return buf.getvalue()


def to_xml(rows: list[dict] | dict, root: str = "records") -> str:
    def item(d: dict) -> str:
        return "<item>" + "".join(f"<{k}><![CDATA[{'' if v is None else v}]]></{k}>" for k, v in d.items()) + "</item>"

    if isinstance(rows, dict):
        body = "".join(f"<{k}><![CDATA[{'' if v is None else v}]]></{k}>" for k, v in rows.items())
        return f'<?xml version="1.0" encoding="UTF-8" ?>\n<{root}>{body}</{root}>'
    return f'<?xml version="1.0" encoding="UTF-8" ?>\n<{root}>\n' + "\n".join(item(r) for r in rows) + f"\n</{root}>"


def respond(data: Any, fmt: str, header: list[str] | None = None, delimiter: str = ",", xml_root: str = "records") -> Response:
    if isinstance(data, Response):
        return data
    if isinstance(data, (str, int)) and not isinstance(data, bool):
        return Response(str(data), mimetype="text/plain" if fmt != "json" else "application/json")
    if fmt == "json":
        return Response(json.dumps(data, ensure_ascii=False), mimetype="application/json")
    if fmt == "csv":
        rows = [data] if isinstance(data, dict) else data
        if rows and not isinstance(rows[0], dict):
            return Response("\n".join(str(x) for x in rows), mimetype="text/csv")
        return Response(to_csv(rows, header, delimiter), mimetype="text/csv")
    if isinstance(data, list) and data and not isinstance(data[0], dict):
        body = "".join(f"<id>{escape(str(x))}</id>" for x in data)
        return Response(f'<?xml version="1.0" encoding="UTF-8" ?>\n<ids>{body}</ids>', mimetype="application/xml")
    return Response(to_xml(data, xml_root), mimetype="application/xml")


def error_response(message: str, status: int, fmt: str) -> Response:
    if fmt == "json":
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")
    if fmt == "csv":
        return Response(message, status=status, mimetype="text/csv")
    body = f'<?xml version="1.0" encoding="UTF-8" ?>\n<hash>\n  <error>{escape(message)}</error>\n</hash>'
    return Response(body, status=status, mimetype="application/xml")


# ---------------------------------------------------------------------------------------------
# Parsing imported data
# ---------------------------------------------------------------------------------------------
def parse_data(req: Request, default_key: str | None = None) -> Any:
    raw = req.params.get("data")
    if raw is None or str(raw).strip() == "":
        raise ApiError("The data parameter is missing or empty")
    fmt = req.fmt
    if fmt == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiError(f"The data being imported is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if fmt == "csv":
        text = raw.lstrip("\ufeff")
        delim = req.params.get("csvDelimiter") or ","
        delim = "\t" if delim == "tab" else delim
        reader = csv.DictReader(io.StringIO(text), delimiter=delim)
        try:
            rows = [dict(r) for r in reader]
        except csv.Error as exc:
            raise ApiError(f"The data being imported is not valid CSV ({exc})") from None
        for n, row in enumerate(rows, start=2):
            if None in row:
                raise ApiError(f"The data being imported is not valid CSV (line {n} has more values than the header)")
        return rows
    if fmt == "xml":
        return odm.parse_simple_xml(raw)
    raise ApiError(f"The format '{fmt}' is not valid")


def parse_rows(req: Request, what: str = "items") -> list[dict]:
    """The data parameter as a list of objects (REDCap's import shape for every content type)."""
    rows = parse_data(req)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ApiError(f"The data being imported must be a list of {what}")
    return rows


def parse_object(req: Request) -> dict:
    """The data parameter as one object (or a list holding one), e.g. project attributes."""
    data = parse_data(req)
    if isinstance(data, list):
        data = data[0] if data else {}
    if not isinstance(data, dict):
        raise ApiError("The data being imported must be an object of attributes")
    return data


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------
Handler = Callable[[Request], Any]
HANDLERS: dict[tuple[str, str], Handler] = {}


def handler(content: str, action: str = "export"):
    def wrap(fn: Handler) -> Handler:
        HANDLERS[(content, action)] = fn
        return fn

    return wrap


def _design(req: Request, db: sqlite3.Connection | None = None) -> Design:
    return req.store.design(db or req.store.connect(), req.project_id)


@handler("version")
def version(req: Request):
    return Response(REDCAP_VERSION, mimetype="text/plain")


@handler("project")
def project_export(req: Request):
    req.need("api_export")
    with req.store.read() as db:
        info = req.store.info(db, req.project_id)
        design = req.store.design(db, req.project_id)
    info["project_id"] = req.project_id
    info["is_longitudinal"] = int(design.longitudinal)
    info["has_repeating_instruments_or_events"] = int(design.has_repeating)
    return info if req.fmt != "xml" else Response(to_xml(info, "item"), mimetype="application/xml")


@handler("project", "import")
def project_create(req: Request):
    """Create a project with a super token; answers with the new project's API token."""
    if req.project_id is not None:
        raise ApiError("You must use a super API token to create a project", 403)
    data = parse_object(req)
    title = (data.get("project_title") or "").strip()
    if not title:
        raise ApiError("The project_title is missing")
    try:
        purpose = int(data.get("purpose", 0) or 0)
    except ValueError:
        raise ApiError("purpose must be an integer from 0 to 4") from None
    if purpose not in range(5):
        raise ApiError("purpose must be an integer from 0 to 4")
    longitudinal = _truthy(data.get("is_longitudinal", 0))
    design = None
    records_to_import: list[dict] = []
    info = {k: data[k] for k in ("purpose_other", "project_notes", "project_irb_number", "project_grant_number",
                                   "project_pi_firstname", "project_pi_lastname", "record_autonumbering_enabled",
                                   "surveys_enabled") if k in data}
    if req.params.get("odm"):
        try:
            parsed = odm.read_project(req.params["odm"])
        except ValueError as exc:
            raise ApiError(f"The project XML is not valid: {exc}") from None
        design = parsed.design
        info.update(parsed.info)
        records_to_import = parsed.records
        problems = validate_dictionary(design.metadata)
        if problems:
            raise ApiError("The project XML's data dictionary is not valid: " + "; ".join(problems[:10]))
    project_id = admin.create_project(req.store, title, req.username, longitudinal=longitudinal, purpose=purpose, info=info, design=design)
    if records_to_import:
        with req.store.write() as db:
            records.import_rows(req.store, db, project_id, req.store.design(db, project_id), records_to_import, records.ImportOptions(), req.username)
    return Response(admin.create_token(req.store, req.username, project_id), mimetype="text/plain")


@handler("project_settings", "import")
def project_settings(req: Request):
    req.need("design")
    data = parse_object(req)
    allowed = set(admin.default_info("x")) - {"creation_time", "production_time", "in_production", "is_longitudinal",
                                               "has_repeating_instruments_or_events"}
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ApiError(f"The following project attributes cannot be set: {', '.join(unknown)}")
    with req.store.write() as db:
        info = req.store.info(db, req.project_id)
        changed = sum(1 for k, v in data.items() if str(info.get(k)) != str(v))
        info.update(data)
        req.store.save_info(db, req.project_id, info)
        req.store.log(db, req.project_id, req.username, "manage", details=f"Modify project settings ({', '.join(sorted(data))})")
    return str(changed)


@handler("project_xml")
def project_xml(req: Request):
    req.need("api_export")
    with req.store.read() as db:
        info = req.store.info(db, req.project_id)
        design = req.store.design(db, req.project_id)
        rows: list[dict] = []
        if not req.flag("returnMetadataOnly"):
            _, rows = records.export_flat(req.store, db, req.project_id, design, records.ExportOptions(
                records=req.list("records"), fields=req.list("fields"), events=req.list("events"),
                filter_logic=req.params.get("filterLogic") or ""))
    info["project_id"] = req.project_id
    return Response(odm.write_project(info, design, rows), mimetype="application/xml")


@handler("metadata")
def metadata_export(req: Request):
    req.need("api_export")
    design = _design(req)
    fields, forms = req.list("fields"), req.list("forms")
    rows = [m for m in design.metadata if (not fields and not forms) or (fields and m["field_name"] in fields) or (forms and m["form_name"] in forms)]
    return [dict((k, m.get(k, "")) for k in METADATA_KEYS) for m in rows]


def normalize_dictionary(rows: list[dict]) -> list[dict]:
    """Accept API keys or the human data-dictionary headers; return API-keyed rows."""
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            key = DICTIONARY_HEADERS.get((k or "").strip(), (k or "").strip())
            clean[key] = "" if v is None else str(v).strip() if key != "field_label" else str(v)
        out.append({k: clean.get(k, "") for k in METADATA_KEYS})
    return out


@handler("metadata", "import")
def metadata_import(req: Request):
    req.need("design", "api_import")
    rows = parse_rows(req)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ApiError("The data dictionary must be a list of fields")
    rows = normalize_dictionary(rows)
    problems = validate_dictionary(rows)
    if problems:
        raise ApiError("The data dictionary is not valid:\n" + "\n".join(problems))
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        if req.store.info(db, req.project_id).get("in_production") and design.metadata:
            raise ApiError("Metadata cannot be imported through the API for projects in production")
        design.metadata = rows
        forms = design.form_order()
        labels = {i["instrument_name"]: i["instrument_label"] for i in design.instruments}
        design.instruments = [{"instrument_name": f, "instrument_label": labels.get(f, f.replace("_", " ").title())} for f in forms]
        design.mapping = [m for m in design.mapping if m["form"] in forms]
        design.repeating = [r for r in design.repeating if not r.get("form_name") or r["form_name"] in forms]
        if design.longitudinal:
            mapped = {m["form"] for m in design.mapping}
            for form in forms:
                if form not in mapped and design.events:  # REDCap designates new forms on the first event
                    first = design.events[0]
                    design.mapping.append({"arm_num": first["arm_num"], "unique_event_name": first["unique_event_name"], "form": form})
        req.store.save_design(db, req.project_id, design)
        req.store.log(db, req.project_id, req.username, "manage", details=f"Upload data dictionary ({len(rows)} fields)")
    return len(rows)


@handler("instrument")
def instrument_export(req: Request):
    req.need("api_export")
    return _design(req).instruments


@handler("exportFieldNames")
def export_field_names(req: Request):
    req.need("api_export")
    design = _design(req)
    wanted = req.params.get("field")
    out = []
    meta = design.metadata
    for i, m in enumerate(meta):
        names: list[tuple[str, str, str]] = []
        if m["field_type"] == "checkbox":
            names = [(m["field_name"], code, f"{m['field_name']}___{records._checkbox_suffix(code)}") for code, _ in records.choices_of(m)]
        elif m["field_type"] != "descriptive":
            names = [(m["field_name"], "", m["field_name"])]
        if i + 1 == len(meta) or meta[i + 1]["form_name"] != m["form_name"]:
            complete = f"{m['form_name']}_complete"  # REDCap lists each form's status field after its fields
            names.append((complete, "", complete))
        out += [{"original_field_name": o, "choice_value": c, "export_field_name": e} for o, c, e in names
                if not wanted or o == wanted]
    if wanted and not out:
        raise ApiError(f"The field '{wanted}' does not exist")
    return out


def _classic_error(design: Design, what: str) -> None:
    if not design.longitudinal:
        raise ApiError(f"You cannot export {what} for classic projects")


@handler("arm")
def arm_export(req: Request):
    req.need("api_export")
    design = _design(req)
    _classic_error(design, "arms")
    arms = req.list("arms")
    return [a for a in design.arms if not arms or str(a["arm_num"]) in arms]


@handler("event")
def event_export(req: Request):
    req.need("api_export")
    design = _design(req)
    _classic_error(design, "events")
    arms = req.list("arms")
    return [e for e in design.events if not arms or str(e["arm_num"]) in arms]


@handler("formEventMapping")
def form_event_mapping(req: Request):
    req.need("api_export")
    design = _design(req)
    _classic_error(design, "form-event mappings")
    arms = req.list("arms")
    return [m for m in design.mapping if not arms or str(m["arm_num"]) in arms]


def _need_longitudinal_design(req: Request, design: Design, db) -> None:
    req.need("design")
    if req.store.info(db, req.project_id).get("in_production"):
        raise ApiError("Events, arms and mappings cannot be changed through the API for projects in production")


@handler("arm", "import")
def arm_import(req: Request):
    rows = parse_rows(req)
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        _need_longitudinal_design(req, design, db)
        if not design.longitudinal:
            raise ApiError("Arms can only be imported into longitudinal projects")
        arms = [] if req.flag("override") else list(design.arms)
        for row in rows:
            try:
                num = int(row["arm_num"])
            except (KeyError, ValueError):
                raise ApiError("Each arm needs an integer arm_num") from None
            arms = [a for a in arms if a["arm_num"] != num] + [{"arm_num": num, "name": row.get("name") or f"Arm {num}"}]
        design.arms = sorted(arms, key=lambda a: a["arm_num"])
        req.store.save_design(db, req.project_id, design)
    return len(rows)


@handler("arm", "delete")
def arm_delete(req: Request):
    """Delete arms with their events and those events' data (REDCap: development projects only)."""
    nums = req.list("arms") or []
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        _need_longitudinal_design(req, design, db)
        if not design.longitudinal or not nums:
            raise ApiError("Give the arms to delete (arms[]) of a longitudinal project")
        if not all(str(n).strip().isdigit() for n in nums):
            raise ApiError("Arm numbers must be integers")
        wanted = {int(n) for n in nums}
        unknown = sorted(wanted - {a["arm_num"] for a in design.arms})
        if unknown:
            raise ApiError(f"The following arms do not exist: {', '.join(map(str, unknown))}")
        design.arms = [a for a in design.arms if a["arm_num"] not in wanted]
        _drop_events(req, db, design, [e["unique_event_name"] for e in design.events if e["arm_num"] in wanted])
        req.store.log(db, req.project_id, req.username, "manage", details=f"Delete arms {', '.join(map(str, sorted(wanted)))}")
    return str(len(wanted))


@handler("event", "delete")
def event_delete(req: Request):
    """Delete events and their data (REDCap: development projects only)."""
    names = req.list("events") or []
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        _need_longitudinal_design(req, design, db)
        if not design.longitudinal or not names:
            raise ApiError("Give the events to delete (events[]) of a longitudinal project")
        unknown = [n for n in names if n not in design.event_names()]
        if unknown:
            raise ApiError(f"The following events do not exist: {', '.join(unknown)}")
        _drop_events(req, db, design, names)
        req.store.log(db, req.project_id, req.username, "manage", details=f"Delete events {', '.join(names)}")
    return str(len(set(names)))


def _drop_events(req: Request, db, design: Design, gone: list[str]) -> None:
    """Remove events from the design with their mappings, repeating settings and data."""
    design.events = [e for e in design.events if e["unique_event_name"] not in gone]
    design.mapping = [m for m in design.mapping if m["unique_event_name"] not in gone]
    design.repeating = [r for r in design.repeating if r["event_name"] not in gone]
    req.store.save_design(db, req.project_id, design)
    if gone:
        marks = ",".join("?" * len(gone))
        for table in ("data", "files"):
            db.execute(f"DELETE FROM {table} WHERE project_id=? AND event IN ({marks})", (req.project_id, *gone))
        db.execute("DELETE FROM records WHERE project_id=? AND NOT EXISTS "
                   "(SELECT 1 FROM data d WHERE d.project_id=records.project_id AND d.record=records.record)", (req.project_id,))


@handler("event", "import")
def event_import(req: Request):
    rows = parse_rows(req)
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        _need_longitudinal_design(req, design, db)
        if not design.longitudinal:
            raise ApiError("Events can only be imported into longitudinal projects")
        events = [] if req.flag("override") else list(design.events)
        arms = {a["arm_num"] for a in design.arms}
        next_id = max([e.get("event_id", 0) for e in design.events] + [40]) + 1
        for row in rows:
            try:
                arm = int(row.get("arm_num", 1))
            except ValueError:
                raise ApiError("arm_num must be an integer") from None
            if arm not in arms:
                raise ApiError(f"Arm {arm} does not exist")
            name = (row.get("event_name") or "").strip()
            if not name:
                raise ApiError("Each event needs an event_name")
            new = admin.event_row(name, arm, row.get("unique_event_name") or None, next_id)
            next_id += 1
            events = [e for e in events if e["unique_event_name"] != new["unique_event_name"]] + [new]
        design.events = events
        names = set(design.event_names())
        design.mapping = [m for m in design.mapping if m["unique_event_name"] in names]
        req.store.save_design(db, req.project_id, design)
    return len(rows)


@handler("formEventMapping", "import")
def mapping_import(req: Request):
    rows = parse_rows(req)
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        _need_longitudinal_design(req, design, db)
        if not design.longitudinal:
            raise ApiError("Form-event mappings can only be imported into longitudinal projects")
        events = {e["unique_event_name"]: e["arm_num"] for e in design.events}
        forms = set(design.form_order())
        mapping = []
        for row in rows:
            event, form = row.get("unique_event_name"), row.get("form")
            if event not in events:
                raise ApiError(f"The event '{event}' does not exist")
            if form not in forms:
                raise ApiError(f"The form '{form}' does not exist")
            mapping.append({"arm_num": events[event], "unique_event_name": event, "form": form})
        arms_given = {m["arm_num"] for m in mapping}
        design.mapping = [m for m in design.mapping if m["arm_num"] not in arms_given] + mapping
        req.store.save_design(db, req.project_id, design)
    return len(rows)


@handler("repeatingFormsEvents")
def repeating_export(req: Request):
    req.need("api_export")
    design = _design(req)
    if not design.has_repeating:
        raise ApiError("There are no repeating instruments or events in this project")
    return design.repeating


@handler("repeatingFormsEvents", "import")
def repeating_import(req: Request):
    req.need("design")
    rows = parse_rows(req)
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        out = []
        for row in rows:
            event = (row.get("event_name") or "").strip()
            form = (row.get("form_name") or "").strip()
            if design.longitudinal and event not in design.event_names():
                raise ApiError(f"The event '{event}' does not exist")
            if not design.longitudinal and event:
                raise ApiError("event_name must be empty in classic projects")
            if form and form not in design.form_order():
                raise ApiError(f"The form '{form}' does not exist")
            if not form and not design.longitudinal:
                raise ApiError("form_name is required in classic projects")
            out.append({"event_name": event, "form_name": form, "custom_form_label": row.get("custom_form_label", "") or ""})
        design.repeating = out
        req.store.save_design(db, req.project_id, design)
        info = req.store.info(db, req.project_id)
        info["has_repeating_instruments_or_events"] = int(bool(out))
        req.store.save_info(db, req.project_id, info)
        req.store.log(db, req.project_id, req.username, "manage", details="Set up repeating instruments/events")
    return len(out)


@handler("generateNextRecordName")
def next_record_name(req: Request):
    req.need("api_export")
    return Response(str(records.next_record_name(req.store.connect(), req.project_id)), mimetype="text/plain")


def _date_param(req: Request, name: str) -> str | None:
    value = (req.params.get(name) or "").strip()
    if not value:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.strptime(value, fmt))
        except ValueError:
            continue
    raise ApiError(f"The {name} parameter must be a date in the form YYYY-MM-DD HH:MM:SS")


@handler("record")
def record_export(req: Request):
    req.need("api_export")
    opts = records.ExportOptions(
        records=req.list("records"), fields=req.list("fields"), forms=req.list("forms"), events=req.list("events"),
        raw_or_label=(req.params.get("rawOrLabel") or "raw").lower(), checkbox_label=req.flag("exportCheckboxLabel"),
        dags=req.flag("exportDataAccessGroups"), filter_logic=req.params.get("filterLogic") or "",
        date_begin=_date_param(req, "dateRangeBegin"), date_end=_date_param(req, "dateRangeEnd"),
    )
    with req.store.read() as db:
        design = req.store.design(db, req.project_id)
        header, rows = records.export_flat(req.store, db, req.project_id, design, opts)
    if (req.params.get("type") or "flat") == "eav":
        rows = records.flat_to_eav(design, header, rows)
        header = list(rows[0].keys()) if rows else ["record", "field_name", "value"]
    if req.fmt == "csv" and (req.params.get("rawOrLabelHeaders") or "raw") == "label":
        labels = {m["field_name"]: m["field_label"] for m in design.metadata}
        labels.update({"redcap_event_name": "Event Name", "redcap_repeat_instrument": "Repeat Instrument",
                       "redcap_repeat_instance": "Repeat Instance", "redcap_data_access_group": "Data Access Group"})
        for m in design.metadata:
            for code, label in records.choices_of(m) if m["field_type"] == "checkbox" else []:
                labels[f"{m['field_name']}___{records._checkbox_suffix(code)}"] = f"{m['field_label']} (choice={label})"
        for form in design.form_order():
            labels.setdefault(f"{form}_complete", "Complete?")
        renamed = [labels.get(h, h) for h in header]
        rows = [{renamed[i]: r.get(h, "") for i, h in enumerate(header)} for r in rows]
        header = renamed
    delim = req.params.get("csvDelimiter") or ","
    return respond(rows, req.fmt, header, "\t" if delim == "tab" else delim)


@handler("record", "import")
def record_import(req: Request):
    req.need("api_import")
    data = parse_data(req)
    if not isinstance(data, list):
        raise ApiError("The data being imported must be a list of records")
    overwrite = (req.params.get("overwriteBehavior") or "normal").lower()
    if overwrite not in ("normal", "overwrite"):
        raise ApiError("overwriteBehavior must be normal or overwrite")
    content = (req.params.get("returnContent") or "count").lower()
    if content not in ("count", "ids", "auto_ids", "nothing"):
        raise ApiError("returnContent must be count, ids, auto_ids or nothing")
    date_format = (req.params.get("dateFormat") or "YMD").upper()
    if date_format not in ("YMD", "MDY", "DMY"):
        raise ApiError("dateFormat must be YMD, MDY or DMY")
    opts = records.ImportOptions(overwrite=overwrite == "overwrite", force_auto_number=req.flag("forceAutoNumber"),
                                 date_format=date_format, return_content=content,
                                 can_create=_truthy(req.rights.get("record_create")))
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        if (req.params.get("type") or "flat") == "eav":
            data = records.eav_to_flat(data, design)
        result = records.import_rows(req.store, db, req.project_id, design, data, opts, req.username)
    if content == "count":
        return str(result) if (req.params.get("returnFormat") or req.fmt) == "csv" else {"count": result}
    if content == "nothing":
        return Response("", mimetype="text/plain")
    return result


@handler("record", "delete")
def record_delete(req: Request):
    req.need("api_import", "record_delete")
    recs = req.list("records") or []
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        count = records.delete_records(req.store, db, req.project_id, design, recs, req.username,
                                       req.params.get("instrument") or "", req.params.get("event") or "",
                                       str(_instance_param(req)) if req.params.get("repeat_instance") else "",
                                       str(req.params.get("arm") or ""))
    return str(count)


def _instance_param(req: Request) -> int:
    raw = str(req.params.get("repeat_instance") or "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ApiError(f"The repeat_instance '{raw}' is not a positive integer")
    return int(raw)


def _file_slot(req: Request, design: Design) -> tuple[str, str, str, int, str]:
    record, field_name = req.params.get("record"), req.params.get("field")
    meta = design.fields().get(field_name or "")
    if meta is None or meta["field_type"] != "file":
        raise ApiError(f"The field '{field_name}' is not a file upload field")
    event = req.params.get("event") or ""
    if design.longitudinal and event not in design.event_names():
        raise ApiError("The event is missing or not valid")
    instance = _instance_param(req)
    form = meta["form_name"]
    instrument = form if form in design.repeating_forms(event) else ""
    if not record:
        raise ApiError("The record is missing")
    return record, event, instrument, instance, field_name


@handler("file")
def file_export(req: Request):
    req.need("api_export")
    design = _design(req)
    record, event, instrument, instance, field_name = _file_slot(req, design)
    row = req.store.connect().execute(
        "SELECT name, mime, content FROM files WHERE project_id=? AND record=? AND event=? AND instrument=? AND instance=? AND field=?",
        (req.project_id, record, event, instrument, instance, field_name)).fetchone()
    if row is None:
        raise ApiError("There is no file to download for this record")
    resp = Response(bytes(row["content"]), mimetype=f'{row["mime"]}; name="{row["name"]}"')
    resp.headers["Content-Type"] = f'{row["mime"]}; name="{row["name"]}"'
    return resp


@handler("file", "import")
def file_import(req: Request):
    req.need("api_import")
    upload = request.files.get("file")
    if upload is None:
        raise ApiError("No valid file was uploaded")
    content = upload.read()
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        record, event, instrument, instance, field_name = _file_slot(req, design)
        if db.execute("SELECT 1 FROM records WHERE project_id=? AND record=?", (req.project_id, record)).fetchone() is None:
            raise ApiError(f"The record '{record}' does not exist")
        db.execute("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?)",
                   (req.project_id, record, event, instrument, instance, field_name, upload.filename or "file",
                    upload.mimetype or "application/octet-stream", content))
        db.execute("INSERT OR REPLACE INTO data VALUES (?,?,?,?,?,?,?)", (req.project_id, record, event, instrument, instance, field_name, upload.filename or "file"))
        db.execute("UPDATE records SET modified_at=? WHERE project_id=? AND record=?", (now(), req.project_id, record))
        req.store.log(db, req.project_id, req.username, "record_edit", record, f"Upload file for {field_name}")
    return Response("", mimetype="text/plain")


@handler("file", "delete")
def file_delete(req: Request):
    req.need("api_import")
    with req.store.write() as db:
        design = req.store.design(db, req.project_id)
        record, event, instrument, instance, field_name = _file_slot(req, design)
        key = (req.project_id, record, event, instrument, instance, field_name)
        if db.execute("DELETE FROM files WHERE project_id=? AND record=? AND event=? AND instrument=? AND instance=? AND field=?", key).rowcount == 0:
            raise ApiError("There is no file to delete for this record")
        db.execute("DELETE FROM data WHERE project_id=? AND record=? AND event=? AND instrument=? AND instance=? AND field=?", key)
        req.store.log(db, req.project_id, req.username, "record_edit", record, f"Delete file of {field_name}")
    return Response("", mimetype="text/plain")


LOG_TYPES = {"export": ("export",), "manage": ("manage",), "user": ("user",), "record": ("record_add", "record_edit", "record_delete"),
             "record_add": ("record_add",), "record_edit": ("record_edit",), "record_delete": ("record_delete",)}


@handler("log")
def log_export(req: Request):
    req.need("api_export")
    if not _truthy(req.rights.get("logging")):
        raise ApiError("You do not have Logging privileges", 403)
    sql = "SELECT ts, username, action, record, details FROM log WHERE project_id=?"
    params: list = [req.project_id]
    logtype = req.params.get("logtype") or ""
    if logtype:
        if logtype not in LOG_TYPES:
            raise ApiError(f"logtype must be one of {', '.join(LOG_TYPES)}")
        sql += f" AND action IN ({','.join('?' * len(LOG_TYPES[logtype]))})"
        params += list(LOG_TYPES[logtype])
    for name, col, op in (("user", "username", "="), ("record", "record", "=")):
        if req.params.get(name):
            sql += f" AND {col} {op} ?"
            params.append(req.params[name])
    for name, op in (("beginTime", ">="), ("endTime", "<=")):
        if req.params.get(name):
            sql += f" AND ts {op} ?"
            params.append(_date_param(req, name))
    sql += " ORDER BY log_id DESC"
    action_text = {"record_add": "Created Record", "record_edit": "Updated Record", "record_delete": "Deleted Record",
                   "manage": "Manage/Design ", "user": "User Rights", "export": "Data Export"}  # sic: REDCap's trailing space
    out = []
    for row in req.store.connect().execute(sql, params):
        action = action_text.get(row["action"], row["action"])
        if row["record"]:
            action = f"{action} {row['record']}"
        out.append({"timestamp": row["ts"][:16], "username": row["username"], "action": action, "details": row["details"]})
    return out


def _users(req: Request) -> list[dict]:
    db = req.store.connect()
    design = req.store.design(db, req.project_id)
    out = []
    for row in db.execute("SELECT r.username, r.rights, u.email, u.firstname, u.lastname FROM rights r LEFT JOIN users u ON u.username=r.username WHERE r.project_id=? ORDER BY r.username", (req.project_id,)):
        rights = json.loads(row["rights"])
        full = _truthy(rights.get("data_export"))
        entry = {"username": row["username"], "email": row["email"] or "", "firstname": row["firstname"] or "", "lastname": row["lastname"] or ""}
        for key, default in admin.NO_RIGHTS.items():
            entry[key] = rights.get(key, default)
            if key == "data_access_group":
                entry["data_access_group_id"] = ""  # DAGs are not implemented
        entry["forms"] = rights.get("forms") or {f: 1 for f in design.form_order()}
        entry["forms_export"] = rights.get("forms_export") or {f: (1 if full else 0) for f in design.form_order()}
        out.append(entry)
    return out


@handler("user")
def user_export(req: Request):
    req.need("api_export")
    users = _users(req)
    if req.fmt == "csv":
        flat = []
        for u in users:
            row = {k: v for k, v in u.items() if k not in ("forms", "forms_export")}
            row["forms"] = ",".join(f"{k}:{v}" for k, v in u["forms"].items())
            row["forms_export"] = ",".join(f"{k}:{v}" for k, v in u["forms_export"].items())
            flat.append(row)
        return flat
    return users


@handler("user", "delete")
def user_delete(req: Request):
    """Remove users from the project (their accounts stay, as in REDCap); answers with the count."""
    req.need("user_rights")
    names = req.list("users") or []
    if not names:
        raise ApiError("You did not provide any users to delete")
    with req.store.write() as db:
        missing = [u for u in names if db.execute("SELECT 1 FROM rights WHERE project_id=? AND username=?", (req.project_id, u)).fetchone() is None]
        if missing:
            raise ApiError(f"The following users are not in this project: {', '.join(missing)}")
        if req.username in names:
            raise ApiError("You cannot remove yourself from the project")
        for name in names:
            db.execute("DELETE FROM rights WHERE project_id=? AND username=?", (req.project_id, name))
            db.execute("DELETE FROM tokens WHERE project_id=? AND username=?", (req.project_id, name))
            req.store.log(db, req.project_id, req.username, "user", details=f"Delete user {name}")
    return str(len(names))


@handler("user", "import")
def user_import(req: Request):
    req.need("user_rights")
    rows = parse_rows(req)
    with req.store.write() as db:
        for row in rows:
            username = (row.get("username") or "").strip()
            if not username:
                raise ApiError("Each user needs a username")
            if db.execute("SELECT 1 FROM users WHERE username=?", (username,)).fetchone() is None:
                db.execute("INSERT INTO users(username, email, firstname, lastname) VALUES (?,?,?,?)",
                           (username, row.get("email", ""), row.get("firstname", ""), row.get("lastname", "")))
            cur = db.execute("SELECT rights FROM rights WHERE project_id=? AND username=?", (req.project_id, username)).fetchone()
            rights = json.loads(cur["rights"]) if cur else dict(admin.NO_RIGHTS)
            rights.update(_rights_from_row(row, username))
            db.execute("INSERT OR REPLACE INTO rights VALUES (?,?,?)", (req.project_id, username, json.dumps(rights)))
            req.store.log(db, req.project_id, req.username, "user", details=f"Edit user {username}")
    return len(rows)


def _rights_from_row(row: dict, who: str) -> dict:
    """The rights an imported user or role row sets: numbers, and forms as {form: level} or "form:level,..."."""
    rights: dict = {}
    for key, value in row.items():
        if value in ("", None):
            continue
        if key in admin.FULL_RIGHTS and isinstance(admin.FULL_RIGHTS[key], str):
            rights[key] = str(value)
        elif key in admin.FULL_RIGHTS and isinstance(admin.FULL_RIGHTS[key], int):
            if not str(value).strip().isdigit():
                raise ApiError(f"The value of '{key}' for '{who}' must be a number, not '{value}'")
            rights[key] = int(str(value).strip())
        elif key in ("forms", "forms_export"):
            pairs = value.items() if isinstance(value, dict) else (
                part.split(":", 1) if ":" in part else (part, "") for part in str(value).split(","))
            levels = {}
            for form, level in pairs:
                if not str(level).strip().isdigit():
                    raise ApiError(f"The '{key}' rights for '{who}' must be form:level pairs, not '{value}'")
                levels[str(form).strip()] = int(str(level).strip())
            rights[key] = levels
    return rights


@handler("userRole")
def role_export(req: Request):
    req.need("api_export")
    forms = _design(req).form_order()
    out = []
    for row in req.store.connect().execute("SELECT unique_role_name, role_label, rights FROM roles WHERE project_id=?", (req.project_id,)):
        rights = json.loads(row["rights"])
        # REDCap lists every right of a role, as strings, and a level for every form.
        entry = {"unique_role_name": row["unique_role_name"], "role_label": row["role_label"]}
        for key, default in admin.NO_RIGHTS.items():
            if key not in ("expiration", "data_access_group"):
                entry[key] = str(rights.get(key, default))
        for key in ("forms", "forms_export"):
            entry[key] = {f: int((rights.get(key) or {}).get(f, 0)) for f in forms}
        out.append(entry)
    return out


@handler("userRole", "import")
def role_import(req: Request):
    req.need("user_rights")
    rows = parse_rows(req)
    with req.store.write() as db:
        for i, row in enumerate(rows):
            label = (row.get("role_label") or "").strip()
            if not label:
                raise ApiError("Each role needs a role_label")
            unique = row.get("unique_role_name") or f"U-{req.project_id}{i}{int(time.time()) % 100000}"
            rights = _rights_from_row(row, label)
            db.execute("INSERT OR REPLACE INTO roles VALUES (?,?,?,?)", (req.project_id, unique, label, json.dumps(rights)))
    return len(rows)


@handler("dag")
def dag_export(req: Request):
    req.need("api_export")
    rows = req.store.connect().execute("SELECT name, unique_group_name, group_id FROM dags WHERE project_id=? ORDER BY group_id", (req.project_id,))
    return [{"data_access_group_name": r["name"], "unique_group_name": r["unique_group_name"], "data_access_group_id": r["group_id"]} for r in rows]


# ---------------------------------------------------------------------------------------------
# The WSGI application
# ---------------------------------------------------------------------------------------------
def collect_params(form) -> dict[str, Any]:
    """Form fields with PHP-style arrays (``records[0]=a&records[1]=b``) folded into lists."""
    params: dict[str, Any] = {}
    arrays: dict[str, list[tuple[int, str]]] = {}
    for key in form.keys():
        values = form.getlist(key)
        m = re.match(r"^([A-Za-z_]+)\[(\d*)\]$", key)
        if m:
            idx = int(m.group(2)) if m.group(2) else len(arrays.get(m.group(1), []))
            for v in values:
                arrays.setdefault(m.group(1), []).append((idx, v))
        else:
            params[key] = values if len(values) > 1 else values[0]
    for name, items in arrays.items():
        params[name] = [v for _, v in sorted(items, key=lambda x: x[0])]
    return params


def authenticate(store: Store, token: str) -> tuple[str, int | None, dict, bool]:
    token = (token or "").strip()
    if not token:
        raise ApiError("You do not have permissions to use the API", 403)
    if not re.fullmatch(r"[0-9A-Fa-f]{32}|[0-9A-Fa-f]{64}", token):
        raise ApiError("The token you provided is not valid", 403)
    db = store.connect()
    row = db.execute("SELECT username, project_id FROM tokens WHERE token_hash=?", (admin.hash_token(token),)).fetchone()
    if row is None:
        raise ApiError("You do not have permissions to use the API", 403)
    user = db.execute("SELECT super_user FROM users WHERE username=?", (row["username"],)).fetchone()
    super_user = bool(user and user["super_user"])
    if row["project_id"] is None:
        return row["username"], None, {}, super_user
    rights_row = db.execute("SELECT rights FROM rights WHERE project_id=? AND username=?", (row["project_id"], row["username"])).fetchone()
    if rights_row is None:
        raise ApiError("You do not have permissions to use the API", 403)
    return row["username"], row["project_id"], json.loads(rights_row["rights"]), super_user


def create_app(store: Store) -> Flask:
    app = Flask("fiona_redcap.embedded_redcap")
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024 * 1024
    app.config["MAX_FORM_MEMORY_SIZE"] = 256 * 1024 * 1024  # Flask 3.1 defaults to 500 kB per field; REDCap takes large imports

    @app.get("/health")
    def health():
        store.connect().execute("SELECT 1").fetchone()
        return jsonify(status="ok", redcap_version=REDCAP_VERSION, fiona_version=fiona_version)

    @app.route("/api/", methods=["GET", "POST"])
    def api():
        started = time.monotonic()
        params = collect_params(request.form) if request.method == "POST" else {}
        fmt = (params.get("returnFormat") or params.get("format") or "xml").lower()
        content = params.get("content", "")
        action = (params.get("action") or "").lower()
        if not action:
            action = "import" if "data" in params else "export"
        status = 200
        try:
            if request.method != "POST":
                raise ApiError("The REDCap API accepts only POST requests", 400)
            username, project_id, rights, super_user = authenticate(store, params.get("token", ""))
            fn = HANDLERS.get((content, action))
            if fn is None:
                if not content:
                    raise ApiError("The parameter 'content' is missing")
                raise ApiError(f"The value of the parameter 'content' ('{content}') or 'action' ('{action}') is not valid")
            if project_id is None and (content, action) != ("project", "import") and content != "version":
                raise ApiError("A super API token can only create projects", 403)
            req = Request(store, params, username, project_id, rights, super_user)
            data = fn(req)
            out_fmt = req.fmt if action == "export" else (params.get("returnFormat") or req.fmt)
            return respond(data, out_fmt)
        except ApiError as exc:
            status = exc.status
            return error_response(exc.message, exc.status, fmt)
        except sqlite3.OperationalError as exc:
            status = 503
            log.error("redcap.db_error", extra={"event": "redcap.db_error", "fields": {"error": type(exc).__name__}})
            return error_response("The database is busy; please try again", 503, fmt)
        finally:
            quiet = action == "export" and status < 400  # polls are frequent; writes and errors always show
            logs.log_event(log, "redcap.api", logging.DEBUG if quiet else logging.INFO, content=content, action=action,
                           status=status, ms=int((time.monotonic() - started) * 1000))

    return app
