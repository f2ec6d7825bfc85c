"""The scheduler's jobs by name, each ``job(ctx) -> summary dict``, and their default intervals."""

from __future__ import annotations

from typing import Callable

from . import assign, research, retention, send
from .context import Context


def populate_incoming(ctx: Context) -> dict:
    """Flush the receiver's REDCap outbox (the receiver does this itself; this is the manual lever)."""
    from fiona_redcap.quarantine import quarantines
    from scp.completion import Completion

    completion = Completion(ctx.cfg, quarantines(ctx.cfg))
    return {"written": completion.flush(), "error": completion.last_error}


def populate_autoid(ctx: Context) -> dict:
    return {"created": assign.create_requests(ctx, sources=frozenset({"autoid"}))}


def create_transfer_requests(ctx: Context) -> dict:
    ctx.refresh_lists(force=True)
    return {"created": assign.create_requests(ctx, sources=frozenset({"coupling", "routing"}))}


JOBS: dict[str, tuple[Callable[[Context], dict], float]] = {
    "populate-autoid": (populate_autoid, 10),
    "create-transfer-requests": (create_transfer_requests, 10),
    "anonymize-and-send": (send.anonymize_and_send, 2),
    "resend-project": (send.resend_project, 15),
    "verify": (send.verify_sent, 60),
    "populate-projects": (research.run, 60),
    "retention": (retention.run, 3600),
}
MANUAL_ONLY = {"populate-incoming": populate_incoming}


def run_job(ctx: Context, name: str) -> dict:
    """Run one job once under the context lock: replay queued writes, poll Incoming, then the job."""
    fn = JOBS[name][0] if name in JOBS else MANUAL_ONLY[name]
    with ctx.lock:
        if name in MANUAL_ONLY:
            return fn(ctx)
        ctx.flush_outbox()
        ctx.poll()
        return fn(ctx)
