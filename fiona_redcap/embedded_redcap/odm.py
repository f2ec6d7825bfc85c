"""CDISC ODM 1.3.1 with REDCap's extensions: the "project XML" REDCap admins move projects with.

:func:`write_project` produces what ``content=project_xml`` exports (metadata, events,
repeating settings and optionally records); :func:`read_project` reads such a file for
``content=project`` creation. Also :func:`parse_simple_xml` for REDCap's flat XML imports.
Written from the ODM 1.3.1 specification and REDCap's documented "project XML" feature.

``python -m fiona_redcap.embedded_redcap.odm instruments/`` regenerates the ``project.xml``
of every control project from its ``data_dictionary.csv`` and ``project.json``.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr, escape

from .store import Design
from .validation import choices_of

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
RC_NS = "https://projectredcap.org"
NS = {"odm": ODM_NS, "redcap": RC_NS}
CLASSIC_EVENT = "event_1_arm_1"

FIELD_TYPE_TO_ODM = {"notes": "textarea", "dropdown": "select"}
FIELD_TYPE_FROM_ODM = {v: k for k, v in FIELD_TYPE_TO_ODM.items()}
DATA_TYPES = {"integer": "integer", "number": "float", "date_ymd": "date", "date_mdy": "date", "date_dmy": "date",
              "datetime_ymd": "partialDatetime", "datetime_mdy": "partialDatetime", "datetime_dmy": "partialDatetime",
              "datetime_seconds_ymd": "datetime", "datetime_seconds_mdy": "datetime", "datetime_seconds_dmy": "datetime"}
GLOBALS = [("RecordAutonumberingEnabled", "record_autonumbering_enabled"), ("CustomRecordLabel", "custom_record_label"),
           ("SecondaryUniqueField", "secondary_unique_field"), ("SchedulingEnabled", "scheduling_enabled"),
           ("SurveysEnabled", "surveys_enabled"), ("Purpose", "purpose"), ("PurposeOther", "purpose_other"),
           ("ProjectNotes", "project_notes"), ("MissingDataCodes", "missing_data_codes")]


def _oid(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", text.replace(" ", "")) or "Project"


def _a(**attrs) -> str:
    return "".join(f" {k.replace('__', ':')}={quoteattr(str(v))}" for k, v in attrs.items() if v is not None)


def write_project(info: dict, design: Design, rows: list[dict] | None = None, created: str = "2000-01-01T00:00:00") -> str:
    """The project XML of a project (deterministic for a given input)."""
    title = info.get("project_title", "Project")
    oid = _oid(title)
    mdv = f"Metadata.{oid}"
    out = ['<?xml version="1.0" encoding="UTF-8" ?>']
    out.append(
        f'<ODM xmlns="{ODM_NS}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:redcap="{RC_NS}" xsi:schemaLocation="{ODM_NS} schema/odm/ODM1-3-1.xsd" ODMVersion="1.3.1" '
        f'FileOID="000-00-0000" FileType="Snapshot" Description={quoteattr(title)} AsOfDateTime="{created}" '
        f'CreationDateTime="{created}" SourceSystem="REDCap" SourceSystemVersion="14.5.0">'
    )
    out.append(f"<Study OID=\"Project.{oid}\">")
    out.append("<GlobalVariables>")
    out.append(f"\t<StudyName>{escape(title)}</StudyName>")
    out.append(f"\t<StudyDescription>This file contains the metadata, events, and data for REDCap project {escape(json.dumps(title))}.</StudyDescription>")
    out.append(f"\t<ProtocolName>{escape(title)}</ProtocolName>")
    for tag, key in GLOBALS:
        out.append(f"\t<redcap:{tag}>{escape(str(info.get(key, '') if info.get(key) is not None else ''))}</redcap:{tag}>")
    if design.repeating:
        out.append("\t<redcap:RepeatingInstrumentsAndEvents>")
        forms = [r for r in design.repeating if r.get("form_name")]
        events = [r for r in design.repeating if not r.get("form_name")]
        if events:
            out.append("\t\t<redcap:RepeatingEvents>")
            for r in events:
                out.append(f"\t\t\t<redcap:RepeatingEvent{_a(redcap__UniqueEventName=r['event_name'])}/>")
            out.append("\t\t</redcap:RepeatingEvents>")
        if forms:
            out.append("\t\t<redcap:RepeatingInstruments>")
            for r in forms:
                out.append(f"\t\t\t<redcap:RepeatingInstrument{_a(redcap__UniqueEventName=r.get('event_name') or CLASSIC_EVENT, redcap__RepeatInstrument=r['form_name'], redcap__CustomLabel=r.get('custom_form_label', ''))}/>")
            out.append("\t\t</redcap:RepeatingInstruments>")
        out.append("\t</redcap:RepeatingInstrumentsAndEvents>")
    out.append("</GlobalVariables>")
    out.append(f"<MetaDataVersion{_a(OID=mdv, Name=title, redcap__RecordIdField=design.record_id_field)}>")
    labels = {i["instrument_name"]: i["instrument_label"] for i in design.instruments}
    forms = design.form_order()
    if design.longitudinal:
        out.append("\t<Protocol>")
        for n, e in enumerate(design.events, 1):
            out.append(f"\t\t<StudyEventRef{_a(StudyEventOID='Event.' + e['unique_event_name'], OrderNumber=n, Mandatory='No')}/>")
        out.append("\t</Protocol>")
        arm_names = {a["arm_num"]: a["name"] for a in design.arms}
        for e in design.events:
            repeating = "Yes" if design.repeating_event(e["unique_event_name"]) else "No"
            out.append(
                f"\t<StudyEventDef{_a(OID='Event.' + e['unique_event_name'], Name=e['event_name'], Type='Common', Repeating=repeating, redcap__EventName=e['event_name'], redcap__CustomEventLabel=e.get('custom_event_label', ''), redcap__UniqueEventName=e['unique_event_name'], redcap__ArmNum=e['arm_num'], redcap__ArmName=arm_names.get(e['arm_num'], ''), redcap__DayOffset=e.get('days_offset', 1), redcap__OffsetMin=e.get('offset_min', 0), redcap__OffsetMax=e.get('offset_max', 0))}>"
            )
            for n, form in enumerate(design.forms_on_event(e["unique_event_name"]), 1):
                out.append(f"\t\t<FormRef{_a(FormOID='Form.' + form, OrderNumber=n, Mandatory='No', redcap__FormName=form)}/>")
            out.append("\t</StudyEventDef>")
    for form in forms:
        repeating = "Yes" if any(r.get("form_name") == form for r in design.repeating) else "No"
        out.append(f"\t<FormDef{_a(OID='Form.' + form, Name=labels.get(form, form), Repeating=repeating, redcap__FormName=form)}>")
        out.append(f"\t\t<ItemGroupRef{_a(ItemGroupOID=form + '.fields', Mandatory='No')}/>")
        out.append("\t</FormDef>")
    for form in forms:
        out.append(f"\t<ItemGroupDef{_a(OID=form + '.fields', Name=labels.get(form, form), Repeating='No')}>")
        for m in design.metadata:
            if m["form_name"] != form:
                continue
            for item_oid in _item_oids(m):
                out.append(f"\t\t<ItemRef{_a(ItemOID=item_oid, Mandatory='Yes' if m.get('required_field') == 'y' else 'No', redcap__Variable=m['field_name'])}/>")
        out.append(f"\t\t<ItemRef{_a(ItemOID=form + '_complete', Mandatory='No', redcap__Variable=form + '_complete')}/>")
        out.append("\t</ItemGroupDef>")
    codelists = []
    for m in design.metadata:
        codelists += _item_defs(m, out)
    for form in forms:
        name = f"{form}_complete"
        out.append(f"\t<ItemDef{_a(OID=name, Name=name, DataType='text', Length=1, redcap__Variable=name, redcap__FieldType='select', redcap__SectionHeader='Form Status')}>")
        out.append("\t\t<Question><TranslatedText>Complete?</TranslatedText></Question>")
        out.append(f"\t\t<CodeListRef CodeListOID=\"{name}.choices\"/>")
        out.append("\t</ItemDef>")
        codelists.append((f"{name}.choices", name, [("0", "Incomplete"), ("1", "Unverified"), ("2", "Complete")], "text"))
    for cl_oid, var, choices, dtype in codelists:
        out.append(f"\t<CodeList{_a(OID=cl_oid, Name=var, DataType=dtype, redcap__Variable=var)}>")
        for code, label in choices:
            out.append(f"\t\t<CodeListItem CodedValue={quoteattr(code)}><Decode><TranslatedText>{escape(label)}</TranslatedText></Decode></CodeListItem>")
        out.append("\t</CodeList>")
    out.append("</MetaDataVersion>")
    out.append("</Study>")
    if rows:
        out.append(f'<ClinicalData StudyOID="Project.{oid}" MetaDataVersionOID="{mdv}">')
        out += _clinical_data(design, rows)
        out.append("</ClinicalData>")
    out.append("</ODM>")
    return "\n".join(out) + "\n"


def _item_oids(m: dict) -> list[str]:
    if m["field_type"] == "checkbox":
        return [f"{m['field_name']}___{code.lower().replace('-', '_').replace('.', '_')}" for code, _ in choices_of(m)]
    return [m["field_name"]]


def _item_defs(m: dict, out: list[str]) -> list[tuple]:
    codelists = []
    ftype = m["field_type"]
    vtype = m.get("text_validation_type_or_show_slider_number", "")
    common = dict(
        redcap__Variable=m["field_name"],
        redcap__FieldType=FIELD_TYPE_TO_ODM.get(ftype, ftype),
        redcap__TextValidationType=vtype or None,
        redcap__FieldNote=m.get("field_note") or None,
        redcap__SectionHeader=m.get("section_header") or None,
        redcap__BranchingLogic=m.get("branching_logic") or None,
        redcap__Identifier=m.get("identifier") or None,
        redcap__RequiredField=m.get("required_field") or None,
        redcap__CustomAlignment=m.get("custom_alignment") or None,
        redcap__QuestionNumber=m.get("question_number") or None,
        redcap__MatrixGroupName=m.get("matrix_group_name") or None,
        redcap__MatrixRanking=m.get("matrix_ranking") or None,
        redcap__FieldAnnotation=m.get("field_annotation") or None,
    )
    if ftype == "calc":
        common["redcap__Calculation"] = m.get("select_choices_or_calculations", "")
    if ftype == "slider":
        common["redcap__SliderLabels"] = m.get("select_choices_or_calculations", "") or None
    question = f"\t\t<Question><TranslatedText>{escape(m.get('field_label', ''))}</TranslatedText></Question>"
    if ftype == "checkbox":
        choices = m.get("select_choices_or_calculations", "")
        for item_oid, (code, label) in zip(_item_oids(m), choices_of(m)):
            out.append(f"\t<ItemDef{_a(OID=item_oid, Name=item_oid, DataType='boolean', Length=1, **common, redcap__CheckboxChoices=choices)}>")
            out.append(question)
            out.append(f"\t\t<CodeListRef CodeListOID=\"{item_oid}.choices\"/>")
            out.append("\t</ItemDef>")
            codelists.append((f"{item_oid}.choices", item_oid, [("1", "Checked"), ("0", "Unchecked")], "boolean"))
        return codelists
    dtype = DATA_TYPES.get(vtype, "text")
    out.append(f"\t<ItemDef{_a(OID=m['field_name'], Name=m['field_name'], DataType=dtype, Length=999, **common)}>")
    out.append(question)
    choices = choices_of(m)
    if choices:
        out.append(f"\t\t<CodeListRef CodeListOID=\"{m['field_name']}.choices\"/>")
        codelists.append((f"{m['field_name']}.choices", m["field_name"], choices, "text"))
    for comparator, key in (("GE", "text_validation_min"), ("LE", "text_validation_max")):
        if m.get(key):
            out.append(f'\t\t<RangeCheck Comparator="{comparator}" SoftHard="Soft"><CheckValue>{escape(m[key])}</CheckValue>'
                       f"<ErrorMessage><TranslatedText>The value you provided is outside the suggested range.</TranslatedText></ErrorMessage></RangeCheck>")
    out.append("\t</ItemDef>")
    return codelists


def _clinical_data(design: Design, rows: list[dict]) -> list[str]:
    rid = design.record_id_field
    form_of = {}
    for m in design.metadata:
        for item in _item_oids(m):
            form_of[item] = m["form_name"]
    for form in design.form_order():
        form_of[f"{form}_complete"] = form
    out: list[str] = []
    by_record: dict[str, list[dict]] = {}
    for row in rows:
        by_record.setdefault(str(row[rid]), []).append(row)
    for record, recs in by_record.items():
        out.append(f"\t<SubjectData{_a(SubjectKey=record, redcap__RecordIdField=rid)}>")
        by_event: dict[str, list[dict]] = {}
        for row in recs:
            by_event.setdefault(row.get("redcap_event_name") or CLASSIC_EVENT, []).append(row)
        for event, erows in by_event.items():
            out.append(f"\t\t<StudyEventData{_a(StudyEventOID='Event.' + event, StudyEventRepeatKey=1, redcap__UniqueEventName=event)}>")
            for row in erows:
                instrument = row.get("redcap_repeat_instrument") or ""
                instance = row.get("redcap_repeat_instance") or 1
                per_form: dict[str, list[tuple[str, str]]] = {}
                for key, value in row.items():
                    if key.startswith("redcap_") or value in ("", None):
                        continue
                    form = form_of.get(key)
                    if form is None:
                        continue
                    if "___" in key and value == "0":
                        continue
                    per_form.setdefault(form, []).append((key, str(value)))
                for form, items in per_form.items():
                    if instrument and form != instrument:
                        continue
                    out.append(f"\t\t\t<FormData{_a(FormOID='Form.' + form, FormRepeatKey=instance)}>")
                    out.append(f"\t\t\t\t<ItemGroupData{_a(ItemGroupOID=form + '.fields', ItemGroupRepeatKey=1)}>")
                    for key, value in items:
                        out.append(f"\t\t\t\t\t<ItemData{_a(ItemOID=key, Value=value)}/>")
                    out.append("\t\t\t\t</ItemGroupData>")
                    out.append("\t\t\t</FormData>")
            out.append("\t\t</StudyEventData>")
        out.append("\t</SubjectData>")
    return out


@dataclass
class ParsedProject:
    info: dict
    design: Design
    records: list[dict] = field(default_factory=list)


def _rc(el, name: str, default: str = "") -> str:
    return el.get(f"{{{RC_NS}}}{name}", default)


def read_project(text: str) -> ParsedProject:
    """Read a REDCap project XML: settings, dictionary, events, repeating setup and records."""
    try:
        root = ET.fromstring(text.encode("utf-8") if isinstance(text, str) else text)
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML ({exc})") from None
    if root.tag != f"{{{ODM_NS}}}ODM":
        raise ValueError("the root element is not a CDISC ODM 1.3 <ODM>")
    study = root.find("odm:Study", NS)
    if study is None:
        raise ValueError("no <Study> element")
    gv = study.find("odm:GlobalVariables", NS)
    info: dict = {}
    if gv is not None:
        name = gv.findtext("odm:StudyName", default="", namespaces=NS)
        if name:
            info["project_title"] = name
        for tag, key in GLOBALS:
            el = gv.find(f"redcap:{tag}", NS)
            if el is not None and (el.text or "") != "":
                info[key] = int(el.text) if (el.text or "").isdigit() and key != "missing_data_codes" else el.text
    mdv = study.find("odm:MetaDataVersion", NS)
    if mdv is None:
        raise ValueError("no <MetaDataVersion> element")
    item_defs = {el.get("OID"): el for el in mdv.findall("odm:ItemDef", NS)}
    code_lists = {el.get("OID"): el for el in mdv.findall("odm:CodeList", NS)}
    group_defs = {el.get("OID"): el for el in mdv.findall("odm:ItemGroupDef", NS)}
    design = Design()
    metadata: list[dict] = []
    seen: set[str] = set()
    for form_def in mdv.findall("odm:FormDef", NS):
        form = _rc(form_def, "FormName") or form_def.get("OID", "").removeprefix("Form.")
        design.instruments.append({"instrument_name": form, "instrument_label": form_def.get("Name", form)})
        for ref in form_def.findall("odm:ItemGroupRef", NS):
            group = group_defs.get(ref.get("ItemGroupOID"))
            if group is None:
                raise ValueError(f"ItemGroupRef {ref.get('ItemGroupOID')} has no ItemGroupDef")
            for item_ref in group.findall("odm:ItemRef", NS):
                item = item_defs.get(item_ref.get("ItemOID"))
                if item is None:
                    raise ValueError(f"ItemRef {item_ref.get('ItemOID')} has no ItemDef")
                var = _rc(item, "Variable") or item.get("Name")
                if var == f"{form}_complete" or var in seen:
                    continue
                seen.add(var)
                metadata.append(_field_from_item(item, var, form, code_lists, item_ref))
    design.metadata = metadata
    arms: dict[int, str] = {}
    for ev in mdv.findall("odm:StudyEventDef", NS):
        unique = _rc(ev, "UniqueEventName")
        arm = int(_rc(ev, "ArmNum", "1") or 1)
        arms.setdefault(arm, _rc(ev, "ArmName") or f"Arm {arm}")
        design.events.append({"event_name": _rc(ev, "EventName") or ev.get("Name", unique), "arm_num": arm, "unique_event_name": unique,
                              "custom_event_label": _rc(ev, "CustomEventLabel"), "event_id": 40 + len(design.events) + 1,
                              "days_offset": int(_rc(ev, "DayOffset", "1") or 1), "offset_min": int(_rc(ev, "OffsetMin", "0") or 0),
                              "offset_max": int(_rc(ev, "OffsetMax", "0") or 0)})
        for fref in ev.findall("odm:FormRef", NS):
            design.mapping.append({"arm_num": arm, "unique_event_name": unique, "form": _rc(fref, "FormName") or fref.get("FormOID", "").removeprefix("Form.")})
    design.arms = [{"arm_num": k, "name": v} for k, v in sorted(arms.items())]
    if gv is not None:
        for rep in gv.iter(f"{{{RC_NS}}}RepeatingInstrument"):
            event = _rc(rep, "UniqueEventName")
            design.repeating.append({"event_name": event if design.longitudinal else "", "form_name": _rc(rep, "RepeatInstrument"), "custom_form_label": _rc(rep, "CustomLabel")})
        for rep in gv.iter(f"{{{RC_NS}}}RepeatingEvent"):
            design.repeating.append({"event_name": _rc(rep, "UniqueEventName"), "form_name": "", "custom_form_label": ""})
    info["is_longitudinal"] = int(design.longitudinal)
    return ParsedProject(info=info, design=design, records=_read_clinical(root, design))


def _field_from_item(item, var: str, form: str, code_lists: dict, item_ref) -> dict:
    ftype = _rc(item, "FieldType", "text")
    ftype = FIELD_TYPE_FROM_ODM.get(ftype, ftype)
    choices = ""
    if ftype == "checkbox":
        choices = _rc(item, "CheckboxChoices")
    elif ftype == "calc":
        choices = _rc(item, "Calculation")
    elif ftype == "slider":
        choices = _rc(item, "SliderLabels")
    else:
        ref = item.find("odm:CodeListRef", NS)
        if ref is not None and ftype in ("select", "dropdown", "radio"):
            cl = code_lists.get(ref.get("CodeListOID"))
            if cl is not None:
                parts = []
                for cli in cl.findall("odm:CodeListItem", NS):
                    label = cli.findtext("odm:Decode/odm:TranslatedText", default="", namespaces=NS)
                    parts.append(f"{cli.get('CodedValue')}, {label}")
                choices = " | ".join(parts)
    ranges = {rc.get("Comparator"): rc.findtext("odm:CheckValue", default="", namespaces=NS) for rc in item.findall("odm:RangeCheck", NS)}
    return {
        "field_name": var,
        "form_name": form,
        "section_header": _rc(item, "SectionHeader"),
        "field_type": ftype,
        "field_label": item.findtext("odm:Question/odm:TranslatedText", default="", namespaces=NS),
        "select_choices_or_calculations": choices,
        "field_note": _rc(item, "FieldNote"),
        "text_validation_type_or_show_slider_number": _rc(item, "TextValidationType"),
        "text_validation_min": ranges.get("GE", ""),
        "text_validation_max": ranges.get("LE", ""),
        "identifier": _rc(item, "Identifier"),
        "branching_logic": _rc(item, "BranchingLogic"),
        "required_field": _rc(item, "RequiredField") or ("y" if item_ref.get("Mandatory") == "Yes" else ""),
        "custom_alignment": _rc(item, "CustomAlignment"),
        "question_number": _rc(item, "QuestionNumber"),
        "matrix_group_name": _rc(item, "MatrixGroupName"),
        "matrix_ranking": _rc(item, "MatrixRanking"),
        "field_annotation": _rc(item, "FieldAnnotation"),
    }


def _read_clinical(root, design: Design) -> list[dict]:
    rows: list[dict] = []
    rid = design.record_id_field
    for cd in root.findall("odm:ClinicalData", NS):
        for subject in cd.findall("odm:SubjectData", NS):
            record = subject.get("SubjectKey")
            containers = subject.findall("odm:StudyEventData", NS) or [subject]
            for sed in containers:
                event = _rc(sed, "UniqueEventName") if design.longitudinal else ""
                for fd in sed.findall("odm:FormData", NS):
                    form = fd.get("FormOID", "").removeprefix("Form.")
                    instance = fd.get("FormRepeatKey", "1")
                    row: dict = {rid: record}
                    if design.longitudinal:
                        row["redcap_event_name"] = event
                    if form in design.repeating_forms(event):
                        row["redcap_repeat_instrument"] = form
                        row["redcap_repeat_instance"] = instance
                    for item in fd.iter(f"{{{ODM_NS}}}ItemData"):
                        if item.get("ItemOID") != rid:
                            row[item.get("ItemOID")] = item.get("Value", "")
                    rows.append(row)
    return rows


def parse_simple_xml(text: str) -> list[dict]:
    """REDCap's flat XML import: ``<records><item><field>value</field>...</item></records>``."""
    try:
        root = ET.fromstring(text.encode("utf-8") if isinstance(text, str) else text)
    except ET.ParseError as exc:
        from .records import ApiError

        raise ApiError(f"The data being imported is not valid XML ({exc})") from None
    return [{child.tag: (child.text or "") for child in item} for item in root]


