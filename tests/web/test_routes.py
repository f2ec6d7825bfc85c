"""Every page and API endpoint, including the denials, against a real embedded REDCap."""

import io
import json
import time

import pytest

from fiona_redcap.state import client, coupling, incoming, transfers
from fiona_redcap.web.auth import make_sso_token
from tests.web.conftest import add_study, csrf, login


def transfers_of(site):
    return transfers.list_transfers(client.control_project(site.cfg, "incoming"))


@pytest.mark.parametrize("path", ["/", "/assign", "/assign/0123456789abcdef", "/coupling", "/status", "/review", "/review.csv"])
def test_pages_need_a_session(site, path):
    resp = site.app.test_client().get(path)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]


def test_login_with_password(site):
    c = site.app.test_client()
    bad = login(c, "alice", "wrong")
    assert bad.status_code == 401 and "wrong password" in bad.get_data(as_text=True)
    assert login(c, "alice").status_code == 302
    assert c.get("/assign").status_code == 200


def test_assign_flow_creates_a_transfer_like_the_redcap_form(site):
    c = site.app.test_client()
    login(c, "alice")
    page = c.get("/assign").get_data(as_text=True)
    assert "ACC4711" in page and f"/assign/{site.study_key}" in page and site.study_uid not in page
    assert "MRI &lt;b&gt;BRAIN&lt;/b&gt;" in page  # HTML in fields is escaped
    study = c.get(f"/assign/{site.study_key}?project=RESEARCH_A").get_data(as_text=True)
    assert 'value="A-001"' in study and "baseline_arm_1" in study and "CLOSED_B" not in study
    confirm = c.post(f"/assign/{site.study_key}/confirm", data={"project": "RESEARCH_A", "participant": "A-002", "event": "week_12_arm_1",
                                                                "csrf_token": csrf(c.get("/assign"))})
    text = confirm.get_data(as_text=True)
    assert confirm.status_code == 200 and "Confirm the assignment" in text and "A-002" in text and "Week 12" in text
    assert transfers_of(site) == []  # nothing stored before the second step
    done = c.post(f"/assign/{site.study_key}", data={"project": "RESEARCH_A", "participant": "A-002", "event": "week_12_arm_1", "csrf_token": csrf(confirm)})
    assert done.status_code == 302
    [t] = transfers_of(site)
    assert (t.project, t.participant, t.event, t.source, t.requested_by, t.state) == ("RESEARCH_A", "A-002", "week_12_arm_1", "assign", "alice", "requested")
    history = c.get(f"/assign/{site.study_key}").get_data(as_text=True)
    assert "Assigned to RESEARCH_A" in history and "requested" in history
    log = client.control_project(site.cfg, "incoming").export_logging()
    assert any("transfer_requested_by = 'alice'" in e["details"] for e in log)  # REDCap's log records who and what


def test_invalid_assignments_are_explained_and_store_nothing(site):
    c = site.app.test_client()
    login(c, "alice")
    token = csrf(c.get("/assign"))
    bad_id = c.post(f"/assign/{site.study_key}/confirm", data={"project": "RESEARCH_A", "participant": "X-1", "event": "baseline_arm_1", "csrf_token": token})
    assert bad_id.status_code == 400 and "does not match the pattern" in bad_id.get_data(as_text=True)
    bad_event = c.post(f"/assign/{site.study_key}", data={"project": "RESEARCH_A", "participant": "A-003", "event": "nope", "csrf_token": token})
    assert bad_event.status_code == 400 and "does not exist in project" in bad_event.get_data(as_text=True)
    closed = c.post(f"/assign/{site.study_key}", data={"project": "CLOSED_B", "participant": "B1", "event": "", "csrf_token": token})
    assert closed.status_code == 400 and "Choose a project you may assign to" in closed.get_data(as_text=True)
    assert transfers_of(site) == []


def test_bad_csrf_is_refused(site):
    c = site.app.test_client()
    login(c, "alice")
    resp = c.post(f"/assign/{site.study_key}", data={"project": "RESEARCH_A", "participant": "A-002", "event": "baseline_arm_1", "csrf_token": "forged"})
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    assert c.post("/login", data={"username": "alice", "password": "alice-password"}).status_code == 400
    assert transfers_of(site) == []


def test_users_without_the_assign_right_see_no_quarantine(site):
    c = site.app.test_client()
    login(c, "bob")
    assert "you need FIONA's assign right" in c.get("/assign").get_data(as_text=True)
    assert "ACC4711" not in c.get("/assign").get_data(as_text=True)
    assert c.get(f"/assign/{site.study_key}").status_code == 403
    assert c.post(f"/assign/{site.study_key}", data={"project": "RESEARCH_A", "participant": "A-002", "event": "baseline_arm_1",
                                                      "csrf_token": csrf(c.get("/assign"))}).status_code == 403
    assert c.get("/coupling").status_code == 403


