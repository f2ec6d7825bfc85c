"""`fiona redcap install`: creates the control projects from instruments/, then changes nothing."""

import subprocess
import sys
from pathlib import Path

from redcap import Project

from fiona_redcap.embedded_redcap.odm import design_from_dictionary, write_project
from fiona_redcap.state import client

INSTRUMENTS = Path(__file__).resolve().parents[2] / "instruments"


def test_committed_project_xml_is_what_the_generator_writes():
    for folder in sorted(p for p in INSTRUMENTS.iterdir() if p.is_dir()):
        info, design = design_from_dictionary(folder / "data_dictionary.csv", folder / "project.json")
        assert (folder / "project.xml").read_text() == write_project(info, design), f"regenerate {folder.name}: python -m fiona_redcap.embedded_redcap.odm instruments"


def test_install_is_idempotent_and_reports_changes(fiona_control):
    cfg = fiona_control
    args = [sys.executable, "-m", "fiona_redcap.cli", "redcap", "install", "--data-dir", str(cfg.data_dir)]
    second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "no changes"
    incoming = client.control_project(cfg, "incoming")
    assert {r["form_name"] for r in incoming.export_repeating_instruments_events()} == {"series", "transfers"}
    assert incoming.def_field == "study_uid"
    coupling = client.control_project(cfg, "coupling")
    assert coupling.export_project_info()["record_autonumbering_enabled"] == 1

    # A drifted dictionary is put back, and only that is reported.
    meta = incoming.export_metadata()
    incoming.import_metadata([m for m in meta if m["field_name"] != "study_time"])
    third = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert third.stdout.strip() == f"incoming: data dictionary updated ({len(meta)} fields)"
    assert any(m["field_name"] == "study_time" for m in incoming.export_metadata())


def test_install_without_token_or_super_token_explains_what_to_do(live_redcap, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "config.json").write_text('{"data_dir": ".", "redcap": {"url": "%s"}}' % live_redcap.url)
    proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "redcap", "install", "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "no working API token for the projects project and no super token" in proc.stderr


def test_every_data_dictionary_imports(live_redcap):
    """Each dictionary in instruments/ (imaging template included) imports into a fresh project."""
    import csv

    from fiona_redcap.embedded_redcap.api import normalize_dictionary

    for folder in sorted(p for p in INSTRUMENTS.iterdir() if p.is_dir()):
        with open(folder / "data_dictionary.csv", newline="") as fh:
            rows = normalize_dictionary(list(csv.DictReader(fh)))
        project = Project(live_redcap.url, live_redcap.new_project(folder.name), timeout=30)
        assert project.import_metadata(rows) == len(rows)
