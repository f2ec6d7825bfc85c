"""`fiona redcap project/user/token`: the admin commands work on a running server's database."""

import re
import subprocess
import sys

from redcap import Project


def fiona(server, *args):
    return subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "redcap", *args, "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=60)


def test_project_user_and_token_commands(live_redcap):
    created = fiona(live_redcap, "project", "create", "--title", "CLI study", "--longitudinal", "--print-token")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9A-F]{32}", token)
    project = Project(live_redcap.url, token, timeout=30)
    info = project.export_project_info()
    assert info["project_title"] == "CLI study" and info["is_longitudinal"] == 1
    pid = info["project_id"]
    assert re.search(rf"^\s*{pid}\s+CLI study\s", fiona(live_redcap, "project", "list").stdout, re.M)

    wrong = fiona(live_redcap, "user", "add", "erin", "--project", "99999")
    assert wrong.returncode == 1 and "no project 99999" in wrong.stderr
    added = fiona(live_redcap, "user", "add", "erin", "--project", str(pid))
    assert added.returncode == 0 and "password (shown once)" in added.stdout
    erin_token = fiona(live_redcap, "token", "create", "erin", "--project", str(pid)).stdout.strip()
    assert re.fullmatch(r"[0-9A-F]{32}", erin_token)
    assert "erin" in {u["username"] for u in Project(live_redcap.url, erin_token, timeout=30).export_users()}
    # tokens are stored hashed: the database (and its write-ahead log) never holds the token itself
    stored = b"".join(p.read_bytes() for p in live_redcap.db.parent.glob(live_redcap.db.name + "*"))
    assert token.encode() not in stored and erin_token.encode() not in stored and b"CLI study" in stored