def test_sso_tokens_work_once_and_expire(site):
    c = site.app.test_client()
    token = make_sso_token("sso-test-secret", "alice", 12)
    assert c.get(f"/sso?token={token}").status_code == 302
    assert c.get("/assign").status_code == 200
    replay = site.app.test_client().get(f"/sso?token={token}")
    assert replay.status_code == 403 and "already used" in replay.get_data(as_text=True)
    old = make_sso_token("sso-test-secret", "alice", 12, issued=time.time() - 300)
    assert "expired" in site.app.test_client().get(f"/sso?token={old}").get_data(as_text=True)
    forged = make_sso_token("wrong-secret", "alice", 12)
    assert site.app.test_client().get(f"/sso?token={forged}").status_code == 403
    assert site.app.test_client().get("/sso?token=garbage").status_code == 403


def upload(c, data: bytes, expires=""):
    return c.post("/coupling/preview", data={"file": (io.BytesIO(data), "list.csv"), "expires": expires, "csrf_token": csrf(c.get("/coupling"))},
                  content_type="multipart/form-data")


@pytest.mark.parametrize("data, message", [
    (b"AccessionNumber,project,participant,event\nACC1,RESEARCH_A,A-001,baseline_arm_1\nACC2,RESEARCH_A,nope,baseline_arm_1\n", "line 3: participant ID does not match"),
    (b"AccessionNumber,project,participant,event\n=cmd|' /C calc'!A0,RESEARCH_A,A-001,baseline_arm_1\n", "formula"),
    ("AccessionNumber,project,participant,event\nÄCC,RESEARCH_A,A-001,baseline_arm_1\n".encode("latin-1"), "not UTF-8"),
    (b"AccessionNumber,project,participant,event\nACC1,CLOSED_B,B1,\n", "unknown project &#39;CLOSED_B&#39;"),
    (b"AccessionNumber,project,participant,event\n<script>x</script>,RESEARCH_A,A-001,baseline_arm_1\n", "must be 1-16 characters"),
])
def test_bad_coupling_lists_store_nothing(site, data, message):
    c = site.app.test_client()
    login(c, "alice")
    resp = upload(c, data)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 400 and message in text and "Nothing was stored" in text and "<script>x" not in text
    assert coupling.list_entries(coupling.coupling_project(site.cfg)) == []


def test_oversized_upload_is_refused(site):
    c = site.app.test_client()
    login(c, "alice")
    resp = upload(c, b"A" * (5 * 1024 * 1024))
    assert resp.status_code == 413 and "too large" in resp.get_data(as_text=True)


def test_coupling_preview_store_and_delete(site):
    c = site.app.test_client()
    login(c, "alice")
    preview = upload(c, b"AccessionNumber,project,participant,event\nACC4711,RESEARCH_A,A-001,baseline_arm_1\nACC9,RESEARCH_A,A-002,week_12_arm_1\n",
                     expires="2099-01-01")
    text = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "1 study" in text and "0 studies" in text
    assert coupling.list_entries(coupling.coupling_project(site.cfg)) == []
    data = text.split('name="data" value="')[1].split('"')[0]
    stored = c.post("/coupling/store", data={"data": data, "expires": "2099-01-01", "csrf_token": csrf(preview)})
    assert stored.status_code == 302
    entries = coupling.list_entries(coupling.coupling_project(site.cfg))
    assert sorted((e.key, e.uploaded_by, e.expires) for e in entries) == [("ACC4711", "alice", "2099-01-01"), ("ACC9", "alice", "2099-01-01")]
    again = upload(c, b"AccessionNumber,project,participant,event\nACC4711,RESEARCH_A,A-001,baseline_arm_1\n")
    assert "already exists" in again.get_data(as_text=True)
    page = c.get("/coupling")
    c.post("/coupling/delete", data={"id": [e.id for e in entries], "csrf_token": csrf(page)})
    assert coupling.list_entries(coupling.coupling_project(site.cfg)) == []


def test_status_shows_failures_with_resend(site):
    proj = client.control_project(site.cfg, "incoming")
    transfers.request(proj, site.study_uid, "RESEARCH_A", "A-001", "baseline_arm_1", "alice", "assign")
    [t] = transfers.list_transfers(proj)
    transfers.update(proj, t, state="failed", attempts=6, last_error="research PACS refused the association")
    c = site.app.test_client()
    login(c, "alice")
    page = c.get("/status")
    text = page.get_data(as_text=True)
    assert "research PACS refused the association" in text and "reachable" in text
    resp = c.post(f"/assign/{site.study_key}/resend/{t.instance}", data={"csrf_token": csrf(page), "back": "/status"})
    assert resp.status_code == 302
    [again] = transfers.list_transfers(proj)
    assert again.state == "requested" and again.attempts == 0 and again.requested_by == "alice"


