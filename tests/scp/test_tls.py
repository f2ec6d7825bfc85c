"""DICOM TLS on the receiver: dcmtk's storescu with a client certificate gets in; without one, or in plain TCP, it does not."""

import json
import subprocess

from fiona_redcap.quarantine import Quarantine
from tests.fixtures.dicom import DCMTK, DCMTK_ENV, make_study
from tests.pipeline.test_forward import make_pki
from tests.scp.test_receiver import data_dir


def test_tls_with_client_certificates(tmp_path, scp_factory):
    pki = make_pki(tmp_path / "pki")
    tls = {"cert": str(pki / "server.crt"), "key": str(pki / "server.key"), "ca": str(pki / "ca.crt"), "require_client_cert": True}
    svc = scp_factory(data_dir(tmp_path, dicom={"tls": tls}))
    study = make_study(tmp_path / "in", series=1, images=2)

    def send(*tls_args):
        return subprocess.run([DCMTK + "storescu", "-v", *tls_args, "-aec", "FIONA", "127.0.0.1", str(svc.port), *map(str, study.files)],
                              capture_output=True, text=True, env=DCMTK_ENV, timeout=60)

    plain = send()
    assert plain.returncode != 0
    anonymous = send("+tla", "+cf", str(pki / "ca.crt"))
    assert anonymous.returncode != 0 and "Association Request Failed" in anonymous.stderr  # no client certificate: the handshake fails
    assert Quarantine(svc.data_dir).studies() == []
    ok = send("+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(Quarantine(svc.data_dir).instances(study.study_uid)) == 2
