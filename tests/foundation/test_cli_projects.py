"""`fiona project add/list`: the Projects registry for the embedded default, with readable errors."""

import subprocess
import sys

from fiona_redcap.state.projects import get_project


def run(cfg, *args):
    return subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "project", *args, "--data-dir", str(cfg.data_dir)],
                          capture_output=True, text=True, timeout=60)


def test_add_and_list_projects(fiona_control):
    ok = run(fiona_control, "add", "STUDY_ONE", "--participant-regex", "S1-[0-9]{3}", "--event", "baseline:Baseline", "--event", "week12",
             "--ethics-end", "2099-12-31", "--option", "clean-descriptors")
    assert ok.returncode == 0, ok.stderr
    project = get_project(fiona_control, "STUDY_ONE")
    assert project.active and project.events == [("baseline", "Baseline"), ("week12", "week12")] and project.participant_ok("S1-001")
    assert project.record["deid_options___clean_descriptors"] == "1" and project.record["deid_options___retain_uids"] == "0"
    listing = run(fiona_control, "list")
    assert "STUDY_ONE" in listing.stdout and "baseline, week12" in listing.stdout


def test_bad_project_input_is_explained(fiona_control):
    bad_regex = run(fiona_control, "add", "STUDY_TWO", "--participant-regex", "S2-[0-9")
    assert bad_regex.returncode == 2 and "not a valid regular expression" in bad_regex.stderr
    bad_name = run(fiona_control, "add", "X", "--participant-regex", "S.*")
    assert bad_name.returncode == 2 and "5-20 letters" in bad_name.stderr
    bad_date = run(fiona_control, "add", "STUDY_TWO", "--participant-regex", "S.*", "--ethics-end", "31.12.2099")
    assert bad_date.returncode == 2 and "project_ethics_end" in bad_date.stderr
