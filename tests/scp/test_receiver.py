"""The DICOM receiver against real senders: dcmtk's storescu and pynetdicom."""

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from fiona_redcap.datadir import init_data_dir
from fiona_redcap.quarantine import Quarantine
from fiona_redcap.state import client, incoming
from tests.fixtures.dicom import DCMTK, DCMTK_ENV, Identity, acknowledged_files, make_instance, make_study, storescu, wait_for
from tests.fixtures.redcap import make_fiona_data_dir


def data_dir(tmp_path, **config):
    path = tmp_path / "data"
    init_data_dir(path)
    raw = json.loads((path / "config.json").read_text())
    raw["redcap"]["url"] = "http://127.0.0.1:9/api/"  # nothing listens: REDCap writes queue in the outbox
    raw.update(config)
    (path / "config.json").write_text(json.dumps(raw))
    return path


def pynetdicom_path_store(port, paths, aet="FIONA"):
    """C-STORE files as they are on disk: pynetdicom sends their dataset bytes without decoding them."""
    from pynetdicom import _config

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        return [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def pynetdicom_store(port, datasets, aet="FIONA", calling="PYNETDICOM"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_multiseries_study_is_stored_durably_and_privately(tmp_path, scp_factory):
    study = make_study(tmp_path / "in", series=3, images=4)
    svc = scp_factory(data_dir(tmp_path))
    proc = storescu(svc.port, study.folder)
    assert proc.returncode == 0, proc.stderr
    assert len(acknowledged_files(proc.stderr + proc.stdout)) == 12
    q = Quarantine(svc.data_dir)
    assert q.studies() == [study.study_uid]
    assert len(q.instances(study.study_uid)) == 12
    for f in study.files:
        ds = dcmread(f)
        stored = q.instance_path(study.study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        assert dcmread(stored).PixelData == ds.PixelData
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(q.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(q.study_dir(study.study_uid).stat().st_mode) == 0o700
    summaries = q.series_summaries(study.study_uid)
    assert [s["images"] for s in summaries] == [4, 4, 4]
    assert summaries[0]["modality"] == "MR" and "mr" in summaries[0]["classification"] and summaries[0]["calling_aet"] == "STORESCU"
    assert "non-image" not in summaries[0]["classification"]  # pixel data is seen although not read
    log = svc.log_text()
    assert "event=assoc.closed" in log and "images=12" in log
    for planted in (study.identity.patient_name, study.identity.patient_id, study.identity.accession, study.study_uid):
        assert planted not in log


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_are_stored_without_recoding(tmp_path, scp_factory, syntax):
    study = make_study(tmp_path / "in", series=1, images=2, transfer_syntax=syntax)
    svc = scp_factory(data_dir(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "send", "--data-dir", str(svc.data_dir), "--to",
                           f"FIONA@127.0.0.1:{svc.port}", str(study.folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "sent 2 of 2 files" in proc.stdout
    q = Quarantine(svc.data_dir)
    for f in study.files:
        sent = dcmread(f)
        stored = dcmread(q.instance_path(study.study_uid, sent.SeriesInstanceUID, sent.SOPInstanceUID))
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.PixelData == sent.PixelData  # the encapsulated bytes, as received


def test_duplicates_are_stored_once_and_acknowledged(tmp_path, scp_factory):
    study = make_study(tmp_path / "in", series=1, images=3)
    svc = scp_factory(data_dir(tmp_path))
    assert storescu(svc.port, study.folder).returncode == 0
    again = storescu(svc.port, study.folder)
    assert again.returncode == 0 and len(acknowledged_files(again.stderr + again.stdout)) == 3
    q = Quarantine(svc.data_dir)
    assert len(q.instances(study.study_uid)) == 3
    assert json.loads((q.study_dir(study.study_uid) / "study.json").read_text())["images"] == 3
    assert "duplicates=3" in svc.log_text()


def test_bad_datasets_fail_and_the_association_goes_on(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path))
    ident = Identity()
    study_uid, series_uid = generate_uid(), generate_uid()
    good = make_instance(study_uid, series_uid, 1, ident)
    missing = make_instance(study_uid, series_uid, 2, ident)
    del missing.StudyInstanceUID
    traversal = make_instance(study_uid, series_uid, 3, ident)
    traversal.SeriesInstanceUID = "../../../../tmp/evil"
    leading_zero = make_instance(study_uid, series_uid, 4, ident)
    leading_zero.StudyInstanceUID = "1.02.3"
    overlong = make_instance(study_uid, series_uid, 5, ident)
    overlong.StudyInstanceUID = "1." + "2" * 70
    after = make_instance(study_uid, series_uid, 6, ident)
    statuses = pynetdicom_store(svc.port, [good, missing, traversal, leading_zero, overlong, after])
    assert statuses[0] == 0 and statuses[-1] == 0
    assert all(s == 0xC000 for s in statuses[1:5])
    q = Quarantine(svc.data_dir)
    assert len(q.instances(study_uid)) == 2
    assert not Path("/tmp/evil").exists()
    assert sorted(p.name for p in q.root.iterdir() if not p.name.startswith(".")) == [study_uid]
    assert "event=store.invalid_uid" in svc.log_text()


def test_dataset_that_disagrees_with_its_request_is_refused(tmp_path, scp_factory, monkeypatch):
    from pynetdicom import _config

    svc = scp_factory(data_dir(tmp_path))
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity())
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request will name this instance...
    ds.preamble = b"\x00" * 128
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)  # ...while the dataset names another (pydicom would otherwise fix the meta)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file as is, request from its meta
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", svc.port, ae_title="FIONA")
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0xA900
    assert Quarantine(svc.data_dir).studies() == []
    assert "event=store.mismatch" in svc.log_text()


def test_unparseable_data_gets_a_failure_status(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path))
    bad = tmp_path / "bad.dcm"
    ds = make_instance(generate_uid(), generate_uid(), 1, Identity())
    ds.save_as(bad, enforce_file_format=True)
    raw = bytearray(bad.read_bytes())
    # Corrupt the dataset after the file meta: an element with an impossible length.
    meta_end = raw.find(b"\x08\x00\x16\x00")  # (0008,0016) SOP Class UID, first dataset element
    raw[meta_end + 6:meta_end + 8] = b"\xff\xff"
    bad.write_bytes(bytes(raw))
    proc = storescu(svc.port, bad)
    assert "Received Store Response (Success)" not in proc.stderr + proc.stdout
    assert svc.proc.poll() is None
    assert Quarantine(svc.data_dir).studies() == []


def test_truncated_dataset_gets_a_failure_status(tmp_path, scp_factory):
    """A file cut short (its pixel data end before their stated length) parses without complaint in pydicom: the
    receiver still refuses it instead of acknowledging an incomplete image."""
    svc = scp_factory(data_dir(tmp_path))
    whole = tmp_path / "whole.dcm"
    make_instance(generate_uid(), generate_uid(), 1, Identity()).save_as(whole, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-1000])
    assert pynetdicom_path_store(svc.port, [cut, whole]) == [0xC000, 0x0000]
    assert "event=store.truncated" in svc.log_text()
    q = Quarantine(svc.data_dir)
    assert [len(q.instances(s)) for s in q.studies()] == [1]


def test_disallowed_calling_aet_is_rejected_with_a_logged_reason(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path, dicom={"allowed_calling_aets": ["MODALITY1"]}))
    study = make_study(tmp_path / "in", series=1, images=1)
    refused = storescu(svc.port, study.folder, calling="INTRUDER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr + refused.stdout
    assert storescu(svc.port, study.folder, calling="MODALITY1").returncode == 0
    wait_for(lambda: "event=assoc.rejected" in svc.log_text(), what="rejection log line")
    assert "calling_aet=INTRUDER" in svc.log_text()


def test_disallowed_network_is_refused(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path, dicom={"allowed_networks": ["10.0.0.0/8"]}))
    study = make_study(tmp_path / "in", series=1, images=1)
    proc = storescu(svc.port, study.folder)
    assert proc.returncode != 0
    assert Quarantine(svc.data_dir).studies() == []
    wait_for(lambda: "source address not in allowed_networks" in svc.log_text(), what="network rejection log")


def test_full_disk_answers_out_of_resources(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path, dicom={"min_free_mb": 10**9}))
    statuses = pynetdicom_store(svc.port, [make_instance(generate_uid(), generate_uid(), 1, Identity())])
    assert statuses == [0xA700]
    assert Quarantine(svc.data_dir).studies() == []
    assert "event=store.disk_full" in svc.log_text()


