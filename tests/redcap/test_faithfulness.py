"""Details of REDCap's behaviour that FIONA's pollers and scripts depend on, checked through PyCap over HTTP.

Where a test asserts REDCap's documented behaviour, the docstring says so ("REDCap API: ...").
"""

import csv
import datetime as dt
import json
import time
from pathlib import Path

import requests
from redcap import Project

from fiona_redcap.embedded_redcap.api import normalize_dictionary

from .test_conformance import classic, post  # noqa: F401  (fixture)

INSTRUMENTS = Path(__file__).resolve().parents[2] / "instruments"


def keys(rows):
    return [(r["record_id"], r["redcap_repeat_instrument"], r["redcap_repeat_instance"]) for r in rows]


def test_record_id_only_export_lists_every_row(classic):
    """REDCap API: exporting only the record ID field gives one row per record, event and repeat instance."""
    classic.import_records([
        {"record_id": "1", "name": "A", "age": "30"},
        {"record_id": "1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "1", "scan_images": "3"},
        {"record_id": "2", "name": "B"},
    ])
    assert keys(classic.export_records(fields=["record_id"])) == [("1", "", ""), ("1", "scan", 1), ("2", "", "")]
    # filter logic on a non-repeating field also holds on the record's repeating rows
    assert keys(classic.export_records(fields=["record_id"], filter_logic="[age] > 20")) == [("1", "", ""), ("1", "scan", 1)]


def test_an_import_that_changes_nothing_is_not_a_modification(classic):
    """REDCap: dateRangeBegin follows the logging; an import with unchanged values logs nothing,
    so FIONA's pollers do not see their own no-op write-backs as new work."""
    classic.import_records([{"record_id": "1", "name": "A", "tools___ct": "1"}])
    time.sleep(1.1)
    mark = dt.datetime.now()
    time.sleep(1.1)
    log_before = post_log(classic)
    assert classic.import_records([{"record_id": "1", "name": "A", "tools___ct": "1", "tools___mr": "0"}]) == {"count": 1}
    assert classic.export_records(date_begin=mark) == []
    assert post_log(classic) == log_before
    classic.import_records([{"record_id": "1", "tools___mr": "1"}])
    assert {r["record_id"] for r in classic.export_records(date_begin=mark)} == {"1"}
    newest = post_log(classic)[0]
    assert newest["action"] == "Updated Record 1" and newest["details"] == "tools(mr) = checked"


def post_log(project):
    resp = requests.post(project.url, data={"token": project.token, "content": "log", "format": "json", "logtype": "record"}, timeout=30)
    resp.raise_for_status()
    return resp.json()


def test_survey_pseudo_fields_are_ignored_on_import(classic):
    """REDCap API: redcap_survey_identifier and <form>_timestamp are pseudo-fields, ignored on import."""
    assert classic.import_records([{"record_id": "7", "redcap_survey_identifier": "", "demo_timestamp": "2024-01-01 10:00", "name": "S"}]) == {"count": 1}
    assert classic.export_records(records=["7"], fields=["name"])[0]["name"] == "S"
    # any other unknown column is still an error
    resp = post(classic, token=classic.token, content="record", format="json", data=json.dumps([{"record_id": "7", "demo_timestamps": "x"}]))
    assert resp.status_code == 400 and '"7","demo_timestamps","x","The field does not exist in the project"' in resp.json()["error"]


def test_delete_counts_each_record_once(classic):
    """REDCap API: record delete answers with the number of records deleted."""
    classic.import_records([{"record_id": "8", "name": "x"}, {"record_id": "9", "name": "y"}])
    resp = post(classic, token=classic.token, content="record", action="delete", **{"records[0]": "8", "records[1]": "8", "records[2]": "9"})
    assert resp.status_code == 200 and resp.text == "2"
    assert classic.export_records(records=["8", "9"]) == []


def test_control_projects_import_from_project_xml_and_round_trip(live_redcap):
    """REDCap: "create project from XML" (content=project with odm) builds the project the XML describes;
    content=project_xml exports XML that creates the same project again. The committed instruments/*/project.xml
    are what a real REDCap admin uploads, so they must carry the whole data dictionary and repeating settings."""
    for folder in sorted(p for p in INSTRUMENTS.iterdir() if (p / "project.xml").exists()):
        spec = json.loads((folder / "project.json").read_text())
        with open(folder / "data_dictionary.csv", newline="") as fh:
            dictionary = normalize_dictionary(list(csv.DictReader(fh)))
        first = create_from_xml(live_redcap, (folder / "project.xml").read_text())
        assert first.export_metadata() == dictionary, folder.name
        xml = post(live_redcap, token=first.token, content="project_xml", returnMetadataOnly="true").text
        second = create_from_xml(live_redcap, xml)
        assert second.export_metadata() == dictionary, folder.name
        assert repeating(second) == repeating(first) == sorted(spec.get("repeating_instruments", [])), folder.name
        info1, info2 = first.export_project_info(), second.export_project_info()
        for key in ("project_title", "record_autonumbering_enabled", "is_longitudinal", "has_repeating_instruments_or_events", "purpose"):
            assert info1[key] == info2[key], (folder.name, key)
        assert info1["project_title"] == spec.get("title", info1["project_title"])


def repeating(project) -> list[str]:
    resp = post(project, token=project.token, content="repeatingFormsEvents", format="json")
    return sorted(r["form_name"] for r in resp.json()) if resp.status_code == 200 else []


def create_from_xml(server, xml: str) -> Project:
    resp = post(server, token=server.super_token, content="project", format="json",
                data=json.dumps([{"project_title": "from xml", "purpose": 0}]), odm=xml)
    assert resp.status_code == 200, resp.text
    return Project(server.url, resp.text, timeout=30)


def test_pathological_filter_logic_is_a_clear_error(classic):
    """filterLogic that nests too deeply is refused with a 400 naming filterLogic, never a server error."""
    for logic in ("(" * 500 + "1" + ")" * 500, "not " * 3000 + "[age] = 1", "-" * 3000 + "1"):
        resp = post(classic, token=classic.token, content="record", format="json", filterLogic=logic)
        assert resp.status_code == 400 and "filterLogic" in resp.json()["error"]
    classic.import_records([{"record_id": "1", "name": "n"}, {"record_id": "2", "age": "4"}])
    rows = classic.export_records(fields=["record_id"], filter_logic="(" * 20 + "[age] = ''" + ")" * 20)
    assert [r["record_id"] for r in rows] == ["1"]


def test_malformed_imports_are_clear_400_errors(live_redcap, classic):
    """Bad input gets a clear REDCap-style error (HTTP 400 with {"error": ...}), never a server error,
    and writes nothing."""
    cases = [
        ("record", {"data": json.dumps([{"record_id": "1", "name": {"a": 1}}])}, "not a list or object"),
        ("record", {"data": "record_id,name\n1,a,b\n", "format": "csv", "returnFormat": "json"}, "more values than the header"),
        ("repeatingFormsEvents", {"data": json.dumps({"form_name": "scan"})}, "list"),
        ("user", {"data": json.dumps({"username": "x"})}, "list"),
        ("user", {"data": json.dumps([{"username": "bob", "design": "yes"}])}, "'design' for 'bob' must be a number"),
        ("user", {"data": json.dumps([{"username": "bob", "forms": "demo"}])}, "form:level"),
        ("userRole", {"data": json.dumps([1, 2])}, "list"),
        ("metadata", {"data": "[1]"}, "list"),
        ("project_settings", {"data": json.dumps([1])}, "object"),
    ]
    for content, params, message in cases:
        resp = post(live_redcap, token=classic.token, content=content, **{"format": "json", **params})
        assert resp.status_code == 400 and message in resp.json()["error"], (content, resp.text)
    resp = post(live_redcap, token=classic.token, content="record", action="delete", format="json", instrument="scan",
                repeat_instance="x", **{"records[0]": "1"})
    assert resp.status_code == 400 and "repeat_instance" in resp.json()["error"]
    assert classic.export_records() == []
    assert "bob" not in {u["username"] for u in classic.export_users()}


def test_repeating_event_new_instances_start_at_one(live_redcap):
    """REDCap API: in a repeating event, redcap_repeat_instrument is empty and "new" allocates the next instance
    of the whole event; a new record's first "new" is instance 1. Data only in another event adds no empty rows."""
    from .test_conformance import DICTIONARY, full

    token = live_redcap.new_project("Repeating event", longitudinal=True, dictionary=full(DICTIONARY),
                                    events=[("Visit", 1), ("Base", 1)])
    project = Project(live_redcap.url, token, timeout=30)
    project.import_instrument_event_mappings([
        {"arm_num": 1, "unique_event_name": "visit_arm_1", "form": "demo"},
        {"arm_num": 1, "unique_event_name": "visit_arm_1", "form": "scan"},
        {"arm_num": 1, "unique_event_name": "base_arm_1", "form": "demo"},
    ])
    project.import_repeating_instruments_events([{"event_name": "visit_arm_1", "form_name": "", "custom_form_label": ""}])
    project.import_records([
        {"record_id": "1", "redcap_event_name": "visit_arm_1", "redcap_repeat_instrument": "", "redcap_repeat_instance": "new", "name": "v1", "scan_images": "3"},
        {"record_id": "1", "redcap_event_name": "visit_arm_1", "redcap_repeat_instrument": "", "redcap_repeat_instance": "new", "name": "v2"},
        {"record_id": "2", "redcap_event_name": "base_arm_1", "name": "b"},
    ])
    rows = project.export_records(fields=["record_id", "name", "scan_images"])
    assert [(r["record_id"], r["redcap_event_name"], r["redcap_repeat_instance"], r["name"], r["scan_images"]) for r in rows] == [
        ("1", "visit_arm_1", 1, "v1", "3"),
        ("1", "visit_arm_1", 2, "v2", ""),
        ("2", "base_arm_1", "", "b", ""),
    ]
    # PyCap's delete_records example: one instance of a repeating event
    assert project.delete_records(records=["1"], event="visit_arm_1", repeat_instance=2) == 1
    assert [(r["redcap_repeat_instance"], r["name"]) for r in project.export_records(records=["1"], fields=["name"])] == [(1, "v1")]


def test_field_names_list_each_forms_status_field(classic):
    """REDCap API (PyCap's export_field_names example): exportFieldNames lists checkbox choices as field___code
    and each form's <form>_complete field."""
    names = [n["export_field_name"] for n in classic.export_field_names()]
    assert names == ["record_id", "name", "dob", "age", "email", "sex", "tools___mr", "tools___ct", "tools___us", "demo_complete",
                     "scan_date", "scan_images", "report", "scan_complete"]
    assert classic.export_field_names(field="scan_complete") == [
        {"original_field_name": "scan_complete", "choice_value": "", "export_field_name": "scan_complete"}]


def test_labels_name_the_event_and_the_arm_only_with_several_arms(live_redcap):
    """REDCap API (PyCap's export_records example): rawOrLabel=label gives the event's name ("Event 1") in a
    one-arm project; with several arms REDCap adds the arm ("Visit (Arm 2: Second)")."""
    from .test_conformance import DICTIONARY, full

    one = Project(live_redcap.url, live_redcap.new_project("One arm", longitudinal=True, dictionary=full(DICTIONARY),
                                                            events=[("Event 1", 1)]), timeout=30)
    one.import_instrument_event_mappings([{"arm_num": 1, "unique_event_name": "event_1_arm_1", "form": "demo"}])
    one.import_records([{"record_id": "1", "redcap_event_name": "event_1_arm_1", "sex": "2", "tools___ct": "1"}])
    assert one.export_records(format_type="csv", fields=["sex", "tools"], raw_or_label="label") == (
        "record_id,redcap_event_name,sex,tools___mr,tools___ct,tools___us\n1,Event 1,Male,Unchecked,Checked,Unchecked\n")

    two = Project(live_redcap.url, live_redcap.new_project("Two arms", longitudinal=True, dictionary=full(DICTIONARY),
                                                            events=[("Visit", 1), ("Visit", 2)]), timeout=30)
    two.import_arms([{"arm_num": 1, "name": "First"}, {"arm_num": 2, "name": "Second"}], override=1)
    two.import_events([{"event_name": "Visit", "arm_num": 1}, {"event_name": "Visit", "arm_num": 2}], override=1)
    two.import_instrument_event_mappings([{"arm_num": 2, "unique_event_name": "visit_arm_2", "form": "demo"}])
    two.import_records([{"record_id": "1", "redcap_event_name": "visit_arm_2", "sex": "1"}])
    (row,) = two.export_records(fields=["sex"], raw_or_label="label")
    assert row["redcap_event_name"] == "Visit (Arm 2: Second)" and row["sex"] == "Female"


def test_user_export_fields_and_user_delete(live_redcap, classic):
    """REDCap API (PyCap's export_users/delete_users examples): users carry data_access_group and
    data_access_group_id next to their rights; content=user action=delete removes users from the project,
    answers with the count, and their API token stops working."""
    pid = live_redcap.project_id(classic.token)
    carol_token = live_redcap.user("carol", pid, api_export=1)
    carol = next(u for u in classic.export_users() if u["username"] == "carol")
    assert list(carol)[:7] == ["username", "email", "firstname", "lastname", "expiration", "data_access_group", "data_access_group_id"]
    assert carol["api_export"] == 1 and carol["design"] == 0
    assert Project(live_redcap.url, carol_token, timeout=30).export_records() == []
    assert classic.delete_users(["carol"], return_format_type="json") == 1
    assert "carol" not in {u["username"] for u in classic.export_users()}
    assert post(live_redcap, token=carol_token, content="record", format="json").status_code == 403
    resp = post(live_redcap, token=classic.token, content="user", action="delete", format="json", **{"users[0]": "nobody"})
    assert resp.status_code == 400 and "nobody" in resp.json()["error"]


def test_data_of_a_removed_repeating_form_does_not_show_as_empty_rows(classic):
    """After the dictionary drops a repeating form, its instances no longer appear in exports (no empty rows,
    no repeat columns: the project has no repeating instruments any more)."""
    classic.import_records([{"record_id": "1", "name": "A"},
                            {"record_id": "1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "1", "scan_images": "3"}])
    classic.import_metadata([m for m in classic.export_metadata() if m["form_name"] != "scan"])
    rows = classic.export_records()
    assert [(r["record_id"], r["name"]) for r in rows] == [("1", "A")] and "redcap_repeat_instance" not in rows[0]


def test_delete_records_in_one_arm(live_redcap):
    """REDCap API: with `arm`, records are deleted only in that arm; without it, from every arm."""
    from .test_conformance import DICTIONARY, full

    project = Project(live_redcap.url, live_redcap.new_project("Arms", longitudinal=True, dictionary=full(DICTIONARY),
                                                                events=[("Visit", 1), ("Visit", 2)]), timeout=30)
    project.import_arms([{"arm_num": 1, "name": "A"}, {"arm_num": 2, "name": "B"}], override=1)
    project.import_events([{"event_name": "Visit", "arm_num": 1}, {"event_name": "Visit", "arm_num": 2}], override=1)
    project.import_instrument_event_mappings([{"arm_num": 1, "unique_event_name": "visit_arm_1", "form": "demo"},
                                              {"arm_num": 2, "unique_event_name": "visit_arm_2", "form": "demo"}])
    project.import_records([{"record_id": "1", "redcap_event_name": e, "name": e} for e in ("visit_arm_1", "visit_arm_2")]
                           + [{"record_id": "2", "redcap_event_name": "visit_arm_2", "name": "only 2"}])
    assert project.delete_records(["1", "2"], arm="2") == 2
    assert [(r["record_id"], r["redcap_event_name"]) for r in project.export_records(fields=["name"])] == [("1", "visit_arm_1")]
    assert "2" not in {r["record_id"] for r in project.export_records()}
    resp = post(live_redcap, token=project.token, content="record", action="delete", format="json", arm="9", **{"records[0]": "1"})
    assert resp.status_code == 400 and "arm" in resp.json()["error"]


def test_delete_arms_and_events_with_their_data(live_redcap):
    """REDCap API (PyCap's delete_arms/delete_events examples): deleting an arm deletes its events; deleting an
    event deletes its mappings and data; the answer is the number deleted."""
    from .test_conformance import DICTIONARY, full

    project = Project(live_redcap.url, live_redcap.new_project("Delete design", longitudinal=True, dictionary=full(DICTIONARY),
                                                                events=[("Visit", 1), ("Extra", 1)]), timeout=30)
    assert project.import_arms([{"arm_num": 2, "name": "Arm 2"}]) == 1
    assert project.import_events([{"event_name": "Event 2", "arm_num": 2}]) == 1
    project.import_instrument_event_mappings([{"arm_num": 1, "unique_event_name": e, "form": "demo"} for e in ("visit_arm_1", "extra_arm_1")]
                                             + [{"arm_num": 2, "unique_event_name": "event_2_arm_2", "form": "demo"}])
    project.import_records([{"record_id": "1", "redcap_event_name": "visit_arm_1", "name": "v"},
                            {"record_id": "1", "redcap_event_name": "extra_arm_1", "name": "x"},
                            {"record_id": "2", "redcap_event_name": "event_2_arm_2", "name": "y"}])
    assert project.delete_arms([2], return_format_type="json") == 1
    assert [a["arm_num"] for a in project.export_arms()] == [1]
    assert "event_2_arm_2" not in {e["unique_event_name"] for e in project.export_events()}
    assert project.delete_events(["extra_arm_1"], return_format_type="json") == 1
    assert [e["unique_event_name"] for e in project.export_events()] == ["visit_arm_1"]
    assert [m["unique_event_name"] for m in project.export_instrument_event_mappings()] == ["visit_arm_1"]
    assert [(r["record_id"], r["redcap_event_name"], r["name"]) for r in project.export_records(fields=["name"])] == [("1", "visit_arm_1", "v")]
    resp = post(live_redcap, token=project.token, content="event", action="delete", format="json", **{"events[0]": "nope_arm_1"})
    assert resp.status_code == 400 and "nope_arm_1" in resp.json()["error"]


def test_design_changes_are_logged_as_redcap_writes_them(classic):
    """REDCap API (PyCap's export_logging example): design changes appear with the action 'Manage/Design '
    (with REDCap's trailing space)."""
    classic.import_repeating_instruments_events([{"event_name": "", "form_name": "scan", "custom_form_label": "[scan_date]"}])
    newest = classic.export_logging(log_type="manage")[0]
    assert newest["action"] == "Manage/Design " and newest["username"] == "admin"
