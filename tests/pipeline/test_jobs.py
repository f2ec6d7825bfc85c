"""Scheduler behaviour through real REDCap, receiver and Orthanc: assignment rules, failures, resends, retention."""

import datetime as dt
from fiona_redcap.quarantine import Quarantine
from fiona_redcap.state import client, transfers
from tests.fixtures.dicom import Identity, make_study, wait_for


def form_request(pipeline, study_uid, project, participant, event=""):
    client.control_project(pipeline.cfg, "incoming").import_records([{
        "study_uid": study_uid, "redcap_repeat_instrument": "transfers", "redcap_repeat_instance": "new",
        "transfer_requested_at": transfers.now_text(), "transfer_project": project, "transfer_participant": participant,
        "transfer_event": event, "transfer_source": "form", "transfers_complete": "2"}])


def received(pipeline, new_study, **kwargs):
    study = new_study(**kwargs)
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    return study


def test_every_matching_coupling_entry_makes_one_request_and_never_twice(pipeline, new_study):
    pipeline.research_project("PROJ_ONE", regex=r"A[0-9]{2}", redcap=False)
    pipeline.research_project("PROJ_TWO", regex=r"B[0-9]{2}", redcap=False)
    study = new_study(series=1, images=1)
    pipeline.couple(study.identity.accession, "PROJ_ONE", "A01")
    pipeline.couple(study.study_uid, "PROJ_TWO", "B02", key_type="study_uid")
    pipeline.couple(study.identity.accession, "PROJ_TWO", "B99", expires="2000-01-01")  # expired: ignored
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    form_request(pipeline, study.study_uid, "PROJ_ONE", "A01")  # a person already asked for the same thing
    pipeline.run("create-transfer-requests", "create-transfer-requests")
    got = sorted((t.project, t.participant, t.source) for t in pipeline.transfers(study.study_uid))
    assert got == [("PROJ_ONE", "A01", "form"), ("PROJ_TWO", "B02", "coupling")]
    pipeline.ctx.studies.clear()  # a restarted scheduler (empty cache) does not ask twice either
    pipeline.ctx.last_poll = None
    pipeline.run("create-transfer-requests", "anonymize-and-send")
    states = sorted((t.project, t.state) for t in pipeline.transfers(study.study_uid))
    assert states == [("PROJ_ONE", "verified"), ("PROJ_TWO", "verified")]


def test_routing_rule_sends_pre_pseudonymized_data_on_a_full_match_only(pipeline, new_study):
    pipeline.research_project("ROUTED", regex=r"SUBJ-[0-9]{3}", redcap=False)
    client.import_records(client.control_project(pipeline.cfg, "routing"), [{
        "routing_id": "1", "routing_active": "1", "routing_patient_id_regex": r"SUBJ-[0-9]{3}", "routing_project": "ROUTED",
        "routing_complete": "2"}], force_auto_number=True)
    match = received(pipeline, new_study, series=1, images=2, ident=Identity(patient_id="SUBJ-001", patient_name="SUBJ-001"))
    partial = received(pipeline, new_study, series=1, images=1, ident=Identity(patient_id="XSUBJ-0012"))
    pipeline.run("create-transfer-requests", "anonymize-and-send")
    (t,) = pipeline.transfers(match.study_uid)
    assert (t.project, t.participant, t.source, t.state) == ("ROUTED", "SUBJ-001", "routing", "verified"), t.last_error
    assert pipeline.transfers(partial.study_uid) == []


def test_invalid_assignment_fails_visibly_without_identifiers_and_without_retry(pipeline, new_study):
    pipeline.research_project("STRICT", regex=r"S[0-9]{3}", redcap=False)
    pipeline.research_project("CLOSED", regex=r"C[0-9]{3}", redcap=False, project_ethics_end="2001-01-01")
    study = received(pipeline, new_study, series=1, images=1)
    form_request(pipeline, study.study_uid, "STRICT", "bad-id")
    form_request(pipeline, study.study_uid, "CLOSED", "C001")
    form_request(pipeline, study.study_uid, "NOSUCH", "X1")
    good = received(pipeline, new_study, series=1, images=1)
    form_request(pipeline, good.study_uid, "STRICT", "S001")  # requested last: the failures before it do not block it
    pipeline.run("anonymize-and-send")
    assert pipeline.transfers(good.study_uid)[0].state == "verified"
    by_project = {t.project: t for t in pipeline.transfers(study.study_uid)}
    assert "does not match the pattern" in by_project["STRICT"].last_error
    assert "ethics approval of CLOSED ended" in by_project["CLOSED"].last_error
    assert "not in the Projects registry" in by_project["NOSUCH"].last_error
    for t in by_project.values():
        assert (t.state, t.next_attempt, t.lease) == ("failed", "", "")
        assert study.identity.patient_id not in t.last_error and study.identity.accession not in t.last_error
    assert len(pipeline.pacs.get("/studies")) == 1  # only the good one


