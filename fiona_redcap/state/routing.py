"""Routing rules: send data that arrives already pseudonymized straight to a project.

A rule matches on called/calling AE title and PatientID/PatientName, each a regular
expression that must match the *whole* value (an empty pattern matches anything). A rule
whose pattern does not compile is reported, never treated as "match everything".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redcap import Project

from ..config import Config
from . import client

FIELDS = ("called_aet", "calling_aet", "patient_id_regex", "patient_name_regex")


class RuleError(Exception):
    """A routing rule cannot be used (invalid regular expression)."""


@dataclass
class RoutingRule:
    id: str
    active: bool
    called_aet: str
    calling_aet: str
    patient_id_regex: str
    patient_name_regex: str
    project: str
    event: str = ""

    @classmethod
    def from_row(cls, row: dict) -> "RoutingRule":
        return cls(
            id=row.get("routing_id", ""),
            active=row.get("routing_active") == "1",
            called_aet=row.get("routing_called_aet", "").strip(),
            calling_aet=row.get("routing_calling_aet", "").strip(),
            patient_id_regex=row.get("routing_patient_id_regex", "").strip(),
            patient_name_regex=row.get("routing_patient_name_regex", "").strip(),
            project=row.get("routing_project", "").strip(),
            event=row.get("routing_event", "").strip(),
        )

    def patterns(self) -> dict[str, re.Pattern | None]:
        out = {}
        for name in FIELDS:
            text = getattr(self, name)
            try:
                out[name] = re.compile(text) if text else None
            except re.error as exc:
                raise RuleError(f"routing rule {self.id}: {name} is not a valid regular expression ({exc})") from None
        return out

    def matches(self, called_aet: str, calling_aet: str, patient_id: str, patient_name: str) -> bool:
        if not self.active:
            return False
        values = dict(called_aet=called_aet, calling_aet=calling_aet, patient_id_regex=patient_id, patient_name_regex=patient_name)
        for name, pattern in self.patterns().items():
            if pattern is not None and pattern.fullmatch((values[name] or "").strip()) is None:
                return False
        return True


def routing_project(cfg: Config) -> Project:
    return client.control_project(cfg, "routing")


def list_rules(proj: Project) -> list[RoutingRule]:
    return [RoutingRule.from_row(r) for r in client.export_records(proj) if r.get("routing_project")]
