"""Faults with real parts: the research PACS stops mid-send, the scheduler is killed with -9, REDCap restarts."""

import threading
import time

import pytest
import requests

from fiona_redcap.state import transfers
from tests.fixtures.dicom import wait_for

pytestmark = pytest.mark.slow


def instance_count(pacs) -> int:
    try:
        # The instance list, not /statistics: Orthanc may report the counts of a study deleted a moment ago.
        return len(requests.get(f"{pacs.http}/instances", timeout=5).json())
    except (requests.RequestException, ValueError, KeyError):
        return -1


def when_pacs_has(pacs, n: int, action, timeout: float = 120) -> threading.Thread:
    """Run ``action`` once the research PACS holds at least ``n`` instances (i.e. in the middle of a send)."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if instance_count(pacs) >= n:
                action()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def imaging_rows(rc):
    return [r for r in rc.export_records() if r.get("redcap_repeat_instrument") == "imaging"]


def test_research_pacs_stopped_mid_send_gets_the_rest_later(pipeline, new_study):
    pipeline.research_project("PACSDOWN", regex=r"D[0-9]{2}", redcap=False)
    study = new_study(series=2, images=150)
    pipeline.couple(study.identity.accession, "PACSDOWN", "D01")
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    watcher = when_pacs_has(pipeline.pacs, 10, pipeline.pacs.kill)
    pipeline.run("create-transfer-requests", "anonymize-and-send")
    watcher.join(5)
    (t,) = pipeline.transfers(study.study_uid)
    assert t.state == "failed" and t.next_attempt, (t.state, t.last_error)
    assert "images were not stored" in t.last_error or "could not be opened" in t.last_error
    pipeline.pacs.start()
    stored_before = instance_count(pipeline.pacs)
    assert 0 < stored_before < 300
    wait_for(lambda: transfers.parse_time(pipeline.transfers(study.study_uid)[0].next_attempt) <= transfers.dt.datetime.now(),
             10, what="the next attempt")
    pipeline.run("anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.images_sent, t.images_verified, t.attempts) == ("verified", 300, 300, 2), t.last_error
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 300


def test_scheduler_killed_mid_study_finishes_after_restart_without_duplicates(pipeline, new_study, scheduler_factory):
    rc = pipeline.research_project("KILLED", regex=r"K[0-9]{3}")
    study = new_study(series=2, images=200)
    pipeline.couple(study.identity.accession, "KILLED", "K001")
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    svc = scheduler_factory(pipeline.cfg)
    killed = threading.Event()
    watcher = when_pacs_has(pipeline.pacs, 30, lambda: (svc.kill9(), killed.set()))
    watcher.join(120)
    assert killed.is_set(), "the scheduler never started sending"
    (t,) = pipeline.transfers(study.study_uid)
    assert t.state == "processing" and t.lease  # left behind by the dead worker
    assert instance_count(pipeline.pacs) < 400

    scheduler_factory(pipeline.cfg)
    wait_for(lambda: pipeline.transfers(study.study_uid)[0].state == "verified", 120, interval=0.5, what="the transfer verified")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.images_sent, t.images_verified, t.lease) == (400, 400, "")
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 400
    assert len(pipeline.pacs.get("/studies")) == 1
    assert [(r["record_id"], r["imaging_study_uid"]) for r in imaging_rows(rc)] == [("K001", t.mapped_study_uid)]


def test_redcap_restarted_mid_run_loses_nothing(pipeline, new_study, scheduler_factory, live_redcap):
    rc = pipeline.research_project("RCDOWN", regex=r"R[0-9]{3}")
    study = new_study(series=2, images=150)
    pipeline.couple(study.identity.accession, "RCDOWN", "R001")
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    svc = scheduler_factory(pipeline.cfg)
    watcher = when_pacs_has(pipeline.pacs, 20, live_redcap.stop)
    watcher.join(120)
    assert not live_redcap.alive()
    wait_for(lambda: instance_count(pipeline.pacs) >= 300, 120, what="the send to finish while REDCap is away")
    time.sleep(2)  # the result is ready now, with nowhere to write it
    live_redcap.start()
    wait_for(lambda: pipeline.transfers(study.study_uid)[0].state == "verified", 120, interval=0.5, what="the transfer verified")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.images_sent, t.images_verified) == (300, 300), t.last_error
    assert len(pipeline.transfers(study.study_uid)) == 1
    assert len(pipeline.pacs.instances_of(t.mapped_study_uid)) == 300
    wait_for(lambda: len(imaging_rows(rc)) == 1, 30, what="the Imaging instance")
    assert "transfer.write_queued" in svc.log_text() and "outbox.flushed" in svc.log_text()
    assert study.identity.patient_id not in svc.log_text() and study.identity.accession not in svc.log_text()


def test_resend_asked_for_while_sending_is_not_lost(pipeline, new_study):
    from fiona_redcap.state import client
    from tests.pipeline.test_jobs import form_request

    pipeline.research_project("RACING", regex=r"Z[0-9]{2}", redcap=False)
    study = new_study(series=2, images=150)
    pipeline.send(study)
    pipeline.wait_incoming(study.study_uid)
    form_request(pipeline, study.study_uid, "RACING", "Z01")
    incoming = client.control_project(pipeline.cfg, "incoming")
    asked = threading.Event()

    def person_resends():
        time.sleep(1.1)  # a later second than the start of the send
        (t,) = pipeline.transfers(study.study_uid)
        transfers.resend(incoming, t, requested_by="someone")
        asked.set()

    watcher = when_pacs_has(pipeline.pacs, 1, person_resends)
    pipeline.run("anonymize-and-send")
    watcher.join(30)
    assert asked.is_set()
    (t,) = pipeline.transfers(study.study_uid)
    assert t.needs_send, (t.state, t.requested_at, t.sent_at)  # the person's request still stands
    pipeline.run("resend-project")
    (t,) = pipeline.transfers(study.study_uid)
    assert t.state == "verified" and not t.needs_send and t.images_verified == 300