def test_destination_down_backs_off_then_delivers_and_stays_failed_after_last_attempt(pipeline, new_study):
    pipeline.research_project("BACKOFF", regex=r"K[0-9]{2}", redcap=False)
    study = received(pipeline, new_study, series=1, images=2)
    form_request(pipeline, study.study_uid, "BACKOFF", "K01")
    pipeline.pacs.stop()
    try:
        pipeline.run("anonymize-and-send")
        (t,) = pipeline.transfers(study.study_uid)
        assert (t.state, t.attempts) == ("failed", 1) and "could not be opened" in t.last_error
        assert transfers.parse_time(t.next_attempt) > dt.datetime.now() - dt.timedelta(seconds=2)
        pipeline.run("anonymize-and-send")  # not due yet: nothing happens
        assert pipeline.transfers(study.study_uid)[0].attempts == 1
        for attempt in (2, 3):
            wait_for(lambda: transfers.parse_time(pipeline.transfers(study.study_uid)[0].next_attempt) <= dt.datetime.now(),
                     10, what="the next attempt time")
            pipeline.run("anonymize-and-send")
        (t,) = pipeline.transfers(study.study_uid)
        assert (t.state, t.attempts, t.next_attempt) == ("failed", 3, "")  # max_attempts reached: waits for a person
    finally:
        pipeline.pacs.start()
    transfers.resend(client.control_project(pipeline.cfg, "incoming"), t, requested_by="tester")
    pipeline.run("resend-project", "anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.images_verified) == ("verified", 2), t.last_error


def test_resend_and_late_series(pipeline, new_study, tmp_path):
    pipeline.research_project("RESEND", regex=r"R[0-9]{2}", redcap=False)
    study = received(pipeline, new_study, series=1, images=2)
    form_request(pipeline, study.study_uid, "RESEND", "R01")
    pipeline.run("anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    assert t.state == "verified"
    first_sent = t.sent_at

    # A series that arrives after the send: only after the quiet period, and only what is new is sent.
    late = make_study(tmp_path / "late", series=1, images=3, study_uid=study.study_uid)
    pipeline.send(late)
    pipeline.run("resend-project", "anonymize-and-send")  # still within the quiet period: nothing is sent yet
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 2
    wait_for(lambda: pipeline.wait_incoming(study.study_uid).get("study_num_images") == "5", 15, what="the reopened study")
    wait_for(lambda: pipeline.wait_incoming(study.study_uid).get("study_completed_at", "") > first_sent, 15, what="completion")
    pipeline.run("resend-project")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.images_sent, t.images_verified) == ("verified", 5, 5), t.last_error
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 5

    # A person asks for a resend (later requested date): everything is sent again, once.
    transfers.resend(client.control_project(pipeline.cfg, "incoming"), t, requested_by="tester")
    pipeline.run("resend-project")
    (t2,) = pipeline.transfers(study.study_uid)
    assert t2.state == "verified" and t2.sent_at >= t.sent_at and t2.mapped_study_uid == t.mapped_study_uid
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 5


def test_retention_deletes_by_state_only(pipeline, new_study):
    pipeline._edit_config(lambda raw: raw["timing"].update(retention_verified_days=0, retention_unassigned_days=0))
    pipeline.research_project("KEEPER", regex=r"Q[0-9]{2}", redcap=False)
    done = received(pipeline, new_study, series=1, images=1)
    pending = received(pipeline, new_study, series=1, images=1)
    unassigned = received(pipeline, new_study, series=1, images=1)
    form_request(pipeline, done.study_uid, "KEEPER", "Q01")
    pipeline.run("anonymize-and-send")
    form_request(pipeline, pending.study_uid, "KEEPER", "bad")  # fails: must be kept
    pipeline.couple("EXPIRED1", "KEEPER", "Q02", expires="2000-01-01")
    pipeline.run("anonymize-and-send", "retention")
    q = Quarantine(pipeline.cfg.data_dir)
    assert not q.has_study(done.study_uid) and not q.has_study(unassigned.study_uid)
    assert q.has_study(pending.study_uid)
    rows = {r["study_uid"]: r for r in client.control_project(pipeline.cfg, "incoming").export_records(forms=["study"])
            if not r.get("redcap_repeat_instrument")}
    assert rows[done.study_uid]["study_state"] == "removed" and rows[unassigned.study_uid]["study_state"] == "removed"
    assert rows[pending.study_uid]["study_state"] == "complete"
    assert [r for r in client.control_project(pipeline.cfg, "coupling").export_records() if r.get("coupling_key") == "EXPIRED1"] == []


def test_one_unassignable_study_does_not_block_the_others(pipeline, new_study):
    pipeline.research_project("BROKENAUTO", regex=r"(A)\1[0-9]{3}", autoid_aet="BROKEN1", redcap=False)  # cannot generate
    pipeline.research_project("HEALTHY", regex=r"H[0-9]{2}", redcap=False)
    port = pipeline.add_site("broken", "BROKEN1")
    stuck = new_study(series=1, images=1, ident=Identity(accession="ACC-STUCK"))
    fine = new_study(series=1, images=1, ident=Identity(accession="ACC-FINE"))
    pipeline.couple("ACC-FINE", "HEALTHY", "H01")
    pipeline.send(stuck, called="BROKEN1", port=port)
    pipeline.send(fine)
    pipeline.wait_incoming(stuck.study_uid)
    pipeline.wait_incoming(fine.study_uid)
    pipeline.run("anonymize-and-send")
    assert pipeline.transfers(stuck.study_uid) == []
    (t,) = pipeline.transfers(fine.study_uid)
    assert t.state == "verified", t.last_error
