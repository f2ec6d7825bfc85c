"""`fiona up` on a new data directory: every service starts, the control projects are installed, Ctrl-C stops all."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from redcap import Project

from fiona_redcap.config import Config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_runs_the_whole_gateway_and_installs_control_projects(tmp_path):
    data = tmp_path / "fiona-data"
    ports = {"web": free_port(), "redcap": free_port(), "dicom": free_port()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fiona_redcap.cli", "up", "--data-dir", str(data),
         "--web-port", str(ports["web"]), "--redcap-port", str(ports["redcap"]), "--dicom-port", str(ports["dicom"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "all services running" in line:
                break
        out = "\n".join(lines)
        assert f"redcap api listening on http://127.0.0.1:{ports['redcap']}/api/" in out, out + proc.stderr.read() if proc.poll() is not None else out
        assert f"dicom scp FIONA listening on 127.0.0.1:{ports['dicom']}" in out
        assert f"web listening on http://127.0.0.1:{ports['web']}/" in out
        login = re.search(r"as admin with password (\S+)", out)
        assert login, out
        assert (data / "secrets" / "admin-password").read_text().strip() == login.group(1)

        cfg = Config.load(None, data)
        for name in ("projects", "incoming", "coupling", "routing", "autoid"):
            project = Project(f"http://127.0.0.1:{ports['redcap']}/api/", cfg.redcap_token(name), timeout=10)
            fields = {f["field_name"] for f in project.export_metadata()}
            assert fields, name
        incoming = Project(f"http://127.0.0.1:{ports['redcap']}/api/", cfg.redcap_token("incoming"), timeout=10)
        repeating = {r["form_name"] for r in incoming.export_repeating_instruments_events()}
        assert repeating == {"series", "transfers"}

        echo = subprocess.run(["/usr/bin/echoscu", "-aec", "FIONA", "127.0.0.1", str(ports["dicom"])], env=dict(os.environ, TCP_NODELAY="1"), capture_output=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert "fiona up: stopped" in rest

    # A second start on the same data directory changes nothing and does not print the password again.
    again = subprocess.Popen(
        [sys.executable, "-m", "fiona_redcap.cli", "up", "--data-dir", str(data),
         "--web-port", str(ports["web"]), "--redcap-port", str(ports["redcap"]), "--dicom-port", str(ports["dicom"])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = again.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "all services running" in line:
                break
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=60)
    text = "".join(seen)
    assert "all services running" in text
    assert "password" not in text
