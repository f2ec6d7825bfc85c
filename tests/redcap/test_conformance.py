"""Conformance of the embedded REDCap server, driven through PyCap (and raw HTTP for errors).

Where a test asserts REDCap's documented behaviour, the docstring says so ("REDCap API: ...").
"""

import concurrent.futures
import datetime as dt
import json
import time

import pytest
import requests
from redcap import Project, RedcapError

DICTIONARY = [
    {"field_name": "record_id", "form_name": "demo", "field_type": "text", "field_label": "ID"},
    {"field_name": "name", "form_name": "demo", "field_type": "text", "field_label": "Name", "identifier": "y"},
    {"field_name": "dob", "form_name": "demo", "field_type": "text", "field_label": "DOB", "text_validation_type_or_show_slider_number": "date_ymd"},
    {"field_name": "age", "form_name": "demo", "field_type": "text", "field_label": "Age", "text_validation_type_or_show_slider_number": "integer", "text_validation_min": "0", "text_validation_max": "120"},
    {"field_name": "email", "form_name": "demo", "field_type": "text", "field_label": "E-mail", "text_validation_type_or_show_slider_number": "email"},
    {"field_name": "sex", "form_name": "demo", "field_type": "radio", "field_label": "Sex", "select_choices_or_calculations": "1, Female | 2, Male"},
    {"field_name": "tools", "form_name": "demo", "field_type": "checkbox", "field_label": "Tools", "select_choices_or_calculations": "mr, MR | ct, CT | us, US"},
    {"field_name": "scan_date", "form_name": "scan", "field_type": "text", "field_label": "Scan date", "text_validation_type_or_show_slider_number": "date_ymd"},
    {"field_name": "scan_images", "form_name": "scan", "field_type": "text", "field_label": "Images", "text_validation_type_or_show_slider_number": "integer"},
    {"field_name": "report", "form_name": "scan", "field_type": "file", "field_label": "Report"},
]


def full(d):
    keys = ["field_name", "form_name", "section_header", "field_type", "field_label", "select_choices_or_calculations", "field_note",
            "text_validation_type_or_show_slider_number", "text_validation_min", "text_validation_max", "identifier", "branching_logic",
            "required_field", "custom_alignment", "question_number", "matrix_group_name", "matrix_ranking", "field_annotation"]
    return [{k: row.get(k, "") for k in keys} for row in d]


@pytest.fixture
def classic(live_redcap):
    token = live_redcap.new_project("Classic", dictionary=full(DICTIONARY), repeating=[("scan", "")])
    return Project(live_redcap.url, token, timeout=30)


@pytest.fixture
def longitudinal(live_redcap):
    token = live_redcap.new_project("Longitudinal", longitudinal=True, dictionary=full(DICTIONARY),
                                    events=[("Baseline", 1), ("Follow up", 1)], repeating=[("scan", "follow_up_arm_1")])
    project = Project(live_redcap.url, token, timeout=30)
    project.import_instrument_event_mappings([
        {"arm_num": 1, "unique_event_name": "baseline_arm_1", "form": "demo"},
        {"arm_num": 1, "unique_event_name": "follow_up_arm_1", "form": "scan"},
    ])
    return project


def post(server, **data):
    return requests.post(server.url, data=data, timeout=30)


def test_version_and_project_info(classic):
    """REDCap API: content=version returns the version as plain text; content=project the project's attributes."""
    assert str(classic.export_version()) == "14.5.0"
    info = classic.export_project_info()
    assert info["project_title"] == "Classic" and info["is_longitudinal"] == 0 and info["has_repeating_instruments_or_events"] == 1
    assert classic.is_longitudinal is False  # PyCap: formEventMapping answers an error for classic projects


def test_metadata_round_trip_and_field_names(classic):
    meta = classic.export_metadata()
    assert [m["field_name"] for m in meta] == [d["field_name"] for d in DICTIONARY]
    assert classic.export_metadata(fields=["age"])[0]["text_validation_max"] == "120"
    names = classic.export_field_names()
    assert {"original_field_name": "tools", "choice_value": "ct", "export_field_name": "tools___ct"} in names
    assert [i["instrument_name"] for i in classic.export_instruments()] == ["demo", "scan"]


def test_invalid_dictionary_is_rejected(classic):
    bad = full([{"field_name": "record_id", "form_name": "f", "field_type": "text", "field_label": "ID"},
                {"field_name": "Bad Name", "form_name": "f", "field_type": "radio", "field_label": "X"}])
    with pytest.raises(RedcapError) as err:
        classic.import_metadata(bad)
    assert "variable names may only contain" in str(err.value) and "needs choices" in str(err.value)
    assert len(classic.export_metadata()) == len(DICTIONARY)  # nothing changed