def test_review_lists_attributes_of_the_projects_output_and_denies_others(site):
    folder = site.cfg.data_dir / "review" / "RESEARCH_A"
    folder.mkdir(parents=True)
    folder.joinpath("s1.json").write_text(json.dumps({"instances": 3, "attributes": {
        "(0008,103E)": {"keyword": "SeriesDescription", "vr": "LO", "count": 3, "values": {"T1 SAG": 3}},
        "(0010,0020)": {"keyword": "PatientID", "vr": "LO", "count": 3, "values": {"=A-001": 3}}}}))
    c = site.app.test_client()
    login(c, "bob")
    page = c.get("/review?project=RESEARCH_A").get_data(as_text=True)
    assert "SeriesDescription" in page and "T1 SAG" in page and "3 instances" in page
    csv_text = c.get("/review.csv?project=RESEARCH_A").get_data(as_text=True)
    assert csv_text.startswith("tag,keyword,vr,instances,distinct_values,examples") and "'=A-001" in csv_text
    assert c.get("/review?project=CLOSED_B").status_code == 403


def test_api_authenticates_with_the_projects_redcap_token(site):
    c = site.app.test_client()
    assert c.get("/api/v1/transfers").status_code == 401
    assert c.get("/api/v1/transfers", headers={"Authorization": f"Bearer {site.other_token}"}).status_code == 403
    auth = {"Authorization": f"Bearer {site.research_token}"}
    assert c.get("/api/v1/transfers", headers=auth).get_json() == {"transfers": []}
    bad = c.post("/api/v1/assign", json={"accession_number": "ACC4711", "participant": "nope", "event": "baseline_arm_1"}, headers=auth)
    assert bad.status_code == 400 and "pattern" in bad.get_json()["error"]
    missing = c.post("/api/v1/assign", json={"accession_number": "NOPE", "participant": "A-001", "event": "baseline_arm_1"}, headers=auth)
    assert missing.status_code == 404
    ok = c.post("/api/v1/assign", json={"accession_number": "ACC4711", "participant": "A-001", "event": "baseline_arm_1"}, headers=auth)
    assert ok.status_code == 201 and ok.get_json()["study_key"] == site.study_key
    [t] = c.get("/api/v1/transfers", headers=auth).get_json()["transfers"]
    assert t["participant"] == "A-001" and t["state"] == "requested"
    assert [s["study_key"] for s in c.get("/api/v1/studies", headers=auth).get_json()["studies"]] == [site.study_key]
    assert c.post(f"/api/v1/transfers/{site.study_key}/{t['instance']}/resend", headers=auth).get_json() == {"state": "requested"}
    stored = c.post("/api/v1/coupling", data=b"AccessionNumber,project,participant,event\nACC77,RESEARCH_A,A-005,baseline_arm_1\n", headers=auth)
    assert stored.status_code == 201
    status = c.get("/api/v1/status", headers=auth).get_json()
    assert status["project"] == "RESEARCH_A" and status["redcap_ok"] is True


def test_api_write_needs_import_rights(site, live_redcap):
    pid = live_redcap.project_id(site.research_token)
    reader = live_redcap.user("carol", pid, api_export=1)
    c = site.app.test_client()
    auth = {"Authorization": f"Bearer {reader}"}
    assert c.get("/api/v1/transfers", headers=auth).status_code == 200
    resp = c.post("/api/v1/assign", json={"accession_number": "ACC4711", "participant": "A-001", "event": "baseline_arm_1"}, headers=auth)
    assert resp.status_code == 403 and "import rights" in resp.get_json()["error"]


def test_openapi_document(site):
    doc = site.app.test_client().get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.") and {"/assign", "/transfers", "/studies", "/coupling", "/status"} <= set(doc["paths"])


def test_health(site):
    assert site.app.test_client().get("/health").get_json()["status"] == "ok"


def test_redcap_outage_gives_a_clear_page_and_changes_nothing(site, live_redcap):
    c = site.app.test_client()
    login(c, "alice")
    token = csrf(c.get("/assign"))
    live_redcap.stop()
    try:
        resp = c.post(f"/assign/{site.study_key}", data={"project": "RESEARCH_A", "participant": "A-002", "event": "baseline_arm_1", "csrf_token": token})
        assert resp.status_code == 503 and "REDCap cannot be reached" in resp.get_data(as_text=True)
    finally:
        live_redcap.start()
    assert transfers_of(site) == []
