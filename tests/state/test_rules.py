"""The pure rules of the state layer: coupling-list validation, routing matches, AutoID generation, resend detection."""

import re

import pytest

from fiona_redcap.state.autoid import AutoIdError, generate
from fiona_redcap.state.coupling import CouplingEntry, matching, parse_csv
from fiona_redcap.state.projects import ResearchProject
from fiona_redcap.state.routing import RoutingRule, RuleError
from fiona_redcap.state.transfers import Transfer

PROJECTS = {
    "STUDY1": ResearchProject(name="STUDY1", active=True, participant_regex=r"S1-[0-9]{3}", events=[("baseline_arm_1", "Baseline"), ("followup_arm_1", "Follow-up")]),
    "OTHER": ResearchProject(name="OTHER", active=True, participant_regex=r"O[0-9]{2}"),
}


def parse(text, existing=(), allowed=None):
    return parse_csv(text.encode("utf-8") if isinstance(text, str) else text, PROJECTS, lambda p: p.events, existing, allowed)


def test_valid_coupling_list_parses_all_rows():
    entries, errors = parse("AccessionNumber,project,participant,event\nACC1,STUDY1,S1-001,baseline_arm_1\nACC2,OTHER,O12,\n")
    assert errors == []
    assert [(e.key_type, e.key, e.project, e.participant, e.event) for e in entries] == [
        ("accession", "ACC1", "STUDY1", "S1-001", "baseline_arm_1"),
        ("accession", "ACC2", "OTHER", "O12", ""),
    ]


def test_every_bad_row_is_reported_with_its_line():
    text = (
        "AccessionNumber,project,participant,event\n"
        "ACC1,STUDY1,S1-001,baseline_arm_1\n"
        "ACC2,NOPE,S1-002,baseline_arm_1\n"
        "ACC3,STUDY1,bad,baseline_arm_1\n"
        "ACC4,STUDY1,S1-004,week_99\n"
        "ACC1,STUDY1,S1-005,baseline_arm_1\n"
        "=cmd|' /C calc'!A0,STUDY1,S1-006,baseline_arm_1\n"
        "ACC7,STUDY1,S1-007,\n"
    )
    entries, errors = parse(text)
    by_line = {e.line: e.message for e in errors}
    assert "unknown project 'NOPE'" in by_line[3]
    assert "does not match the pattern" in by_line[4] and "bad" not in by_line[4]
    assert "unknown event 'week_99'" in by_line[5]
    assert "duplicate of line 2" in by_line[6]
    assert "formula" in by_line[7]
    assert "unknown event ''" in by_line[8]
    assert len(entries) == 1  # only valid rows come back, and the caller stores nothing while errors exist


def test_study_uid_lists_and_existing_entries():
    existing = [CouplingEntry("study_uid", "1.2.3", "STUDY1", "S1-001", "baseline_arm_1")]
    entries, errors = parse("StudyInstanceUID;project;participant;event\n1.2.3;STUDY1;S1-009;baseline_arm_1\n1.2.03;STUDY1;S1-001;baseline_arm_1\n1.2.4;STUDY1;S1-002;followup_arm_1\n", existing)
    assert [e.line for e in errors] == [2, 3]
    assert "already exists" in errors[0].message and "not a valid DICOM UID" in errors[1].message
    assert [e.key for e in entries] == ["1.2.4"]


@pytest.mark.parametrize(
    "data, message",
    [
        ("project,participant\nSTUDY1,S1-001\n", "header must have the columns"),
        ("AccessionNumber,StudyInstanceUID,project,participant\n", "header must have the columns"),
        ("", "file is empty"),
        ("AccessionNumber,project,participant,event\n", "no entries"),
        ("AccessionNumber,project,participant,event\nÄÖ,STUDY1,S1-001,baseline_arm_1\n".encode("latin-1"), "not UTF-8"),
        (b"A" * (3 * 1024 * 1024), "larger than"),
    ],
)
def test_unusable_files_get_one_clear_error(data, message):
    entries, errors = parse(data)
    assert entries == [] and len(errors) == 1 and message in errors[0].message


def test_projects_outside_the_users_rights_are_unknown():
    _, errors = parse("AccessionNumber,project,participant,event\nA1,OTHER,O11,\n", allowed={"STUDY1"})
    assert "unknown project 'OTHER'" in errors[0].message


def test_all_matching_unexpired_entries_match():
    entries = [
        CouplingEntry("accession", "A1", "STUDY1", "S1-001", "baseline_arm_1"),
        CouplingEntry("accession", "A1", "OTHER", "O11"),
        CouplingEntry("accession", "A1", "OTHER", "O12", expires="2000-01-01"),
        CouplingEntry("study_uid", "1.2.3", "STUDY1", "S1-002", "baseline_arm_1"),
    ]
    assert [e.participant for e in matching(entries, "9.9", "A1")] == ["S1-001", "O11"]
    assert [e.participant for e in matching(entries, "1.2.3", "")] == ["S1-002"]
    assert matching(entries, "1.2.4", "") == []


def rule(**kw):
    base = dict(id="1", active=True, called_aet="", calling_aet="", patient_id_regex="", patient_name_regex="", project="STUDY1", event="")
    base.update(kw)
    return RoutingRule(**base)


def test_routing_rules_are_fully_anchored():
    r = rule(called_aet="RESEARCH", patient_id_regex=r"S1-[0-9]{3}")
    assert r.matches("RESEARCH", "ANY", "S1-123", "X")
    assert not r.matches("RESEARCH", "ANY", "S1-1234", "X")  # no prefix match
    assert not r.matches("RESEARCH", "ANY", "XS1-123", "X")
    assert not r.matches("FIONA", "ANY", "S1-123", "X")
    assert not rule(active=False).matches("A", "B", "C", "D")


def test_broken_routing_regex_is_an_error_not_a_match():
    with pytest.raises(RuleError, match="not a valid regular expression"):
        rule(patient_name_regex="([unclosed").matches("A", "B", "C", "D")


@pytest.mark.parametrize("pattern", [r"ABC[0-9]{4}", r"P\d{3}-[A-Z]{2}", r"(AUTO|AU)_[0-9a-f]{6}", r"S[0-9]+", r"^X[A-Z]{3}$"])
def test_autoid_generates_ids_that_fully_match(pattern):
    ids = {generate(pattern, set()) for _ in range(50)}
    assert all(re.fullmatch(pattern, i) for i in ids)
    assert len(ids) > 10  # random, not a counter


def test_autoid_never_reuses_a_taken_id_and_reports_exhaustion():
    taken = {f"A{i}" for i in range(9)}
    assert generate(r"A[0-9]", taken) == "A9"
    with pytest.raises(AutoIdError, match="exhausted"):
        generate(r"A[0-9]", taken | {"A9"})
    with pytest.raises(AutoIdError, match="not a valid regular expression"):
        generate(r"A[0-9", set())


def test_resend_is_a_request_date_later_than_the_sent_date():
    row = {"study_uid": "1.2", "redcap_repeat_instance": "3", "transfer_project": "STUDY1", "transfer_state": "verified",
           "transfer_requested_at": "2026-01-01 10:00:00", "transfer_sent_at": "2026-01-01 11:00:00"}
    assert not Transfer.from_row(row).needs_send
    row["transfer_requested_at"] = "2026-01-02 09:00:00"
    assert Transfer.from_row(row).needs_send
    row.update(transfer_state="", transfer_sent_at="")
    t = Transfer.from_row(row)
    assert t.state == "requested" and t.needs_send and t.instance == 3
