"""The ``fiona`` command: one entry point, one subcommand per service or task.

Each service module owns its subcommands through a ``register(subparsers)`` function, so
that this file only lists them; the modules keep their heavy imports inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys

from . import __version__, logs
from .config import DEFAULT_DATA_DIR, Config, ConfigError

#: Modules that contribute subcommands, in the order ``fiona --help`` lists them.
COMMAND_MODULES = (
    "fiona_redcap.up",
    "fiona_redcap.embedded_redcap.cli",
    "scp.cli",
    "scheduler.cli",
    "fiona_redcap.web.cli",
    "fiona_redcap.deid.cli",
    "fiona_redcap.projects_cli",
    "fiona_redcap.export.cli",
)


def add_common(parser: argparse.ArgumentParser) -> None:
    """The options every service command takes (the operators' contract)."""
    parser.add_argument("--data-dir", default=None, help=f"data directory (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--config", default=None, help="config file (default: <data-dir>/config.json if it exists)")


def load_config(args: argparse.Namespace) -> Config:
    """Load the config named by ``--config``/``--data-dir`` and set up logging from it."""
    cfg = Config.load(getattr(args, "config", None), getattr(args, "data_dir", None))
    logs.setup(cfg.raw["log"]["level"], cfg.raw["log"]["format"])
    return cfg


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    print(json.dumps(cfg.masked(), indent=2))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    problems = []
    for name in ("projects", "incoming", "coupling", "routing", "autoid"):
        try:
            cfg.redcap_token(name)
        except ConfigError as exc:
            problems.append(str(exc))
    for ref in cfg.raw["redcap"]["research_tokens"]:
        try:
            cfg.research_token(ref)
        except ConfigError as exc:
            problems.append(str(exc))
    source = cfg.path or "defaults (no config file)"
    if problems:
        print(f"{source}: schema valid, but:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{source}: OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fiona", description="FIONA for REDCap: research-imaging gateway")
    parser.add_argument("--version", action="version", version=f"fiona {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cfg = sub.add_parser("config", help="show or check the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cfg_sub.add_parser("show", help="print the effective configuration, secrets masked")
    add_common(show)
    show.set_defaults(func=_config_show)
    check = cfg_sub.add_parser("check", help="validate the configuration and that its secrets resolve")
    add_common(check)
    check.set_defaults(func=_config_check)

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None or importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub, add_common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"fiona: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
