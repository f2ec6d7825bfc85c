"""The service shell and the smaller jobs: fiona scheduler / run-job, status file, SFTP destination,
engine refusal, the verify job, and leases."""

import json
import os
import socket
import subprocess
import sys
import zipfile

import requests

from fiona_redcap.state import client, transfers
from scheduler.context import Context
from tests.fixtures.dicom import wait_for
from tests.pipeline.test_jobs import form_request, received


def test_service_runs_jobs_and_reports_health(pipeline, new_study, scheduler_factory):
    pipeline.research_project("SERVICE", regex=r"V[0-9]{2}", redcap=False)
    study = received(pipeline, new_study, series=1, images=2)
    form_request(pipeline, study.study_uid, "SERVICE", "V01")
    svc = scheduler_factory(pipeline.cfg)
    wait_for(lambda: pipeline.transfers(study.study_uid)[0].state == "verified", 60, what="the transfer verified")
    status_file = pipeline.cfg.data_dir / "status" / "scheduler.json"
    wait_for(lambda: "verify" in json.loads(status_file.read_text()).get("jobs", {}), 15, what="every job in the status file")
    status = json.loads(status_file.read_text())
    assert status["running"] is True and status["pid"] == svc.proc.pid and status["last_poll"]
    assert status["jobs"]["anonymize-and-send"]["outcome"] == "ok"
    assert json.loads((pipeline.cfg.data_dir / "scheduler" / "poll.json").read_text())["last_poll"]
    assert svc.stop() == 0
    assert json.loads(status_file.read_text())["running"] is False
    log = svc.log_text()
    assert "event=transfer.done" in log and "state=verified" in log
    for secret in (study.identity.patient_id, study.identity.accession, study.study_uid, "DOE"):
        assert secret not in log


