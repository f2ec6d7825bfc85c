"""Configuration: one JSON file, validated against a shipped JSON Schema.

Secrets (REDCap tokens, web keys, SFTP passwords) may be literal strings in the file, or
``{"env": "VAR"}`` / ``{"file": "path"}`` references, so that a config can be shared without
its secrets. ``Config.masked()`` is the only form of the configuration that may be printed.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

DEFAULT_DATA_DIR = "./fiona-data"
CONFIG_NAME = "config.json"

#: Defaults merged under every loaded file; the schema documents each key.
DEFAULTS: dict[str, Any] = {
    "log": {"level": "INFO", "format": "kv"},
    "dicom": {
        "aet": "FIONA",
        "host": "127.0.0.1",
        "port": 11112,
        "allowed_calling_aets": [],
        "allowed_networks": ["127.0.0.0/8", "::1/128"],
        "max_pdu": 0,
        "min_free_mb": 100,
    },
    "sites": [],
    "redcap": {
        "url": "http://127.0.0.1:8081/api/",
        "timeout_seconds": 30,
        "verify_ssl": True,
        # Default: each control project's token in <data>/secrets/token-<name> (written by `fiona redcap install`).
        "tokens": {name: {"file": f"secrets/token-{name}"} for name in ("projects", "incoming", "coupling", "routing", "autoid")},
        "research_tokens": {},
        "embedded": {"enabled": True, "host": "127.0.0.1", "port": 8081},
    },
    "destinations": {},
    "web": {"host": "127.0.0.1", "port": 8080, "session_minutes": 480, "secure_cookies": False, "assign_users": []},
    "timing": {
        "quiet_period_seconds": 30,
        "retention_verified_days": 7,
        "retention_unassigned_days": 7,
        "job_intervals_seconds": {},
    },
    "transfer": {"backoff_first_seconds": 60, "backoff_factor": 2, "max_attempts": 6},
    "deid": {"date_shift_max_days": 365},
}

CONTROL_PROJECTS = ("projects", "incoming", "coupling", "routing", "autoid")
SECRET_PATHS = (
    ("redcap", "tokens", "*"),
    ("redcap", "research_tokens", "*"),
    ("web", "secret_key"),
    ("web", "sso_secret"),
    ("destinations", "*", "password"),
    ("destinations", "*", "private_key"),
)


class ConfigError(Exception):
    """A configuration that cannot be used; the message is meant for the operator."""


def _schema() -> dict:
    text = resources.files("fiona_redcap").joinpath("schemas/config.schema.json").read_text()
    return json.loads(text)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def _json_path(error: jsonschema.ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validate(raw: dict, source: str = "config") -> None:
    """Raise ConfigError listing every schema violation with its JSON path."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    lines = []
    for err in errors:
        best = jsonschema.exceptions.best_match([err])
        message = best.message
        if err.validator == "oneOf" and isinstance(err.instance, (dict, str)):
            message = f"{_short(err.instance)} is not valid here ({err.schema.get('description') or 'see the schema'})"
        if err.validator == "pattern" and err.schema.get("description"):
            message = f"{_short(err.instance)} is not valid: {err.schema['description']}"
        if err.validator == "additionalProperties":
            message = message.replace("Additional properties are not allowed", "unknown key(s) not allowed")
        lines.append(f"  at {_json_path(err)}: {message}")
    raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) < 60 else text[:57] + "..."