# -- generation of the control projects' XML --------------------------------------------------
def design_from_dictionary(dictionary_csv: Path, project_json: Path) -> tuple[dict, Design]:
    from .api import normalize_dictionary

    with open(dictionary_csv, newline="", encoding="utf-8") as fh:
        metadata = normalize_dictionary(list(csv.DictReader(fh)))
    spec = json.loads(project_json.read_text(encoding="utf-8"))
    design = Design(metadata=metadata)
    labels = spec.get("instrument_labels", {})
    design.instruments = [{"instrument_name": f, "instrument_label": labels.get(f, f.replace("_", " ").title())} for f in design.form_order()]
    design.repeating = [{"event_name": "", "form_name": f, "custom_form_label": ""} for f in spec.get("repeating_instruments", [])]
    info = {"project_title": spec["title"], "purpose": 4, "purpose_other": "", "project_notes": spec.get("purpose", ""),
            "record_autonumbering_enabled": int(bool(spec.get("record_autonumbering"))), "custom_record_label": "",
            "secondary_unique_field": "", "scheduling_enabled": 0, "surveys_enabled": 0, "missing_data_codes": ""}
    return info, design


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "instruments")
    for folder in sorted(p for p in root.iterdir() if (p / "data_dictionary.csv").exists()):
        info, design = design_from_dictionary(folder / "data_dictionary.csv", folder / "project.json")
        (folder / "project.xml").write_text(write_project(info, design), encoding="utf-8")
        print(f"wrote {folder / 'project.xml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
