"""The pages in real Chromium: assign a study, upload a coupling list with a bad row, resend a failed transfer."""

from fiona_redcap.state import client, coupling, transfers
from tests.fixtures.browser import screenshot


def sign_in(page, base, user="alice"):
    page.goto(f"{base}/login")
    page.fill("#username", user)
    page.fill("#password", f"{user}-password")
    page.click("button[type=submit]")


def test_assign_a_study_in_the_browser(site, page, serve):
    base = serve(site.app)
    sign_in(page, base)
    assert page.locator("#studies").inner_text().count("ACC4711") == 1
    screenshot(page, "assign-list")
    page.click(f"a[href='/assign/{site.study_key}']")
    page.select_option("#project", "RESEARCH_A")
    page.click("text=Choose")
    page.fill("#participant", "A-009")
    page.select_option("#event", "week_12_arm_1")
    screenshot(page, "assign-form")
    page.click("#next")
    assert page.inner_text("#c-participant") == "A-009" and page.inner_text("#c-event") == "Week 12"
    screenshot(page, "assign-confirm")
    page.click("#confirm")
    assert "Assigned to RESEARCH_A, participant A-009" in page.inner_text(".flash")
    screenshot(page, "assign-done")
    [t] = transfers.list_transfers(client.control_project(site.cfg, "incoming"))
    assert (t.participant, t.event, t.requested_by, t.source) == ("A-009", "week_12_arm_1", "alice", "assign")


def test_participant_pattern_is_checked_live_in_the_browser(site, page, serve):
    base = serve(site.app)
    sign_in(page, base)
    page.goto(f"{base}/assign/{site.study_key}?project=RESEARCH_A")
    page.fill("#participant", "wrong")
    valid = page.evaluate("document.querySelector('#participant').checkValidity()")
    assert valid is False  # the browser refuses to submit before the server would


def test_coupling_upload_with_a_bad_row_is_shown_and_nothing_stored(site, page, serve, tmp_path):
    base = serve(site.app)
    sign_in(page, base)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("AccessionNumber,project,participant,event\nACC4711,RESEARCH_A,A-001,baseline_arm_1\nACC5,RESEARCH_A,ZZZ,baseline_arm_1\n")
    page.goto(f"{base}/coupling")
    page.set_input_files("#file", str(csv_file))
    page.click("#upload")
    errors = page.inner_text("#errors")
    assert "Nothing was stored" in errors and "line 3" in errors and "does not match the pattern" in errors
    screenshot(page, "coupling-bad-row")
    assert coupling.list_entries(coupling.coupling_project(site.cfg)) == []


def test_status_page_shows_a_failed_transfer_and_resends_it(site, page, serve):
    proj = client.control_project(site.cfg, "incoming")
    transfers.request(proj, site.study_uid, "RESEARCH_A", "A-001", "baseline_arm_1", "alice", "assign")
    [t] = transfers.list_transfers(proj)
    transfers.update(proj, t, state="failed", attempts=6, last_error="the research PACS did not answer (connection refused)")
    base = serve(site.app)
    sign_in(page, base)
    page.goto(f"{base}/status")
    assert "connection refused" in page.inner_text("#failures")
    screenshot(page, "status-failed")
    page.click("#failures button")
    assert "Resend requested" in page.inner_text(".flash")
    [again] = transfers.list_transfers(proj)
    assert again.state == "requested"
