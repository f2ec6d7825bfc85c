"""SFTP outbox: a study as one zip or tar package plus an ``.md5`` file, uploaded atomically.

The package is uploaded under a temporary name and renamed only when complete, so a reader
of the remote directory never sees half a study; the remote copy is then checksummed
(``md5sum`` over SSH, or by reading the file back when the server offers SFTP only) and
compared with the local checksum. Host keys are checked against ``known_hosts``; unknown
hosts are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import shlex
import socket
import tarfile
import zipfile
from pathlib import Path

import paramiko

from ..config import Config
from . import ForwardError

CHUNK = 1024 * 1024


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def build_package(files: list[Path], root: Path, out: Path, kind: str = "zip") -> Path:
    """Pack ``files`` (paths kept relative to ``root``) into ``out`` (a .zip or .tar)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if kind == "tar":
        with tarfile.open(tmp, "w") as tar:
            for f in files:
                tar.add(f, arcname=str(f.relative_to(root)))
    else:
        # DICOM pixel data rarely compresses; stored entries keep packing fast.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for f in files:
                zf.write(f, arcname=str(f.relative_to(root)))
    tmp.replace(out)
    return out


def _pkey(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ForwardError("the SFTP destination's private_key is not a readable unencrypted private key")


def connect(cfg: Config, dest: dict) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if dest.get("known_hosts"):
        client.load_host_keys(dest["known_hosts"])
    else:
        client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_text = cfg.resolve_secret(dest.get("private_key"), "private_key")
    password = cfg.resolve_secret(dest.get("password"), "password")
    where = f"{dest['username']}@{dest['host']}:{dest.get('port', 22)}"
    try:
        client.connect(dest["host"], port=int(dest.get("port", 22)), username=dest["username"],
                       pkey=_pkey(key_text) if key_text else None, password=password,
                       timeout=float(dest.get("timeout_seconds", 30)), allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException:
        raise ForwardError(f"SFTP host key of {where} does not match known_hosts") from None
    except paramiko.AuthenticationException:
        raise ForwardError(f"SFTP login to {where} was refused") from None
    except paramiko.SSHException as exc:
        raise ForwardError(f"SFTP connection to {where} failed ({exc})") from None
    except (OSError, socket.timeout) as exc:
        raise ForwardError(f"SFTP server {where} is not reachable ({exc.__class__.__name__})") from None
    sock = client.get_transport().sock
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass
    return client


def _makedirs(sftp: paramiko.SFTPClient, remote_dir: str) -> None:
    parts = remote_dir.rstrip("/").split("/")
    for i in range(1, len(parts) + 1):
        path = "/".join(parts[:i]) or "/"
        try:
            sftp.stat(path)
        except FileNotFoundError:
            sftp.mkdir(path)


def _put_atomic(sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
    tmp = posixpath.join(posixpath.dirname(remote), f".{posixpath.basename(remote)}.part")
    sftp.put(str(local), tmp)
    sftp.posix_rename(tmp, remote)


def remote_md5(client: paramiko.SSHClient, sftp: paramiko.SFTPClient, remote: str) -> str:
    """MD5 of a remote file: ``md5sum`` over SSH if the server runs commands, else read back."""
    try:
        _, out, _ = client.exec_command(f"md5sum {shlex.quote(remote)}", timeout=300)
        text = out.read().decode(errors="replace")
        if out.channel.recv_exit_status() == 0 and text.split():
            return text.split()[0]
    except paramiko.SSHException:
        pass
    h = hashlib.md5()
    with sftp.open(remote, "rb") as fh:
        fh.prefetch()
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def send_package(cfg: Config, dest: dict, files: list[Path], package_name: str, root: Path | None = None) -> tuple[str, str]:
    """Package, upload and check one study; returns (remote path, md5). Raises ForwardError."""
    if not files:
        raise ForwardError("nothing to send: the study has no images after pseudonymization")
    kind = dest.get("package", "zip")
    root = Path(root) if root else Path(os.path.commonpath([str(Path(f).parent) for f in files]))
    local = cfg.data_dir / "staging" / "packages" / f"{package_name}.{kind}"
    build_package(files, root, local, kind)
    md5 = md5_of(local)
    md5_file = local.with_name(local.name + ".md5")
    md5_file.write_text(f"{md5}  {local.name}\n")
    remote = posixpath.join(dest["remote_dir"], local.name)
    client = connect(cfg, dest)
    try:
        sftp = client.open_sftp()
        try:
            _makedirs(sftp, dest["remote_dir"])
            _put_atomic(sftp, local, remote)
            _put_atomic(sftp, md5_file, remote + ".md5")
            got = remote_md5(client, sftp, remote)
        except OSError as exc:
            raise ForwardError(f"SFTP upload to {dest['host']} failed ({exc.__class__.__name__}: {exc.strerror or exc})") from None
        finally:
            sftp.close()
    finally:
        client.close()
        local.unlink(missing_ok=True)
        md5_file.unlink(missing_ok=True)
    if got != md5:
        raise ForwardError(f"SFTP upload to {dest['host']}: remote checksum does not match the package")
    return remote, md5
