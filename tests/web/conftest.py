"""A FIONA with one research project (its own REDCap on the embedded server), users with different rights,
and a complete study in Incoming."""

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from redcap import Project

from fiona_redcap.embedded_redcap import admin
from fiona_redcap.embedded_redcap.api import normalize_dictionary
from fiona_redcap.state import client, incoming, projects
from fiona_redcap.web import create_app
from tests.fixtures.redcap import make_fiona_data_dir

IMAGING = Path(__file__).resolve().parents[2] / "instruments" / "imaging" / "data_dictionary.csv"


@dataclass
class Site:
    cfg: object
    app: object
    server: object
    study_key: str
    study_uid: str
    research_token: str
    other_token: str


def add_study(cfg, study_uid="1.2.3.4.5", accession="ACC4711", description="MRI <b>BRAIN</b>", key=None) -> str:
    from fiona_redcap.datadir import study_key

    key = key or study_key(cfg, study_uid)
    values = {"key": key, "site": "main", "calling_aet": "MODALITY", "called_aet": "FIONA", "accession": accession, "patient_hash": "ab" * 16,
              "date": "2024-03-05", "time": "10:15:00", "description": description, "modalities": "MR", "num_series": 1, "num_images": 3,
              "first_arrival": "2026-11-25 01:00:00", "last_arrival": incoming.redcap_time(__import__("time").time()), "state": "complete",
              "completed_at": "2026-11-25 01:01:00"}
    series = [{"series_uid": study_uid + ".1", "series_number": "1", "series_description": "T1", "modality": "MR", "images": 3, "classification": ["mr"]}]
    incoming.write_study(client.control_project(cfg, "incoming"), incoming.study_rows(study_uid, values, series, {study_uid + ".1": 1}))
    return key


@pytest.fixture
def site(live_redcap, tmp_path) -> Site:
    with open(IMAGING, newline="") as fh:
        dictionary = normalize_dictionary(list(csv.DictReader(fh)))
    token = live_redcap.new_project("Research A", longitudinal=True, dictionary=dictionary, events=[("Baseline", 1), ("Week 12", 1)],
                                    repeating=[("imaging", "baseline_arm_1")])
    Project(live_redcap.url, token, timeout=30).import_records([{"record_id": "A-001", "redcap_event_name": "baseline_arm_1"}])
    pid = live_redcap.project_id(token)
    alice = live_redcap.user("alice", pid, api_export=1, api_import=1, record_create=1)
    live_redcap.user("bob", pid, api_export=1)
    other = live_redcap.new_project("Unrelated")
    cfg = make_fiona_data_dir(tmp_path / "data", live_redcap, {
        "web": {"assign_users": ["alice"], "secret_key": "test-secret-key", "sso_secret": "sso-test-secret"},
        "redcap": {"research_tokens": {"research-a": token}},
    })
    projects.save_project(cfg, {
        "project_name": "RESEARCH_A", "project_title": "Research A", "project_active": "1", "project_participant_regex": r"A-\d{3}",
        "project_redcap_url": live_redcap.url, "project_token_ref": "research-a", "project_ethics_end": "2099-12-31",
    })
    projects.save_project(cfg, {"project_name": "CLOSED_B", "project_active": "0", "project_participant_regex": r"B\d+"})
    uid = "1.2.3.4.5"
    key = add_study(cfg, uid)
    app = create_app(cfg)
    app.config["TESTING"] = True
    return Site(cfg, app, live_redcap, key, uid, alice, other)


def csrf(response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def login(client_, user: str, password: str | None = None):
    page = client_.get("/login")
    return client_.post("/login", data={"username": user, "password": password or f"{user}-password", "csrf_token": csrf(page)})
