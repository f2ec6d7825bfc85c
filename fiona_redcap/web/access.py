"""Rights, asked of REDCap: who may assign, see and resend for which research project.

Quarantined studies are identifying, so seeing and assigning them needs FIONA's "assign" right
(``web.assign_users`` or a REDCap super user of the embedded server). Assigning to a project
also needs record-create rights in that project's own REDCap (its ``content=user`` export, read
with the project's configured token); Review and resend need the user to be a member of it.
Answers are cached for a minute.
"""

from __future__ import annotations

import threading
import time

from ..config import Config
from ..state import client, projects as projects_state
from ..state.projects import ResearchProject

TTL = 60.0


class Access:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._cache: dict[tuple, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: tuple, fn):
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < TTL:
                return hit[1]
        value = fn()
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- users ---------------------------------------------------------------------------------
    def is_super(self, user: str) -> bool:
        db = self.cfg.embedded_redcap_db
        if db is None or not db.exists():
            return False
        from ..embedded_redcap import admin

        return admin.is_super_user(db, user)

    def may_see_quarantine(self, user: str) -> bool:
        return user in self.cfg.raw["web"].get("assign_users", []) or self.is_super(user)

    # -- projects --------------------------------------------------------------------------------
    def all_projects(self) -> dict[str, ResearchProject]:
        return self._cached(("projects",), lambda: {p.name: p for p in projects_state.load_projects(self.cfg)})

    def membership(self, user: str, project: ResearchProject) -> dict | None:
        """The user's REDCap rights in the project's own REDCap (None: not a member or no REDCap)."""
        def fetch():
            rc = projects_state.own_redcap(self.cfg, project)
            if rc is None:
                return {}
            return {u["username"]: u for u in client.call(rc.export_users)}

        try:
            users = self._cached(("users", project.name), fetch)
        except (projects_state.ProjectError, client.RedcapUnavailable, client.RedcapRejected):
            return None
        return users.get(user)

    def can(self, user: str, project: ResearchProject, right: str) -> bool:
        """right: "view" (review, transfer list), "resend", or "assign" (needs the quarantine right too)."""
        if right == "assign" and (not self.may_see_quarantine(user) or not project.active):
            return False
        if not project.redcap_url:
            return self.may_see_quarantine(user)
        member = self.membership(user, project)
        if member is None:
            return self.is_super(user) and right != "assign"
        if right == "assign":
            return str(member.get("record_create", 0)) == "1"
        return True

    def projects_for(self, user: str, right: str) -> list[ResearchProject]:
        return [p for p in self.all_projects().values() if self.can(user, p, right)]

    def events(self, project: ResearchProject) -> list[tuple[str, str]]:
        return self._cached(("events", project.name), lambda: projects_state.project_events(self.cfg, project))

    def participants(self, project: ResearchProject) -> list[str]:
        return self._cached(("participants", project.name), lambda: projects_state.project_participants(self.cfg, project))
