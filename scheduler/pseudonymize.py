"""The bridge to the pseudonymization engine (``fiona_redcap.deid``), mapping its refusal to ours."""

from __future__ import annotations

from pathlib import Path

from fiona_redcap.config import Config
from fiona_redcap.state.projects import ResearchProject


def pseudonymize(cfg: Config, project: ResearchProject, files: list[Path], out_dir: Path, participant: str, event: str,
                 classifications: dict[str, list[str]]):
    """Pseudonymize a study into ``out_dir``; raises ``send.Refused`` with the engine's reason if it refuses."""
    from fiona_redcap.deid import DeidRefused, ProjectPolicy, Pseudonymizer, project_key

    from .send import Refused

    deid = cfg.raw["deid"]
    try:
        policy = ProjectPolicy.from_registry(project.record, uid_root=deid.get("uid_root"),
                                             date_shift_max_days=int(deid.get("date_shift_max_days", 365)))
        key, key_id = project_key(cfg.data_dir, project.name)
        return Pseudonymizer(policy, key, key_id).study(files, out_dir, participant, event=event, classifications=classifications)
    except DeidRefused as exc:
        reason = exc.args[0] if exc.args else "no reason given"
        raise Refused(f"pseudonymization refused: {reason}") from None
