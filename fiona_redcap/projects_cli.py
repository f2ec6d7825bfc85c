"""``fiona project add|list``: the Projects registry from the command line.

The registry is a REDCap project like any other (with a real REDCap, staff edit it in REDCap's
forms); this command is for the embedded default, which has no REDCap user interface.
"""

from __future__ import annotations

import argparse
import sys


def register(sub, add_common) -> None:
    p = sub.add_parser("project", help="research projects in the Projects registry")
    psub = p.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    add = psub.add_parser("add", help="add or update a research project")
    add_common(add)
    add.add_argument("name", help="5-20 letters, digits, '_' or '-'")
    add.add_argument("--title", default="")
    add.add_argument("--participant-regex", required=True, help="participant ID pattern, e.g. 'ABC[0-9]{4}'")
    add.add_argument("--event", action="append", default=[], metavar="CODE[:LABEL]", help="an event (repeatable) when the project has no REDCap of its own")
    add.add_argument("--redcap-url", default="", help="the project's own REDCap API URL")
    add.add_argument("--token-ref", default="", help="name of its token in the config's redcap.research_tokens")
    add.add_argument("--ethics-number", default="")
    add.add_argument("--ethics-start", default="", help="YYYY-MM-DD")
    add.add_argument("--ethics-end", default="", help="YYYY-MM-DD")
    add.add_argument("--autoid-aet", default="", help="enable AutoID for studies sent to this called AE title")
    add.add_argument("--destination", default="", help="a name from the config's destinations (empty: default_destination)")
    add.add_argument("--option", action="append", default=[], metavar="NAME", help="a PS3.15 option (repeatable; none: the defaults)")
    add.add_argument("--inactive", action="store_true")
    add.set_defaults(func=_add)
    lst = psub.add_parser("list", help="list research projects")
    add_common(lst)
    lst.set_defaults(func=_list)


def _add(args: argparse.Namespace) -> int:
    from .cli import load_config
    from .deid.options import OPTION_CODES
    from .state import client
    from .state.projects import ProjectError, save_project

    cfg = load_config(args)
    unknown = [o for o in args.option if o not in OPTION_CODES]
    if unknown:
        print(f"fiona project add: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_CODES)}", file=sys.stderr)
        return 2
    record = {
        "project_name": args.name, "project_title": args.title, "project_active": "0" if args.inactive else "1",
        "project_participant_regex": args.participant_regex,
        "project_events": "\n".join(f"{e.partition(':')[0]}, {e.partition(':')[2] or e.partition(':')[0]}" for e in args.event),
        "project_redcap_url": args.redcap_url, "project_token_ref": args.token_ref, "project_ethics_number": args.ethics_number,
        "project_ethics_start": args.ethics_start, "project_ethics_end": args.ethics_end,
        "project_autoid": "1" if args.autoid_aet else "0", "project_autoid_aet": args.autoid_aet, "project_destination": args.destination,
        "project_complete": "2",
    }
    for cli_name, code in OPTION_CODES.items():
        record[f"deid_options___{code}"] = "1" if cli_name in args.option else "0"
    try:
        import re

        re.compile(args.participant_regex)
        save_project(cfg, record)
    except re.error as exc:
        print(f"fiona project add: the participant pattern is not a valid regular expression ({exc})", file=sys.stderr)
        return 2
    except (ProjectError, client.RedcapRejected) as exc:
        print(f"fiona project add: {exc}", file=sys.stderr)
        return 2
    print(f"project {args.name} saved")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .cli import load_config
    from .state.projects import load_projects

    cfg = load_config(args)
    for p in load_projects(cfg):
        events = ", ".join(code for code, _ in p.events) or ("(from its REDCap)" if p.redcap_url else "-")
        print(f"{p.name:20} {'active' if p.active else 'inactive':8} pattern {p.participant_regex:16} events {events}")
    return 0