@dataclass
class Config:
    """The effective configuration: file values over defaults, validated."""

    raw: dict
    path: Path | None
    data_dir: Path

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None) -> "Config":
        """Load ``path`` (or ``<data_dir>/config.json`` if it exists, else defaults only).

        An explicit ``data_dir`` wins over the file's ``data_dir``.
        """
        file_path: Path | None = Path(path) if path else None
        if file_path is None:
            candidate = Path(data_dir or DEFAULT_DATA_DIR) / CONFIG_NAME
            file_path = candidate if candidate.exists() else None
        raw: dict = {}
        if file_path is not None:
            try:
                text = file_path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError(f"config file {file_path} does not exist") from None
            except OSError as exc:
                raise ConfigError(f"config file {file_path} cannot be read: {exc.strerror}") from None
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{file_path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
            if not isinstance(raw, dict):
                raise ConfigError(f"{file_path} must contain a JSON object at the top level")
        validate(raw, str(file_path or "config"))
        merged = _merge(DEFAULTS, raw)
        chosen = data_dir or raw.get("data_dir") or DEFAULT_DATA_DIR
        base = file_path.parent if (file_path is not None and not data_dir and raw.get("data_dir")) else Path.cwd()
        resolved = (base / chosen).resolve() if not Path(chosen).is_absolute() else Path(chosen)
        merged["data_dir"] = str(resolved)
        cfg = cls(raw=merged, path=file_path, data_dir=resolved)
        cfg._check_semantics()
        return cfg

    @classmethod
    def from_dict(cls, raw: dict, data_dir: str | os.PathLike) -> "Config":
        validate(raw)
        merged = _merge(DEFAULTS, raw)
        merged["data_dir"] = str(Path(data_dir).resolve())
        cfg = cls(raw=merged, path=None, data_dir=Path(data_dir).resolve())
        cfg._check_semantics()
        return cfg

    def _check_semantics(self) -> None:
        """Checks a schema cannot express: unique sites, known default destination, networks."""
        import ipaddress

        problems = []
        seen_ports: dict[int, str] = {self.raw["dicom"]["port"]: "$.dicom"}
        names = set()
        for i, site in enumerate(self.raw["sites"]):
            if site["name"] in names:
                problems.append(f"  at $.sites[{i}].name: site name {site['name']!r} is used twice")
            names.add(site["name"])
            if site["port"] in seen_ports:
                problems.append(f"  at $.sites[{i}].port: port {site['port']} is already used by {seen_ports[site['port']]}")
            seen_ports[site["port"]] = f"$.sites[{i}]"
        for where, nets in [("$.dicom.allowed_networks", self.raw["dicom"]["allowed_networks"])] + [
            (f"$.sites[{i}].allowed_networks", s.get("allowed_networks", [])) for i, s in enumerate(self.raw["sites"])
        ]:
            for net in nets:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    problems.append(f"  at {where}: {net!r} is not an IP network (e.g. 10.0.0.0/8)")
        default = self.raw.get("default_destination")
        if default and default not in self.raw["destinations"]:
            problems.append(f"  at $.default_destination: no destination named {default!r} in $.destinations")
        if problems:
            raise ConfigError(f"{self.path or 'config'} is invalid:\n" + "\n".join(problems))

    # -- secrets -----------------------------------------------------------------------------
    def resolve_secret(self, value: Any, where: str = "secret") -> str | None:
        """Turn a secret reference into its value; None if absent. Never logs the value."""
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if "env" in value:
            got = os.environ.get(value["env"])
            if not got:
                raise ConfigError(f"{where}: environment variable {value['env']} is not set")
            return got.strip()
        path = Path(value["file"])
        if not path.is_absolute():
            path = self.data_dir / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: secret file {path} cannot be read ({exc.strerror})") from None

    def redcap_token(self, project: str) -> str:
        """API token of a FIONA control project (projects, incoming, coupling, routing, autoid)."""
        env = os.environ.get(f"FIONA_REDCAP_TOKEN_{project.upper()}")
        if env:
            return env.strip()
        value = self.raw["redcap"]["tokens"].get(project)
        if value is None:
            raise ConfigError(f"$.redcap.tokens.{project}: no API token configured for the {project} project")
        return self.resolve_secret(value, f"$.redcap.tokens.{project}")

    def research_token(self, ref: str) -> str | None:
        """A research project's own REDCap token, by the reference stored in the registry."""
        value = self.raw["redcap"]["research_tokens"].get(ref)
        return self.resolve_secret(value, f"$.redcap.research_tokens.{ref}") if value is not None else None

    # -- convenient views --------------------------------------------------------------------
    @property
    def redcap_url(self) -> str:
        return self.raw["redcap"]["url"]

    @property
    def redcap_timeout(self) -> float:
        return float(self.raw["redcap"]["timeout_seconds"])

    def path_in_data(self, *parts: str) -> Path:
        return self.data_dir.joinpath(*parts)

    def sites(self) -> list[dict]:
        """Every receiving site: the main one (name ``main``) and each ``sites`` entry, with defaults filled."""
        main = dict(self.raw["dicom"], name="main", data_dir=str(self.data_dir))
        out = [main]
        for site in self.raw["sites"]:
            merged = {
                "host": main["host"],
                "allowed_calling_aets": main["allowed_calling_aets"],
                "allowed_networks": main["allowed_networks"],
                "max_pdu": main["max_pdu"],
                "min_free_mb": main["min_free_mb"],
            }
            merged.update(site)
            data = Path(site.get("data_dir") or self.data_dir / "sites" / site["name"])
            merged["data_dir"] = str(data if data.is_absolute() else (self.data_dir / data))
            out.append(merged)
        return out

    @property
    def embedded_redcap_db(self) -> Path | None:
        """The embedded REDCap's database, whose users log in to the web app (None: a real REDCap)."""
        emb = self.raw["redcap"]["embedded"]
        if not emb["enabled"] and not emb.get("data_dir"):
            return None
        base = Path(emb["data_dir"]) if emb.get("data_dir") else self.data_dir
        return (base if base.is_absolute() else self.data_dir / base) / "redcap" / "redcap.sqlite3"

    def job_interval(self, job: str, default: float) -> float:
        return float(self.raw["timing"]["job_intervals_seconds"].get(job, default))

    def masked(self) -> dict:
        """The effective configuration with every secret replaced by a description of its source."""
        out = copy.deepcopy(self.raw)

        def mask(node: Any, path: tuple[str, ...]) -> None:
            if not path or not isinstance(node, dict):
                return
            head, rest = path[0], path[1:]
            keys = list(node) if head == "*" else [head]
            for key in keys:
                if key not in node:
                    continue
                if rest:
                    mask(node[key], rest)
                else:
                    value = node[key]
                    node[key] = "***" if isinstance(value, str) else {k: f"{v} (***)" for k, v in value.items()}

        for path in SECRET_PATHS:
            mask(out, path)
        return out
