"""The Projects registry: research projects that receive images, read over PyCap.

A project's events and participants come from the project's own REDCap when the registry
names one (URL + a token *reference*; the token itself lives in FIONA's config/secret store),
else from the registry's event list.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from redcap import Project

from ..config import Config
from . import client

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{5,20}$")


class ProjectError(Exception):
    """A project cannot be used as configured; the message is for project staff."""


@dataclass
class ResearchProject:
    """One record of the Projects registry."""

    name: str
    title: str = ""
    active: bool = False
    participant_regex: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)
    redcap_url: str = ""
    token_ref: str = ""
    ethics_number: str = ""
    ethics_start: str = ""
    ethics_end: str = ""
    autoid: bool = False
    autoid_aet: str = ""
    destination: str = ""
    contact: str = ""
    record: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, rec: dict) -> "ResearchProject":
        return cls(
            name=rec.get("project_name", ""),
            title=rec.get("project_title", ""),
            active=rec.get("project_active") == "1",
            participant_regex=rec.get("project_participant_regex", "").strip(),
            events=parse_events(rec.get("project_events", "")),
            redcap_url=rec.get("project_redcap_url", "").strip(),
            token_ref=rec.get("project_token_ref", "").strip(),
            ethics_number=rec.get("project_ethics_number", ""),
            ethics_start=rec.get("project_ethics_start", ""),
            ethics_end=rec.get("project_ethics_end", ""),
            autoid=rec.get("project_autoid") == "1",
            autoid_aet=rec.get("project_autoid_aet", "").strip(),
            destination=rec.get("project_destination", "").strip(),
            contact=rec.get("project_contact", ""),
            record=rec,
        )

    # -- checks used by Assign, coupling lists and the scheduler ----------------------------
    def participant_pattern(self) -> re.Pattern:
        """The compiled, fully anchored participant pattern; ProjectError if it is not a valid regex."""
        if not self.participant_regex:
            raise ProjectError(f"project {self.name} has no participant ID pattern")
        try:
            return re.compile(self.participant_regex)
        except re.error as exc:
            raise ProjectError(f"project {self.name}: participant ID pattern is not a valid regular expression ({exc})") from None

    def participant_ok(self, participant: str) -> bool:
        return bool(participant) and self.participant_pattern().fullmatch(participant) is not None

    def ethics_problem(self, today: dt.date | None = None) -> str | None:
        """Why the ethics approval does not cover ``today``, or None."""
        today = today or dt.date.today()
        try:
            if self.ethics_start and today < dt.date.fromisoformat(self.ethics_start):
                return f"ethics approval of {self.name} starts on {self.ethics_start}"
            if self.ethics_end and today > dt.date.fromisoformat(self.ethics_end):
                return f"ethics approval of {self.name} ended on {self.ethics_end}"
        except ValueError:
            return f"project {self.name} has an unreadable ethics approval date"
        return None

    def assign_problem(self, participant: str, event: str, events: list[tuple[str, str]] | None = None) -> str | None:
        """Why (project, participant, event) cannot receive images now, or None."""
        if not self.active:
            return f"project {self.name} is not active"
        ethics = self.ethics_problem()
        if ethics:
            return ethics
        try:
            if not self.participant_ok(participant):
                return f"participant ID does not match the pattern of project {self.name} ({self.participant_regex})"
        except ProjectError as exc:
            return str(exc)
        known = [code for code, _ in (events if events is not None else self.events)]
        if event and known and event not in known:
            return f"event {event!r} does not exist in project {self.name}"
        if not event and known:
            return f"project {self.name} needs an event (one of {', '.join(known)})"
        return None


def parse_events(text: str) -> list[tuple[str, str]]:
    """``code, label`` per line (label optional) → [(code, label)]."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        code, _, label = line.partition(",")
        out.append((code.strip(), label.strip() or code.strip()))
    return out


def load_projects(cfg: Config, active_only: bool = False) -> list[ResearchProject]:
    rows = client.export_records(client.control_project(cfg, "projects"))
    projects = [ResearchProject.from_record(r) for r in rows if r.get("project_name")]
    return [p for p in projects if p.active] if active_only else projects


def get_project(cfg: Config, name: str) -> ResearchProject | None:
    rows = client.export_records(client.control_project(cfg, "projects"), records=[name])
    return ResearchProject.from_record(rows[0]) if rows else None


def save_project(cfg: Config, record: dict) -> None:
    """Create or update a registry record (used by tests, the CLI and admins' scripts)."""
    name = record.get("project_name", "")
    if not NAME_RE.match(name):
        raise ProjectError("project name must be 5-20 letters, digits, '_' or '-'")
    client.import_records(client.control_project(cfg, "projects"), [record])


def own_redcap(cfg: Config, project: ResearchProject) -> Project | None:
    """PyCap Project for the research project's own REDCap, or None if it has none."""
    if not project.redcap_url:
        return None
    token = cfg.research_token(project.token_ref) if project.token_ref else None
    if not token:
        raise ProjectError(f"project {project.name}: no API token named {project.token_ref!r} in FIONA's configuration")
    return client.project(project.redcap_url, token, cfg.redcap_timeout, cfg.raw["redcap"]["verify_ssl"])


def project_events(cfg: Config, project: ResearchProject) -> list[tuple[str, str]]:
    """Events of the project: its own REDCap's events if longitudinal, else the registry's list."""
    rc = own_redcap(cfg, project)
    if rc is not None and client.call(lambda: rc.is_longitudinal):
        events = client.call(rc.export_events)
        return [(e["unique_event_name"], e.get("event_name") or e["unique_event_name"]) for e in events]
    return project.events


def project_participants(cfg: Config, project: ResearchProject) -> list[str]:
    """Existing participant IDs: the record IDs of the project's own REDCap, if it has one."""
    rc = own_redcap(cfg, project)
    if rc is None:
        return []
    rows = client.export_records(rc, fields=[rc.def_field])
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row[rc.def_field], None)
    return list(seen)