def test_run_job_cli_prints_a_summary_and_fails_visibly(pipeline, new_study, live_redcap):
    pipeline.research_project("CLIPROJ", regex=r"L[0-9]{2}", redcap=False)
    study = received(pipeline, new_study, series=1, images=1)
    pipeline.couple(study.identity.accession, "CLIPROJ", "L01")
    cmd = [sys.executable, "-m", "fiona_redcap.cli", "run-job", "--data-dir", str(pipeline.cfg.data_dir)]
    out = subprocess.run(cmd + ["create-transfer-requests"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"job": "create-transfer-requests", "created": 1}
    out = subprocess.run(cmd + ["anonymize-and-send"], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout)["verified"] == 1
    out = subprocess.run(cmd + ["populate-incoming"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["written"] == 0, out.stderr
    live_redcap.stop()
    try:
        out = subprocess.run(cmd + ["anonymize-and-send"], capture_output=True, text=True, timeout=120)
    finally:
        live_redcap.start()
    assert out.returncode == 1 and "REDCap is not reachable" in out.stderr
    status = json.loads((pipeline.cfg.data_dir / "status" / "scheduler.json").read_text())
    assert status["jobs"]["anonymize-and-send"]["outcome"] == "error"


def test_sftp_destination_end_to_end(pipeline, new_study, sshd, tmp_path):
    remote = sshd.uploads / f"outbox-{tmp_path.name}"
    pipeline._edit_config(lambda raw: raw["destinations"].update(outbox=sshd.destination(remote)))
    pipeline.research_project("SFTPPROJ", regex=r"T[0-9]{2}", redcap=False, project_destination="outbox")
    study = received(pipeline, new_study, series=2, images=2)
    form_request(pipeline, study.study_uid, "SFTPPROJ", "T01")
    pipeline.run("anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.destination, t.images_sent, t.images_verified) == ("verified", "outbox", 4, 4), t.last_error
    (package,) = [p for p in remote.iterdir() if p.suffix == ".zip"]
    assert study.identity.patient_id not in package.name and study.study_uid not in package.name
    with zipfile.ZipFile(package) as zf:
        assert len(zf.namelist()) == 4
        blob = b"".join(zf.read(n) for n in zf.namelist())
    assert study.identity.patient_id.encode() not in blob and study.identity.accession.encode() not in blob
    assert (remote / (package.name + ".md5")).exists()


def test_engine_refusal_is_visible_and_not_retried(pipeline, new_study):
    pipeline.research_project("REFUSED", regex=r"E[0-9]{2}", redcap=False, deid_tag_rules="PatientComments=([unclosed")
    study = received(pipeline, new_study, series=1, images=1)
    form_request(pipeline, study.study_uid, "REFUSED", "E01")
    pipeline.run("anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.next_attempt) == ("failed", "") and t.last_error.startswith("pseudonymization refused:")
    assert not list((pipeline.cfg.data_dir / "staging").glob("*-1"))
    assert pipeline.pacs.get("/studies") == []


def test_verify_job_counts_what_the_destination_holds(pipeline, new_study):
    pipeline.research_project("VERIFY", regex=r"Y[0-9]{2}", redcap=False)
    study = received(pipeline, new_study, series=1, images=3)
    form_request(pipeline, study.study_uid, "VERIFY", "Y01")
    pipeline.run("anonymize-and-send")
    (t,) = pipeline.transfers(study.study_uid)
    incoming = client.control_project(pipeline.cfg, "incoming")
    transfers.update(incoming, t, state="sent", images_verified="")
    pipeline.run("verify")
    assert pipeline.transfers(study.study_uid)[0].state == "verified"
    victim = pipeline.pacs.instances_of(t.mapped_study_uid)[0]["ID"]
    requests.delete(f"{pipeline.pacs.http}/instances/{victim}", timeout=10).raise_for_status()
    transfers.update(incoming, t, state="sent")
    pipeline.run("verify")
    (t,) = pipeline.transfers(study.study_uid)
    assert t.state == "failed" and t.last_error == "verification: 2 of 3 images found in destination pacs" and t.next_attempt
    wait_for(lambda: transfers.parse_time(pipeline.transfers(study.study_uid)[0].next_attempt) <= transfers.dt.datetime.now(), 10)
    pipeline.run("anonymize-and-send")  # the retry sends only what is missing
    (t,) = pipeline.transfers(study.study_uid)
    assert (t.state, t.images_verified) == ("verified", 3)


def test_leases_of_dead_or_expired_workers_are_taken_over(pipeline):
    ctx = Context(pipeline.cfg)
    host = socket.gethostname()
    future = "2999-01-01 00:00:00"
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not ctx.lease_is_live("")
    assert not ctx.lease_is_live(ctx.lease_value())  # our own lease never blocks us
    assert not ctx.lease_is_live(f"{host}:{dead.pid}:123 until {future}")  # same host, process gone
    assert not ctx.lease_is_live(f"otherhost:1:1 until 2000-01-01 00:00:00")  # expired
    assert ctx.lease_is_live(f"otherhost:1:1 until {future}")  # another machine's worker, still valid
    parent = os.getppid()
    with open(f"/proc/{parent}/stat") as fh:
        start = fh.read().rsplit(")", 1)[1].split()[19]
    assert ctx.lease_is_live(f"{host}:{parent}:{start} until {future}")  # a live local worker
    assert not ctx.lease_is_live(f"{host}:{parent}:1 until {future}")  # the pid was reused by another process


def test_longitudinal_research_project_gets_the_imaging_instance_on_the_event(pipeline, new_study, live_redcap):
    from redcap import Project

    from fiona_redcap.redcap_install import load_instrument
    from fiona_redcap.state import projects

    dictionary, _, _ = load_instrument("imaging")
    token = live_redcap.new_project("research LONGI", longitudinal=True, dictionary=dictionary,
                                    events=[("Baseline", 1), ("Week 4", 1)])
    rc = Project(live_redcap.url, token, timeout=30)
    events = [e["unique_event_name"] for e in rc.export_events()]
    rc.import_instrument_event_mappings([{"arm_num": 1, "unique_event_name": e, "form": f}
                                         for e in events for f in ("participant", "imaging")])
    rc.import_repeating_instruments_events([{"event_name": e, "form_name": "imaging", "custom_form_label": ""} for e in events])
    pipeline._edit_config(lambda raw: raw["redcap"].__setitem__("research_tokens", {"longi": token}))
    projects.save_project(pipeline.cfg, {"project_name": "LONGIT", "project_active": "1", "project_participant_regex": r"G[0-9]{2}",
                                         "project_redcap_url": live_redcap.url, "project_token_ref": "longi", "project_complete": "2"})
    study = received(pipeline, new_study, series=1, images=1)
    later = received(pipeline, new_study, series=1, images=1)
    form_request(pipeline, study.study_uid, "LONGIT", "G01", event="nosuch_arm_1")
    form_request(pipeline, later.study_uid, "LONGIT", "G01", event=events[1])
    pipeline.run("anonymize-and-send")
    (bad,) = pipeline.transfers(study.study_uid)
    assert bad.state == "failed" and "event 'nosuch_arm_1' does not exist" in bad.last_error
    (t,) = pipeline.transfers(later.study_uid)
    assert t.state == "verified", t.last_error
    rows = [r for r in rc.export_records() if r.get("redcap_repeat_instrument") == "imaging"]
    assert [(r["record_id"], r["redcap_event_name"], r["imaging_study_uid"]) for r in rows] == [("G01", events[1], t.mapped_study_uid)]


def test_disk_pressure_removes_verified_studies_first_and_alarms_instead_of_deleting_unsent(pipeline, new_study):
    from fiona_redcap.quarantine import Quarantine

    pipeline.research_project("PRESSURE", regex=r"U[0-9]{2}", redcap=False)
    sent = received(pipeline, new_study, series=1, images=1)
    unsent = received(pipeline, new_study, series=1, images=1)
    form_request(pipeline, sent.study_uid, "PRESSURE", "U01")
    pipeline.run("anonymize-and-send")
    form_request(pipeline, unsent.study_uid, "PRESSURE", "bad")  # failing: must never be deleted
    pipeline.run("anonymize-and-send")
    # More free space asked for than any disk has: permanent pressure (retention days stay at 7).
    pipeline._edit_config(lambda raw: raw["dicom"].__setitem__("min_free_mb", 10 ** 9))
    summary = pipeline.run("retention")[0]
    q = Quarantine(pipeline.cfg.data_dir)
    assert not q.has_study(sent.study_uid) and q.has_study(unsent.study_uid)
    assert summary["removed"] == 1 and summary["alarms"] and "not yet verified" in summary["alarms"][0]


def test_backoff_is_exponential_and_bounded(pipeline):
    import datetime as dt

    from scheduler.send import backoff

    pipeline._edit_config(lambda raw: raw["transfer"].update(backoff_first_seconds=60, backoff_factor=3, max_attempts=4))
    ctx = Context(pipeline.cfg)
    now = dt.datetime.now()
    delays = [(transfers.parse_time(backoff(ctx, n)) - now).total_seconds() for n in (1, 2, 3)]
    assert [round(d / 10) * 10 for d in delays] == [60, 180, 540]
    assert backoff(ctx, 4) == ""


def test_polls_ask_only_for_what_changed(pipeline, new_study):
    first = received(pipeline, new_study, series=1, images=1)
    ctx = Context(pipeline.cfg)
    assert ctx.poll() >= 1 and first.study_uid in ctx.studies  # start: one full read
    assert ctx.poll() <= 1  # nothing new (the overlap window may return the same record once more)
    pipeline.research_project("POLLED", regex=r"O[0-9]{2}", redcap=False)
    form_request(pipeline, first.study_uid, "POLLED", "O01")
    ctx.poll()
    assert [t.participant for t in ctx.studies[first.study_uid].transfers] == ["O01"]
    ctx.last_poll = transfers.dt.datetime.now() + transfers.dt.timedelta(seconds=30)  # as if polled after that change
    assert ctx.poll() == 0