def test_echo_and_status(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path))
    echo = subprocess.run([DCMTK + "echoscu", "-aec", "FIONA", "127.0.0.1", str(svc.port)], env=DCMTK_ENV, capture_output=True, timeout=30)
    assert echo.returncode == 0
    wait_for(lambda: (svc.data_dir / "status" / "scp.json").exists(), what="status file")
    proc = subprocess.run([sys.executable, "-m", "fiona_redcap.cli", "status", "--data-dir", str(svc.data_dir), "--json"],
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["scp"]["sites"][0]["echo"] is True and report["scp"]["running"]


def test_complete_study_reaches_incoming_and_late_series_update_it(tmp_path, scp_factory, live_redcap):
    cfg = make_fiona_data_dir(tmp_path / "data", live_redcap, {"timing": {"quiet_period_seconds": 1}})
    svc = scp_factory(cfg.data_dir)
    ident = Identity()
    study = make_study(tmp_path / "in", series=2, images=3, ident=ident)
    assert storescu(svc.port, study.folder).returncode == 0
    proj = client.control_project(cfg, "incoming")

    def study_in_redcap(images):
        found = incoming.list_studies(proj, records=[study.study_uid])
        return found if found and found[0].get("num_images") == str(images) else None

    first = wait_for(lambda: study_in_redcap(6), what="study in Incoming")[0]
    assert first.get("state") == "complete" and first.get("num_series") == "2" and first.get("accession") == ident.accession
    assert first.get("date") == "2024-03-05" and first.get("time") == "10:15:00" and first.get("modalities") == "MR"
    assert len(first.key) == 16 and ident.patient_id not in json.dumps(first.values)
    assert sorted(int(s["redcap_repeat_instance"]) for s in first.series) == [1, 2]

    late = make_study(tmp_path / "late", series=1, images=2, ident=ident, study_uid=study.study_uid)
    assert storescu(svc.port, late.folder).returncode == 0
    second = wait_for(lambda: study_in_redcap(8), what="updated study")[0]
    assert sorted(int(s["redcap_repeat_instance"]) for s in second.series) == [1, 2, 3]
    assert [s["series_num_images"] for s in sorted(second.series, key=lambda s: int(s["redcap_repeat_instance"]))] == ["3", "3", "2"]
    assert len(incoming.list_studies(proj)) == 1


def test_redcap_down_queues_studies_and_delivers_them_later(tmp_path, scp_factory, live_redcap):
    cfg = make_fiona_data_dir(tmp_path / "data", live_redcap, {"timing": {"quiet_period_seconds": 1}})
    svc = scp_factory(cfg.data_dir)
    live_redcap.stop()
    try:
        studies = [make_study(tmp_path / f"in{i}", series=1, images=2) for i in range(2)]
        for s in studies:
            assert storescu(svc.port, s.folder).returncode == 0  # receiving goes on
        wait_for(lambda: len(list((cfg.data_dir / "outbox").glob("*.json"))) == 2, what="two queued studies")
    finally:
        live_redcap.start()
    proj = client.control_project(cfg, "incoming")
    wait_for(lambda: len(incoming.list_studies(proj)) == 2, timeout=90, what="queued studies written")
    assert list((cfg.data_dir / "outbox").glob("*.json")) == []
    assert "event=redcap.unavailable" in svc.log_text()


@pytest.mark.slow
def test_stop_is_clean_and_flushes_the_index(tmp_path, scp_factory):
    """SIGTERM (as `fiona up` and service managers send) stops every part in order: exit code 0, no traceback,
    and the arrivals counted in memory are in the study's summary."""
    folder = tmp_path / "study"
    study = make_study(folder, series=2, images=5)
    svc = scp_factory(data_dir(tmp_path, timing={"quiet_period_seconds": 3600}))
    assert storescu(svc.port, folder).returncode == 0
    svc.proc.terminate()
    assert svc.proc.wait(30) == 0
    assert "Traceback" not in svc.log_text() and "event=scp.stopped" in svc.log_text()
    info = Quarantine(svc.data_dir).study_info(study.study_uid)
    assert info["images"] == 10


def test_kill9_during_a_large_send_loses_no_acknowledged_image(tmp_path, scp_factory):
    folder = tmp_path / "big"
    study = make_study(folder, series=4, images=250, rows=32, cols=32)
    svc = scp_factory(data_dir(tmp_path))
    sender = subprocess.Popen([DCMTK + "storescu", "-v", "-aec", "FIONA", "+sd", "+r", "127.0.0.1", str(svc.port), str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    q = Quarantine(svc.data_dir)
    wait_for(lambda: q.studies() and len(q.instances(study.study_uid)) >= 150, timeout=120, what="part of the send")
    svc.kill9()
    out, _ = sender.communicate(timeout=120)
    acked = acknowledged_files(out)
    assert 150 <= len(acked) < 1000
    for f in acked:
        sent = dcmread(f)
        stored = q.instance_path(study.study_uid, sent.SeriesInstanceUID, sent.SOPInstanceUID)
        assert stored.exists(), f"acknowledged instance missing: {f.name}"
        assert dcmread(stored).PixelData == sent.PixelData
    for path in q.instances(study.study_uid):
        dcmread(path)  # nothing half-written counts as received
    # A restarted receiver cleans temporaries and accepts the rest.
    svc2 = scp_factory(svc.data_dir, port=svc.port)
    assert storescu(svc2.port, folder).returncode == 0
    assert len(q.instances(study.study_uid)) == 1000


def test_worker_processes_share_the_port_without_losing_index_updates(tmp_path, scp_factory):
    svc = scp_factory(data_dir(tmp_path), extra=["--workers", "2"])
    ident = Identity()
    study_uid = generate_uid()
    parts = [make_study(tmp_path / f"part{i}", series=1, images=40, ident=ident, study_uid=study_uid) for i in range(4)]
    senders = [subprocess.Popen([DCMTK + "storescu", "-aec", "FIONA", "+sd", "+r", "127.0.0.1", str(svc.port), str(p.folder)],
                                env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for p in parts]
    for s in senders:
        assert s.wait(120) == 0
    q = Quarantine(svc.data_dir)
    assert len(q.instances(study_uid)) == 160
    info = json.loads((q.study_dir(study_uid) / "study.json").read_text())
    assert info["images"] == 160 and len(info["series_instances"]) == 4  # every update of the shared index kept
    assert sorted(s["images"] for s in q.series_summaries(study_uid)) == [40, 40, 40, 40]
    svc.stop()
    stray = subprocess.run(["pgrep", "-f", f"--port {svc.port}"], capture_output=True, text=True).stdout.split()
    assert stray == []  # worker processes stop with the receiver


def test_the_called_ae_title_is_recorded_as_sent(tmp_path, scp_factory):
    """Routing rules and AutoID projects key on the AE title the sender called, which may differ from the site's."""
    svc = scp_factory(data_dir(tmp_path))
    study = make_study(tmp_path / "in", series=1, images=1)
    assert storescu(svc.port, study.folder, aet="AUTOID_X").returncode == 0
    q = Quarantine(svc.data_dir)
    info = json.loads((q.study_dir(study.study_uid) / "study.json").read_text())
    assert info["called_aet"] == "AUTOID_X"
    assert q.series_summaries(study.study_uid)[0]["called_aet"] == "AUTOID_X"
