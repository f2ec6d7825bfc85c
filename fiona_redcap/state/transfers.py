"""Transfer requests: the repeating ``transfers`` instrument of the Incoming project.

A transfer is one (study → project, participant, event) request and its progress
``requested → processing → sent → verified`` or ``failed``. New requests are created with
``redcap_repeat_instance: "new"`` so that REDCap allocates the instance number atomically:
two writers (the Assign page and the scheduler, say) can never take the same instance.
Updates write only the fields they change, on their own instance.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields as dc_fields

from redcap import Project

from ..config import Config
from . import client

INSTRUMENT = "transfers"
STATES = ("requested", "processing", "sent", "verified", "failed")
SOURCES = ("form", "assign", "api", "coupling", "routing", "autoid")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def now_text() -> str:
    """REDCap's datetime_seconds_ymd for the current local time (REDCap stores server-local times)."""
    return dt.datetime.now().strftime(TIME_FORMAT)


def parse_time(text: str) -> dt.datetime | None:
    if not text:
        return None
    for fmt in (TIME_FORMAT, "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


@dataclass
class Transfer:
    """One ``transfers`` instance; attribute names are the field names without ``transfer_``."""

    study_uid: str
    instance: int
    requested_at: str = ""
    project: str = ""
    participant: str = ""
    event: str = ""
    requested_by: str = ""
    source: str = ""
    state: str = ""
    attempts: int = 0
    next_attempt: str = ""
    last_error: str = ""
    sent_at: str = ""
    verified_at: str = ""
    mapped_study_uid: str = ""
    images_sent: int = 0
    images_verified: int = 0
    destination: str = ""
    lease: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_row(cls, row: dict) -> "Transfer":
        def num(name: str) -> int:
            try:
                return int(row.get(f"transfer_{name}") or 0)
            except ValueError:
                return 0

        kwargs = {}
        for f in dc_fields(cls):
            if f.name in ("study_uid", "instance", "extra"):
                continue
            if f.type in ("int", int):
                kwargs[f.name] = num(f.name)
            else:
                kwargs[f.name] = row.get(f"transfer_{f.name}", "") or ""
        t = cls(study_uid=row["study_uid"], instance=int(row["redcap_repeat_instance"]), **kwargs)
        t.state = t.state or "requested"  # a person filling the form may leave the state empty
        return t

    @property
    def needs_send(self) -> bool:
        """Requested, or a resend was asked for (requested date later than sent date)."""
        if self.state == "requested":
            return True
        if self.state in ("sent", "verified", "failed") and self.sent_at:
            req, sent = parse_time(self.requested_at), parse_time(self.sent_at)
            return bool(req and sent and req > sent)
        return False

    def key(self) -> tuple[str, int]:
        return (self.study_uid, self.instance)


def _row(study_uid: str, instance: int | str, values: dict) -> dict:
    row = {"study_uid": study_uid, "redcap_repeat_instrument": INSTRUMENT, "redcap_repeat_instance": str(instance)}
    for key, value in values.items():
        row[key if key.startswith("transfer_") else f"transfer_{key}"] = "" if value is None else str(value)
    return row


def incoming(cfg: Config) -> Project:
    return client.control_project(cfg, "incoming")


def request(
    proj: Project,
    study_uid: str,
    project: str,
    participant: str,
    event: str = "",
    requested_by: str = "",
    source: str = "assign",
) -> None:
    """Create a new transfer request (atomic instance allocation by REDCap)."""
    if source not in SOURCES:
        raise ValueError(f"unknown transfer source {source!r}")
    row = _row(
        study_uid,
        "new",
        {
            "requested_at": now_text(),
            "project": project,
            "participant": participant,
            "event": event,
            "requested_by": requested_by,
            "source": source,
            "state": "requested",
            "attempts": 0,
        },
    )
    row["transfers_complete"] = "2"
    client.import_records(proj, [row])


def update(proj: Project, transfer: Transfer, **values) -> None:
    """Write the given fields of one transfer instance (empty string clears a field)."""
    client.import_records(proj, [_row(transfer.study_uid, transfer.instance, values)], overwrite="overwrite")
    for key, value in values.items():
        if hasattr(transfer, key):
            setattr(transfer, key, value)


def resend(proj: Project, transfer: Transfer, requested_by: str) -> None:
    """Ask for the study to be sent again: a later request date and a fresh attempt budget."""
    update(proj, transfer, requested_at=now_text(), requested_by=requested_by, state="requested", attempts=0, next_attempt="", last_error="")


def list_transfers(
    proj: Project,
    study_uids: list[str] | None = None,
    since: dt.datetime | None = None,
    filter_logic: str | None = None,
) -> list[Transfer]:
    """Transfers of the given studies (or all), optionally only of records changed since ``since``."""
    kwargs: dict = {"forms": [INSTRUMENT]}
    if study_uids is not None:
        if not study_uids:
            return []
        kwargs["records"] = list(study_uids)
    if since is not None:
        kwargs["date_begin"] = since
    if filter_logic:
        kwargs["filter_logic"] = filter_logic
    rows = client.export_records(proj, **kwargs)
    return [Transfer.from_row(r) for r in rows if r.get("redcap_repeat_instrument") == INSTRUMENT and r.get("transfer_project")]
