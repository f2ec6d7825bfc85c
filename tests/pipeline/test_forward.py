"""Forwarders against real peers: C-STORE and C-FIND to Orthanc, SFTP to OpenSSH's sshd."""

import hashlib
import subprocess
import zipfile

import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from fiona_redcap.config import Config
from fiona_redcap.forward import ForwardError, deliver, destination
from fiona_redcap.forward.dicom_store import store_files
from fiona_redcap.forward.sftp import send_package
from fiona_redcap.forward.verify import stored_instances
from tests.fixtures.dicom import make_study
from tests.fixtures.orthanc import OrthancServer


def cfg_with(tmp_path, destinations, default=None):
    raw = {"destinations": destinations}
    if default:
        raw["default_destination"] = default
    (tmp_path / "data" / "staging").mkdir(parents=True, exist_ok=True)
    return Config.from_dict(raw, tmp_path / "data")


def test_cstore_then_cfind_lists_every_instance(research_pacs, tmp_path):
    study = make_study(tmp_path / "s", series=2, images=3)
    result = store_files(research_pacs.destination(), study.files, "FIONA")
    assert result.sent == 6 and not result.failed
    assert len(research_pacs.instances_of(study.study_uid)) == 6
    found = stored_instances(research_pacs.destination(), study.study_uid, "FIONA")
    sops = {str(__import__("pydicom").dcmread(f).SOPInstanceUID) for f in study.files}
    assert found == sops


def test_compressed_syntaxes_are_sent_as_stored(research_pacs, tmp_path):
    rle = make_study(tmp_path / "rle", series=1, images=2, transfer_syntax=RLELossless)
    j2k = make_study(tmp_path / "j2k", series=1, images=2, transfer_syntax=JPEG2000Lossless, study_uid=rle.study_uid)
    result = store_files(research_pacs.destination(), rle.files + j2k.files, "FIONA")
    assert result.sent == 4, result.failed
    syntaxes = {research_pacs.get_text(f"/instances/{i['ID']}/metadata/TransferSyntax") for i in research_pacs.instances_of(rle.study_uid)}
    assert syntaxes == {RLELossless, JPEG2000Lossless}


def test_destination_down_is_a_readable_forward_error(research_pacs, tmp_path):
    study = make_study(tmp_path / "s", series=1, images=2)
    dest = research_pacs.destination(port=1)  # nothing listens there
    cfg = cfg_with(tmp_path, {"pacs": dest}, default="pacs")
    with pytest.raises(ForwardError) as err:
        deliver(cfg, *destination(cfg), study.files, "k-1")
    assert "could not be opened" in str(err.value) and "0 of 2" in str(err.value)
    assert study.identity.patient_id not in str(err.value)


def test_unknown_calling_aet_is_refused(research_pacs, tmp_path):
    study = make_study(tmp_path / "s", series=1, images=1)
    cfg = cfg_with(tmp_path, {"pacs": research_pacs.destination(calling_aet="NOT_ALLOWED")}, default="pacs")
    with pytest.raises(ForwardError, match="not stored|could not be opened"):
        deliver(cfg, *destination(cfg), study.files, "k-1")
    assert research_pacs.find_study(study.study_uid) is None


def test_no_destination_configured(tmp_path):
    cfg = cfg_with(tmp_path, {})
    with pytest.raises(ForwardError, match="no destination"):
        destination(cfg)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_sftp_package_is_uploaded_atomically_with_checksum(sshd, tmp_path, kind):
    study = make_study(tmp_path / "staging" / "k-1" / "series", series=1, images=3)
    remote_dir = sshd.uploads / kind / "nested"
    cfg = cfg_with(tmp_path, {"outbox": sshd.destination(remote_dir, package=kind)}, default="outbox")
    delivery = deliver(cfg, *destination(cfg), study.files, "studykey-1", root=tmp_path / "staging" / "k-1")
    remote = remote_dir / f"studykey-1.{kind}"
    assert delivery.images_sent == 3 and delivery.images_verified == 3
    assert hashlib.md5(remote.read_bytes()).hexdigest() == delivery.md5
    assert (remote_dir / f"studykey-1.{kind}.md5").read_text().split()[0] == delivery.md5
    assert sorted(p.name for p in remote_dir.iterdir()) == [f"studykey-1.{kind}", f"studykey-1.{kind}.md5"]  # no .part left
    if kind == "zip":
        names = zipfile.ZipFile(remote).namelist()
        assert len(names) == 3 and all(n.startswith("series/") for n in names)
    assert not list((tmp_path / "data" / "staging" / "packages").iterdir())


def test_sftp_wrong_host_key_is_refused(sshd, tmp_path):
    study = make_study(tmp_path / "s", series=1, images=1)
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    cfg = cfg_with(tmp_path, {"o": sshd.destination(sshd.uploads / "x", known_hosts=str(known))})
    with pytest.raises(ForwardError, match="host key"):
        send_package(cfg, cfg.raw["destinations"]["o"], study.files, "k-2")
    assert not (sshd.uploads / "x").exists()


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder):
    """A test CA with a server and a client certificate (for DICOM TLS with client authentication)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=FIONA test CA", cwd=folder)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'127.0.0.1' if name == 'server' else 'fiona-client'}", cwd=folder)
        (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return folder


def test_cstore_and_cfind_over_tls_with_client_certificate(tmp_path):
    pki = make_pki(tmp_path / "pki")
    server = OrthancServer(tmp_path / "orthanc-tls", extra={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(pki / "server.crt"), "DicomTlsPrivateKey": str(pki / "server.key"),
        "DicomTlsTrustedCertificates": str(pki / "ca.crt"), "DicomTlsRemoteCertificateRequired": True})
    server.start()
    try:
        study = make_study(tmp_path / "s", series=1, images=2)
        tls = {"ca": str(pki / "ca.crt"), "cert": str(pki / "client.crt"), "key": str(pki / "client.key")}
        cfg = cfg_with(tmp_path, {"tls": server.destination(tls=tls)}, default="tls")
        assert deliver(cfg, *destination(cfg), study.files, "k-1").images_sent == 2
        assert len(stored_instances(server.destination(tls=tls), study.study_uid, "FIONA")) == 2
        no_client_cert = cfg_with(tmp_path, {"tls": server.destination(tls={"ca": str(pki / "ca.crt")})}, default="tls")
        with pytest.raises(ForwardError):
            deliver(no_client_cert, *destination(no_client_cert), study.files, "k-2")
    finally:
        server.stop()
