"""A whole FIONA for pipeline tests: embedded REDCap, the real receiver, Orthanc as research PACS.

``pipeline`` gives a data directory whose control projects live in the session's embedded
REDCap, whose default destination is the session's Orthanc, and whose receiver (``fiona scp``)
is started on demand. Studies reach Incoming the real way: dcmtk ``storescu`` → receiver →
quarantine → REDCap.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redcap import Project

from fiona_redcap.config import Config
from fiona_redcap.redcap_install import load_instrument
from fiona_redcap.state import client, coupling, projects, transfers
from scheduler.context import Context
from scheduler.jobs import run_job
from tests.fixtures.dicom import Study, free_port, make_study, storescu, wait_for
from tests.fixtures.redcap import make_fiona_data_dir

QUIET = 1.0


@dataclass
class Pipeline:
    cfg: Config
    server: object
    pacs: object
    scp_factory: object
    tmp: Path
    research_tokens: dict[str, str] = field(default_factory=dict)
    scp: object = None
    _ctx: Context | None = None

    # -- set-up helpers ----------------------------------------------------------------------
    def research_project(self, name: str, regex: str = r"P[0-9]{3}", events: str = "", autoid_aet: str = "",
                         redcap: bool = True, **extra) -> Project | None:
        """Register a research project (with its own REDCap holding the Imaging instrument)."""
        record = {"project_name": name, "project_title": f"Test {name}", "project_active": "1",
                  "project_participant_regex": regex, "project_events": events,
                  "project_autoid": "1" if autoid_aet else "0", "project_autoid_aet": autoid_aet,
                  "project_ethics_start": "2020-01-01", "project_ethics_end": "2099-12-31", "project_complete": "2"}
        record.update(extra)
        rc = None
        if redcap:
            dictionary, _, _ = load_instrument("imaging")
            token = self.server.new_project(f"research {name}", dictionary=dictionary, repeating=[("imaging", "")])
            ref = f"{name.lower()}-token"
            self.research_tokens[ref] = token
            self._edit_config(lambda raw: raw["redcap"].__setitem__("research_tokens", dict(self.research_tokens)))
            record.update(project_redcap_url=self.server.url, project_token_ref=ref)
            rc = Project(self.server.url, token, timeout=30)
        projects.save_project(self.cfg, record)
        return rc

    def couple(self, key: str, project: str, participant: str, event: str = "", key_type: str = "accession",
               expires: str = "") -> None:
        entry = coupling.CouplingEntry(key_type=key_type, key=key, project=project, participant=participant, event=event,
                                       expires=expires)
        coupling.store(client.control_project(self.cfg, "coupling"), [entry], uploaded_by="test")

    def _edit_config(self, change) -> None:
        raw = json.loads((self.cfg.data_dir / "config.json").read_text())
        change(raw)
        (self.cfg.data_dir / "config.json").write_text(json.dumps(raw))
        self.cfg = Config.load(None, self.cfg.data_dir)
        self._ctx = None

    def add_site(self, name: str, aet: str) -> int:
        """Another receiving site (its own AE title and port), e.g. a project's AutoID AE title."""
        port = free_port()
        self._edit_config(lambda raw: raw.setdefault("sites", []).append({"name": name, "aet": aet, "port": port}))
        return port

    def start_receiver(self):
        if self.scp is None:
            self.scp = self.scp_factory(self.cfg.data_dir)
        return self.scp

    def send(self, study: Study | Path, called: str = "FIONA", port: int | None = None) -> None:
        scp = self.start_receiver()
        folder = study.folder if isinstance(study, Study) else study
        result = storescu(port or scp.port, folder, aet=called)
        assert result.returncode == 0, result.stderr[-2000:]

    def wait_incoming(self, study_uid: str, timeout: float = 30) -> dict:
        proj = client.control_project(self.cfg, "incoming")

        def complete():
            rows = [r for r in proj.export_records(records=[study_uid]) if not r.get("redcap_repeat_instrument")]
            return rows[0] if rows and rows[0].get("study_state") == "complete" else None

        return wait_for(complete, timeout, what="the study in Incoming")

    # -- running jobs ------------------------------------------------------------------------
    @property
    def ctx(self) -> Context:
        if self._ctx is None:
            self._ctx = Context(self.cfg)
        return self._ctx

    def run(self, *names: str) -> list[dict]:
        return [run_job(self.ctx, name) for name in names]

    def transfers(self, study_uid: str) -> list[transfers.Transfer]:
        return transfers.list_transfers(client.control_project(self.cfg, "incoming"), [study_uid])


class SchedulerService:
    """``fiona scheduler`` as a subprocess (the way ``fiona up`` runs it)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SchedulerService":
        log = open(self.cfg.data_dir / "scheduler.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "fiona_redcap.cli", "scheduler", "--data-dir", str(self.cfg.data_dir)],
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.proc.stdout.readline()
        assert "scheduler running (jobs:" in line, f"scheduler did not start: {line!r}; {self.log_text()[-2000:]}"
        return self

    def log_text(self) -> str:
        return (self.cfg.data_dir / "scheduler.log").read_text(errors="replace")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0


@pytest.fixture
def scheduler_factory():
    started: list[SchedulerService] = []

    def start(cfg: Config) -> SchedulerService:
        svc = SchedulerService(cfg).start()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


FAST_JOBS = {"anonymize-and-send": 0.5, "create-transfer-requests": 1, "populate-autoid": 1, "resend-project": 1, "verify": 1,
             "populate-projects": 1, "retention": 3600}


@pytest.fixture
def pipeline(live_redcap, research_pacs, scp_factory, tmp_path) -> Pipeline:
    cfg = make_fiona_data_dir(tmp_path / "fiona-data", live_redcap, overrides={
        "destinations": {"pacs": research_pacs.destination(timeout_seconds=10)},
        "default_destination": "pacs",
        "timing": {"quiet_period_seconds": QUIET, "job_intervals_seconds": FAST_JOBS},
        "transfer": {"backoff_first_seconds": 1, "backoff_factor": 2, "max_attempts": 3},
    })
    return Pipeline(cfg, live_redcap, research_pacs, scp_factory, tmp_path)


def study_files_identifiers(study: Study) -> list[str]:
    """Every identifying value planted in a synthetic study (to search the research PACS for)."""
    from pydicom import dcmread

    ident = study.identity
    values = [ident.patient_id, ident.accession, ident.institution, "DOE", "JANE", "HOUSE", study.study_uid] + study.series_uids
    values += [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in study.files]
    return values


@pytest.fixture
def new_study(tmp_path):
    counter = iter(range(1000))

    def make(series: int = 2, images: int = 3, **kwargs) -> Study:
        return make_study(tmp_path / f"study{next(counter)}", series=series, images=images, **kwargs)

    return make
