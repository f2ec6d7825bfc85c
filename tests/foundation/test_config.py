"""Configuration: broken files give the JSON path and a readable message; secrets resolve and stay masked."""

import json
import subprocess
import sys

import pytest

from fiona_redcap.config import Config, ConfigError


def write(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"dicom": {"port": 11112,}}', "is not valid JSON"),
        ("[1, 2]", "must contain a JSON object"),
        ({"dicom": {"port": 70000}}, "at $.dicom.port: 70000 is greater than the maximum of 65535"),
        ({"dicom": {"port": "104"}}, "at $.dicom.port: '104' is not of type 'integer'"),
        ({"dicom": {"aet": "A_TITLE_LONGER_THAN_16"}}, "at $.dicom.aet"),
        ({"dicom": {"aet": "BAD\\AET"}}, "at $.dicom.aet"),
        ({"bogus": 1}, "at $: unknown key(s) not allowed ('bogus' was unexpected)"),
        ({"redcap": {"url": "http://example.org/redcap"}}, "at $.redcap.url"),
        ({"redcap": {"tokens": {"incoming": {"envv": "X"}}}}, "at $.redcap.tokens.incoming"),
        ({"sites": [{"name": "a", "aet": "A", "port": 104}, {"name": "a", "aet": "B", "port": 105}]}, "site name 'a' is used twice"),
        ({"sites": [{"name": "b", "aet": "B", "port": 11112}]}, "at $.sites[0].port: port 11112 is already used by $.dicom"),
        ({"dicom": {"allowed_networks": ["10.0.0.0/33"]}}, "at $.dicom.allowed_networks: '10.0.0.0/33' is not an IP network"),
        ({"default_destination": "pacs"}, "no destination named 'pacs'"),
        ({"destinations": {"pacs": {"type": "dicom", "aet": "PACS", "host": "127.0.0.1"}}}, "at $.destinations.pacs"),
    ],
)
def test_broken_configs_name_the_path_and_the_problem(tmp_path, content, expected):
    with pytest.raises(ConfigError) as err:
        Config.load(write(tmp_path, content))
    assert expected in str(err.value)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    path = write(tmp_path, {"dicom": {"port": 0}})
    proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "config", "check", "--config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "at $.dicom.port: 0 is less than the minimum of 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file_is_a_readable_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.json")


def test_defaults_without_a_file(tmp_path):
    cfg = Config.load(None, tmp_path)
    assert cfg.data_dir == tmp_path.resolve()
    assert cfg.sites()[0]["aet"] == "FIONA" and cfg.sites()[0]["port"] == 11112
    assert cfg.redcap_url.endswith("/api/")


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "config.json"
    path.write_text(json.dumps({"data_dir": "../data"}))
    monkeypatch.chdir("/")
    assert Config.load(path).data_dir == (tmp_path / "data").resolve()


def test_secrets_from_env_file_and_literal(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tok").write_text("B" * 32 + "\n")
    monkeypatch.setenv("MY_TOKEN", "C" * 32)
    path = write(
        tmp_path,
        {
            "data_dir": ".",
            "redcap": {"tokens": {"incoming": {"file": "secrets/tok"}, "projects": {"env": "MY_TOKEN"}, "coupling": "A" * 32}},
        },
    )
    cfg = Config.load(path)
    assert cfg.redcap_token("incoming") == "B" * 32
    assert cfg.redcap_token("projects") == "C" * 32
    assert cfg.redcap_token("coupling") == "A" * 32
    monkeypatch.setenv("FIONA_REDCAP_TOKEN_COUPLING", "D" * 32)
    assert cfg.redcap_token("coupling") == "D" * 32
    # Not given: the default reference to <data>/secrets/token-routing, which does not exist yet.
    with pytest.raises(ConfigError, match=r"\$.redcap.tokens.routing: secret file .*token-routing cannot be read"):
        cfg.redcap_token("routing")
    monkeypatch.delenv("MY_TOKEN")
    with pytest.raises(ConfigError, match="environment variable MY_TOKEN is not set"):
        cfg.redcap_token("projects")


def test_config_show_masks_every_secret(tmp_path):
    path = write(
        tmp_path,
        {
            "redcap": {"tokens": {"incoming": "E" * 32}, "research_tokens": {"abc": "F" * 32}},
            "web": {"secret_key": "verysecretkey", "sso_secret": {"env": "SSO"}},
            "destinations": {"out": {"type": "sftp", "host": "127.0.0.1", "username": "u", "remote_dir": "/in", "password": "hunter22"}},
        },
    )
    proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "config", "show", "--config", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for secret in ("E" * 32, "F" * 32, "verysecretkey", "hunter22"):
        assert secret not in proc.stdout
    shown = json.loads(proc.stdout)
    assert shown["web"]["sso_secret"] == {"env": "SSO (***)"}
    assert shown["redcap"]["tokens"]["incoming"] == "***"
