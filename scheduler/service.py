"""``fiona scheduler``: the jobs on an APScheduler, with a status file as health check.

Every job has at most one running instance and coalesces missed runs; intervals come from
``timing.job_intervals_seconds.<job>``. All jobs share one :class:`Context` and run one at a
time (its lock), because they read and write the same transfers. The status file
``<data>/status/scheduler.json`` holds the last run and outcome of each job; ``fiona status``
and the web status page read it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from apscheduler.schedulers.background import BackgroundScheduler

from fiona_redcap import logs
from fiona_redcap.config import Config
from fiona_redcap.quarantine import read_json, write_json_atomic

from .context import Context, safe_reason
from .jobs import JOBS, run_job

log = logs.get_logger("fiona.scheduler")


class Status:
    """The health file: per job last run, outcome, duration, summary or error."""

    def __init__(self, cfg: Config, ctx: Context, manual: bool = False) -> None:
        self.manual = manual  # `fiona run-job`: add its job's line to the service's file, touch nothing else
        self.path = cfg.data_dir / "status" / "scheduler.json"
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ctx = ctx
        self.jobs: dict[str, dict] = {}
        self._lock = threading.Lock()

    def record(self, name: str, started: float, outcome: str, summary: dict | None = None, error: str = "") -> None:
        with self._lock:
            self.jobs[name] = {"last_run": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "outcome": outcome,
                               "seconds": round(time.time() - started, 3), "summary": summary or {}, "error": error}
            self.write()

    def write(self, running: bool = True) -> None:
        if self.manual:
            current = read_json(self.path) or {"service": "scheduler", "running": False}
            current.setdefault("jobs", {}).update(self.jobs)
            write_json_atomic(self.path, current)
            return
        alarms = [a for j in self.jobs.values() for a in (j.get("summary") or {}).get("alarms", [])]
        write_json_atomic(self.path, {
            "service": "scheduler", "pid": os.getpid(), "running": running, "updated": time.time(),
            "last_poll": self.ctx.last_poll.strftime("%Y-%m-%d %H:%M:%S") if self.ctx.last_poll else "",
            "outbox": len(self.ctx.outbox.items()), "alarms": alarms, "jobs": self.jobs,
        })


def guarded(ctx: Context, status: Status, name: str) -> dict | None:
    """Run a job and record its outcome; an exception is logged and shown, never kills the service."""
    if not ctx.lock.acquire(timeout=1):
        return None  # another job is running; this one runs at its next interval
    started = time.time()
    try:
        summary = run_job(ctx, name)
    except Exception as exc:
        error = safe_reason(exc)[:500]
        logs.log_event(log, "job.error", logging.ERROR, job=name, error=error)
        status.record(name, started, "error", error=error)
        return None
    finally:
        ctx.lock.release()
    busy = {k: v for k, v in summary.items() if v not in (0, [], "", None)}
    if busy:
        logs.log_event(log, "job.done", job=name, seconds=round(time.time() - started, 2), **{k.replace("-", "_"): v for k, v in busy.items()})
    status.record(name, started, "ok", summary)
    return summary


def serve(cfg: Config, stop: threading.Event) -> int:
    # "skipped: maximum number of running instances reached" is the normal state of a busy job, not a warning.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    ctx = Context(cfg)
    status = Status(cfg, ctx)
    status.write()
    print(f"scheduler running (jobs: {', '.join(JOBS)})", flush=True)
    logs.log_event(log, "scheduler.started", jobs=",".join(JOBS))
    try:
        with ctx.lock:
            ctx.warm_up()
    except Exception as exc:  # REDCap may be down at start: the jobs report it and retry
        logs.log_event(log, "scheduler.warm_up_failed", logging.WARNING, error=safe_reason(exc)[:300])
    scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 30})
    for name, (_, default) in JOBS.items():
        # Every job runs once at start, so a restart finishes interrupted work at once.
        scheduler.add_job(guarded, "interval", args=(ctx, status, name), seconds=cfg.job_interval(name, default),
                          id=name, name=name, next_run_time=_now())
    scheduler.start()
    while not stop.wait(5):
        status.write()
    scheduler.shutdown(wait=True)
    status.write(running=False)
    logs.log_event(log, "scheduler.stopped")
    return 0


def _now():
    import datetime as dt

    return dt.datetime.now().astimezone()