def test_flat_export_with_repeating_instruments_and_checkboxes(classic):
    classic.import_records([
        {"record_id": "1", "name": "Ann", "dob": "1970-01-31", "sex": "1", "tools___mr": "1", "tools___us": "1", "demo_complete": "2"},
        {"record_id": "1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "1", "scan_date": "2020-01-01", "scan_images": "10"},
        {"record_id": "1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "2", "scan_date": "2020-02-01", "scan_images": "20"},
    ])
    rows = classic.export_records()
    assert [(r["redcap_repeat_instrument"], r["redcap_repeat_instance"]) for r in rows] == [("", ""), ("scan", 1), ("scan", 2)]
    base = rows[0]
    assert base["tools___mr"] == "1" and base["tools___ct"] == "0" and base["demo_complete"] == "2" and base["scan_date"] == ""
    assert rows[2]["scan_images"] == "20" and rows[2]["name"] == ""
    assert list(base)[:3] == ["record_id", "redcap_repeat_instrument", "redcap_repeat_instance"]
    labels = classic.export_records(raw_or_label="label")
    assert labels[0]["sex"] == "Female" and labels[0]["tools___mr"] == "Checked" and labels[1]["redcap_repeat_instrument"] == "Scan"
    csv_text = classic.export_records(format_type="csv")
    assert csv_text.splitlines()[0].startswith("record_id,redcap_repeat_instrument,redcap_repeat_instance,name,dob")
    eav = classic.export_records(record_type="eav")
    assert {"record": "1", "field_name": "tools", "value": "us", "redcap_repeat_instrument": "", "redcap_repeat_instance": ""} in eav
    xml = classic.export_records(format_type="xml")
    assert "<records>" in xml and "<name><![CDATA[Ann]]></name>" in xml


def test_import_semantics_overwrite_and_return_content(classic):
    assert classic.import_records([{"record_id": "7", "name": "X", "age": "30"}]) == {"count": 1}
    assert classic.import_records([{"record_id": "7", "age": ""}], return_content="ids") == ["7"]
    assert classic.export_records(records=["7"])[0]["age"] == "30"  # normal: blanks do not overwrite
    classic.import_records([{"record_id": "7", "age": ""}], overwrite="overwrite")
    assert classic.export_records(records=["7"])[0]["age"] == ""  # overwrite: blanks erase
    classic.import_records([{"record_id": "7", "dob": "31/01/1970"}], date_format="DMY")
    assert classic.export_records(records=["7"])[0]["dob"] == "1970-01-31"
    csv_data = "record_id,name\n8,Bea\n"
    assert classic.import_records(csv_data, import_format="csv") == {"count": 1}


def test_validation_errors_reject_the_whole_import(classic):
    """REDCap API: a record import with invalid values is rejected as a whole, listing record, field, value and reason."""
    with pytest.raises(RedcapError) as err:
        classic.import_records([
            {"record_id": "20", "name": "ok"},
            {"record_id": "21", "age": "200", "email": "not-an-email", "sex": "3", "dob": "2020-13-01", "nope": "1"},
        ])
    text = str(err.value)
    for part in ('"21","age","200"', '"21","email"', '"21","sex","3"', '"21","dob"', '"21","nope"', "does not exist"):
        assert part in text
    assert classic.export_records(records=["20", "21"]) == []


def test_repeat_instance_new_is_allocated_atomically(live_redcap, classic):
    classic.import_records([{"record_id": "30", "name": "P"}])

    def add(i):
        p = Project(live_redcap.url, classic.token, timeout=30)
        return p.import_records([{"record_id": "30", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "new", "scan_images": str(i)}])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(r == {"count": 1} for r in pool.map(add, range(40)))
    rows = [r for r in classic.export_records(records=["30"]) if r["redcap_repeat_instrument"] == "scan"]
    assert sorted(r["redcap_repeat_instance"] for r in rows) == list(range(1, 41))
    assert sorted(int(r["scan_images"]) for r in rows) == list(range(40))


def test_force_auto_number_under_concurrency(live_redcap, classic):
    def add(i):
        p = Project(live_redcap.url, classic.token, timeout=30)
        return p.import_records([{"record_id": "x", "name": f"n{i}"}], force_auto_number=True, return_content="auto_ids")

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(add, range(30)))
    new_ids = [r[0].split(",")[0] for r in results]
    assert len(set(new_ids)) == 30
    assert classic.generate_next_record_name() == str(max(int(i) for i in new_ids) + 1)


def test_filter_logic(classic):
    classic.import_records([
        {"record_id": "40", "age": "30", "sex": "1", "tools___ct": "1", "dob": "1990-05-01"},
        {"record_id": "41", "age": "70", "sex": "2", "dob": "1950-01-01"},
        {"record_id": "42", "age": "", "sex": "1"},
        {"record_id": "41", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "1", "scan_images": "5"},
        {"record_id": "41", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "2", "scan_images": "50"},
    ])

    def ids(logic):
        return sorted({r["record_id"] for r in classic.export_records(records=["40", "41", "42"], filter_logic=logic)})

    assert ids("[age] > 40") == ["41"]
    assert ids("[age] >= 30 and [sex] = '1'") == ["40"]
    assert ids('[age] = ""') == ["42"]
    assert ids("[tools(ct)] = '1'") == ["40"]
    assert ids("not ([sex] = 1) or [age] < 35") == ["40", "41"]
    assert ids('datediff([dob], "today", "y") > 50') == ["41"]
    assert ids('[dob] < "1980-01-01"') == ["41"]
    rows = classic.export_records(records=["41"], filter_logic="[scan_images] > 10")
    assert [(r["redcap_repeat_instrument"], r["redcap_repeat_instance"]) for r in rows] == [("scan", 2)]
    for bad in ("[nofield] = 1", "[age] = ", "system('x')", "[age] ~ 3", ""):
        if bad == "":
            continue
        with pytest.raises(RedcapError, match="filterLogic"):
            classic.export_records(filter_logic=bad)


def test_date_range_uses_last_modification(classic):
    """REDCap API: dateRangeBegin/End select records created or modified in the range."""
    classic.import_records([{"record_id": "50", "name": "old"}])
    time.sleep(1.1)
    mark = dt.datetime.now()
    time.sleep(1.1)
    classic.import_records([{"record_id": "51", "name": "new"}])
    got = {r["record_id"] for r in classic.export_records(date_begin=mark)}
    assert "51" in got and "50" not in got
    classic.import_records([{"record_id": "50", "name": "changed"}])
    assert "50" in {r["record_id"] for r in classic.export_records(date_begin=mark)}
    assert "51" not in {r["record_id"] for r in classic.export_records(date_end=mark)}


def test_delete_records_and_instances(classic):
    classic.import_records([
        {"record_id": "60", "name": "a"}, {"record_id": "61", "name": "b"},
        {"record_id": "60", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "1", "scan_images": "1"},
        {"record_id": "60", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "2", "scan_images": "2"},
    ])
    assert classic.delete_records(["60"], instrument="scan", repeat_instance=1) == 1
    rows = classic.export_records(records=["60"])
    assert [r["redcap_repeat_instance"] for r in rows] == ["", 2]
    assert classic.delete_records(["61"]) == 1
    assert classic.export_records(records=["61"]) == []
    with pytest.raises(RedcapError, match="do not exist"):
        classic.delete_records(["nope"])


def test_longitudinal_project(longitudinal):
    """PyCap: is_longitudinal is True when formEventMapping answers; events carry unique names."""
    assert longitudinal.is_longitudinal
    assert [e["unique_event_name"] for e in longitudinal.export_events()] == ["baseline_arm_1", "follow_up_arm_1"]
    assert longitudinal.export_arms() == [{"arm_num": 1, "name": "Arm 1"}]
    longitudinal.import_records([
        {"record_id": "P1", "redcap_event_name": "baseline_arm_1", "name": "Ann"},
        {"record_id": "P1", "redcap_event_name": "follow_up_arm_1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "new", "scan_images": "3"},
        {"record_id": "P1", "redcap_event_name": "follow_up_arm_1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "new", "scan_images": "4"},
    ])
    rows = longitudinal.export_records()
    assert [(r["redcap_event_name"], r["redcap_repeat_instance"]) for r in rows] == [("baseline_arm_1", ""), ("follow_up_arm_1", 1), ("follow_up_arm_1", 2)]
    assert [r["record_id"] for r in longitudinal.export_records(events=["follow_up_arm_1"])] == ["P1", "P1"]
    assert longitudinal.export_records(filter_logic="[baseline_arm_1][name] = 'Ann'")
    with pytest.raises(RedcapError, match="not part of"):
        longitudinal.import_records([{"record_id": "P1", "redcap_event_name": "baseline_arm_1", "scan_images": "1"}])
    with pytest.raises(RedcapError, match="event name is not valid"):
        longitudinal.import_records([{"record_id": "P1", "redcap_event_name": "nope", "name": "x"}])


def test_files(classic, tmp_path):
    classic.import_records([{"record_id": "70"}, {"record_id": "70", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "1", "scan_images": "1"}])
    path = tmp_path / "report.txt"
    path.write_text("hello")
    with open(path, "rb") as fh:
        classic.import_file("70", "report", "report.txt", fh, repeat_instance=1)
    content, headers = classic.export_file("70", "report", repeat_instance=1)
    assert content == b"hello" and headers["name"] == "report.txt"
    classic.delete_file("70", "report")  # PyCap sends no repeat_instance: REDCap defaults to instance 1
    with pytest.raises(RedcapError):
        classic.export_file("70", "report", repeat_instance=1)


def test_log_records_every_write(classic):
    classic.import_records([{"record_id": "80", "name": "z"}])
    classic.import_records([{"record_id": "80", "age": "5"}])
    entries = classic.export_logging(record="80")
    assert [e["action"] for e in entries] == ["Updated Record 80", "Created Record 80"]
    assert "age = '5'" in entries[0]["details"] and entries[0]["username"] == "admin"


def test_users_and_rights(live_redcap, classic):
    pid = live_redcap.project_id(classic.token)
    reader = Project(live_redcap.url, live_redcap.user("reader", pid, api_export=1), timeout=30)
    users = {u["username"]: u for u in classic.export_users()}
    assert users["reader"]["api_export"] == 1 and users["reader"]["api_import"] == 0 and users["admin"]["design"] == 1
    assert reader.export_records() is not None
    resp = post(live_redcap, token=reader.token, content="record", format="json", data=json.dumps([{"record_id": "90"}]))
    assert resp.status_code == 403 and "API Import/Update" in resp.json()["error"]
    resp = post(live_redcap, token=reader.token, content="metadata", format="json", data=json.dumps(full(DICTIONARY)))
    assert resp.status_code == 403
    resp = post(live_redcap, token=reader.token, content="record", action="delete", format="json", **{"records[0]": "1"})
    assert resp.status_code == 403
    writer = live_redcap.user("writer", pid, api_export=1, api_import=1)
    resp = post(live_redcap, token=writer, content="record", format="json", returnFormat="json", data=json.dumps([{"record_id": "91"}]))
    assert resp.status_code == 400 and "permission to create" in resp.json()["error"]


@pytest.mark.parametrize("token, status", [("", 403), ("0" * 32, 403), ("not-a-token", 403)])
def test_bad_tokens_are_403(live_redcap, token, status):
    resp = post(live_redcap, token=token, content="record", format="json")
    assert resp.status_code == status and "error" in resp.json()


def test_error_formats(live_redcap, classic):
    xml = post(live_redcap, token=classic.token, content="nonsense")
    assert xml.status_code == 400 and xml.text.startswith("<?xml") and "<error>" in xml.text
    js = post(live_redcap, token=classic.token, content="record", format="json", filterLogic="[x] =")
    assert js.status_code == 400 and "filterLogic" in js.json()["error"]


def test_project_creation_with_super_token_and_settings(live_redcap):
    """REDCap API: content=project with a super token creates a project and returns its API token."""
    resp = post(live_redcap, token=live_redcap.super_token, content="project", format="json",
                data=json.dumps([{"project_title": "Made by API", "purpose": 0, "is_longitudinal": 1}]))
    assert resp.status_code == 200 and len(resp.text) == 32
    project = Project(live_redcap.url, resp.text, timeout=30)
    assert project.export_project_info()["is_longitudinal"] == 1
    settings = post(live_redcap, token=resp.text, content="project_settings", format="json", data=json.dumps({"project_notes": "n"}))
    assert settings.text == "1" and project.export_project_info()["project_notes"] == "n"
    # a project token cannot create projects, a super token cannot read records
    assert post(live_redcap, token=resp.text, content="project", format="json", data=json.dumps([{"project_title": "x"}])).status_code == 403
    assert post(live_redcap, token=live_redcap.super_token, content="record", format="json").status_code == 403


def test_project_xml_round_trip(live_redcap, longitudinal):
    longitudinal.import_records([{"record_id": "R1", "redcap_event_name": "baseline_arm_1", "name": "Ann", "tools___ct": "1"},
                                 {"record_id": "R1", "redcap_event_name": "follow_up_arm_1", "redcap_repeat_instrument": "scan", "redcap_repeat_instance": "2", "scan_images": "9"}])
    xml = post(live_redcap, token=longitudinal.token, content="project_xml", returnMetadataOnly="false").text
    assert 'xmlns:redcap="https://projectredcap.org"' in xml and "redcap:RepeatingInstrument" in xml
    token = post(live_redcap, token=live_redcap.super_token, content="project", format="json",
                 data=json.dumps([{"project_title": "Copy", "purpose": 0}]), odm=xml).text
    copy = Project(live_redcap.url, token, timeout=30)
    assert copy.export_metadata() == longitudinal.export_metadata()
    def without_ids(events):  # REDCap assigns new event ids in the new project
        return [{k: v for k, v in e.items() if k != "event_id"} for e in events]

    assert without_ids(copy.export_events()) == without_ids(longitudinal.export_events())
    assert copy.export_repeating_instruments_events() == longitudinal.export_repeating_instruments_events()
    assert copy.export_records() == longitudinal.export_records()


def test_user_roles_users_import_and_dags(live_redcap, classic):
    """REDCap API: userRole import/export, user import (rights by field), dag export (empty without DAGs)."""
    assert classic.import_user_roles([{"role_label": "Readers", "api_export": 1, "data_export": 1}]) == 1
    roles = classic.export_user_roles()
    # REDCap lists every right of a role as a string, and a level per form (PyCap's export_user_roles example)
    assert [r["role_label"] for r in roles] == ["Readers"] and roles[0]["api_export"] == "1" and roles[0]["unique_role_name"]
    assert roles[0]["design"] == "0" and roles[0]["forms"] == {"demo": 0, "scan": 0}
    assert classic.import_users([{"username": "dave", "api_export": 1, "record_create": 0}]) == 1
    dave = next(u for u in classic.export_users() if u["username"] == "dave")
    assert dave["api_export"] == 1 and dave["record_create"] == 0 and dave["design"] == 0
    assert classic.export_dags() == []
    csv_users = classic.export_users(format_type="csv")
    assert csv_users.splitlines()[0].startswith("username,email,firstname,lastname")


def test_arms_events_and_mapping_import(live_redcap):
    token = live_redcap.new_project("Events", longitudinal=True, dictionary=full(DICTIONARY))
    p = Project(live_redcap.url, token, timeout=30)
    assert p.import_arms([{"arm_num": 1, "name": "Main"}, {"arm_num": 2, "name": "Extension"}], override=1) == 2
    assert p.import_events([{"event_name": "Screening", "arm_num": 1}, {"event_name": "Visit 1", "arm_num": 2}], override=1) == 2
    assert [e["unique_event_name"] for e in p.export_events()] == ["screening_arm_1", "visit_1_arm_2"]
    assert p.import_instrument_event_mappings([{"arm_num": 1, "unique_event_name": "screening_arm_1", "form": "demo"}]) == 1
    assert p.export_instrument_event_mappings() == [{"arm_num": 1, "unique_event_name": "screening_arm_1", "form": "demo"}]
    with pytest.raises(RedcapError, match="does not exist"):
        p.import_instrument_event_mappings([{"arm_num": 1, "unique_event_name": "nope_arm_1", "form": "demo"}])
    p.import_records([{"record_id": "E1", "redcap_event_name": "screening_arm_1", "name": "x"}])
    with pytest.raises(RedcapError, match="not part of"):
        p.import_records([{"record_id": "E1", "redcap_event_name": "visit_1_arm_2", "name": "y"}])  # demo is not on that event


def test_xml_and_csv_record_formats_and_labels_in_headers(classic):
    xml = '<?xml version="1.0" encoding="UTF-8" ?><records><item><record_id>X1</record_id><name>Xavier</name></item></records>'
    assert classic.import_records(xml, import_format="xml") == {"count": 1}
    assert classic.export_records(records=["X1"])[0]["name"] == "Xavier"
    csv_labels = classic.export_records(records=["X1"], format_type="csv", raw_or_label_headers="label")
    header = csv_labels.splitlines()[0]
    assert header.startswith("ID,Repeat Instrument,Repeat Instance,Name,DOB,Age")
    assert "Tools (choice=CT)" in header and "Complete?" in header
    tab = classic.export_records(records=["X1"], format_type="csv", export_checkbox_labels=True)
    assert "X1" in tab
