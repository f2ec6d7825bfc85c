"""``fiona redcap ...``: serve the embedded REDCap, administer it, install the control projects."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub, add_common) -> None:
    p = sub.add_parser("redcap", help="the embedded REDCap server and the control projects")
    rsub = p.add_subparsers(dest="redcap_command", metavar="ACTION", required=True)

    serve = rsub.add_parser("serve", help="run the embedded REDCap API server")
    add_common(serve)
    serve.add_argument("--host", help="listen address (default from config, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from config, 8081)")
    serve.set_defaults(func=_serve)

    install = rsub.add_parser("install", help="create or update FIONA's control projects in REDCap (idempotent)")
    add_common(install)
    install.add_argument("--super-token-file", help="file holding a REDCap super API token (to create missing projects)")
    install.set_defaults(func=_install)

    user = rsub.add_parser("user", help="users of the embedded REDCap")
    usub = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="add a user (prints a generated password once)")
    add_common(add)
    add.add_argument("username")
    add.add_argument("--super-user", action="store_true")
    add.add_argument("--email", default="")
    add.add_argument("--project", type=int, action="append", default=[], help="give full rights in this project id (repeatable)")
    add.set_defaults(func=_user_add)

    token = rsub.add_parser("token", help="API tokens of the embedded REDCap")
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create (or replace) a user's API token for a project; printed once")
    add_common(create)
    create.add_argument("username")
    create.add_argument("--project", type=int, help="project id (omit with --super for a super token)")
    create.add_argument("--super", action="store_true", help="a super token (may create projects)")
    create.set_defaults(func=_token_create)

    project = rsub.add_parser("project", help="projects of the embedded REDCap")
    psub = project.add_subparsers(dest="project_command", metavar="ACTION", required=True)
    plist = psub.add_parser("list", help="list projects")
    add_common(plist)
    plist.set_defaults(func=_project_list)
    pcreate = psub.add_parser("create", help="create an empty project owned by the admin user")
    add_common(pcreate)
    pcreate.add_argument("--title", required=True)
    pcreate.add_argument("--longitudinal", action="store_true")
    pcreate.add_argument("--owner", default="admin")
    pcreate.add_argument("--print-token", action="store_true", help="print the owner's API token as the last line")
    pcreate.set_defaults(func=_project_create)


def _db(args: argparse.Namespace):
    from ..cli import load_config
    from . import admin

    cfg = load_config(args)
    return cfg, admin.db_path(cfg.data_dir)


def _serve(args: argparse.Namespace) -> int:
    from ..datadir import init_data_dir
    from .server import serve

    cfg, db = _db(args)
    init_data_dir(cfg.data_dir) if not cfg.data_dir.exists() else None
    embedded = cfg.raw["redcap"]["embedded"]
    return serve(db, args.host or embedded["host"], args.port or embedded["port"])


def _install(args: argparse.Namespace) -> int:
    from ..redcap_install import InstallError, install

    cfg, _ = _db(args)
    token = Path(args.super_token_file).read_text().strip() if args.super_token_file else None
    try:
        install(cfg, token, progress=lambda m: print(m, flush=True))
    except InstallError as exc:
        print(f"fiona redcap install: {exc}", file=sys.stderr)
        return 1
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from . import admin

    _, db = _db(args)
    known = {p["project_id"] for p in admin.list_projects(db)}
    unknown = [str(pid) for pid in args.project if pid not in known]
    if unknown:
        print(f"fiona redcap user add: no project {', '.join(unknown)} (see fiona redcap project list)", file=sys.stderr)
        return 1
    password = admin.ensure_user(db, args.username, super_user=args.super_user, email=args.email)
    for pid in args.project:
        admin.set_rights(db, pid, args.username, **admin.FULL_RIGHTS)
    if password:
        print(f"user {args.username} created; password (shown once): {password}")
    else:
        print(f"user {args.username} exists")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from . import admin

    _, db = _db(args)
    try:
        token = admin.create_super_token(db, args.username) if args.super else admin.create_token(db, args.username, args.project)
    except KeyError as exc:
        print(f"fiona redcap token create: {exc.args[0]}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _project_list(args: argparse.Namespace) -> int:
    from . import admin

    _, db = _db(args)
    for p in admin.list_projects(db):
        print(f"{p['project_id']:>4}  {p['title']}  ({p['records']} records, created {p['created_at']})")
    return 0


def _project_create(args: argparse.Namespace) -> int:
    from . import admin

    _, db = _db(args)
    admin.ensure_user(db, args.owner, super_user=args.owner == "admin")
    pid = admin.create_project(db, args.title, args.owner, longitudinal=args.longitudinal)
    print(f"project {pid} created: {args.title}")
    if args.print_token:
        print(admin.create_token(db, args.owner, pid))
    return 0
