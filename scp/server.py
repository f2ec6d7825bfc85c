"""The DICOM receiver: one pynetdicom Storage SCP per configured site.

Handlers follow pynetdicom's event model: ``EVT_C_STORE`` writes the received file durably
into the site's quarantine before answering success; ``EVT_C_ECHO`` answers Verification;
association events feed one structured log line per association.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import config as pydicom_config, dcmread
from pydicom.errors import InvalidDicomError
import pynetdicom.association as _association_module
import pynetdicom.dul as _dul_module
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.sop_class import Verification

from fiona_redcap import logs
from fiona_redcap.config import Config
from fiona_redcap.datadir import installation_key, keyed_hash
from fiona_redcap.integrity import truncated_element
from fiona_redcap.quarantine import Quarantine, valid_uid

from . import index, storage
from .classify import Classifier

log = logs.get_logger("fiona.scp")

# Received datasets go straight to a file (memory stays flat for large instances).
_config.STORE_RECV_CHUNKED_DATASET = True
# Do not log dataset contents (identifiers) from pynetdicom's handlers.
_config.LOG_HANDLER_LEVEL = "none"
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# UIDs are checked by valid_uid(); pydicom's per-value validation of every header read costs more
# than the rest of the handler and its warnings would quote values.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE

# pynetdicom's reactors poll with 1 ms sleeps (the DUL loop and the association loop), which
# puts ~2 ms of idle waiting on the path of every C-STORE round trip: a pynetdicom SCP that
# stores nothing manages ~350 images/s on one association, ~700 with 0.2 ms polls (see
# bench/receive). Short polls cost CPU, and with several associations in one process their
# threads fight for the GIL: several open associations in one process poll at pynetdicom's 1 ms
# again (measured best for 4 associations over 2 processes).
POLL_ONE = 0.0002
POLL_SEVERAL = 0.001
_open_associations = 0
_count_lock = threading.Lock()


def _poll_seconds() -> float:
    return POLL_ONE if _open_associations <= 1 else POLL_SEVERAL


def _count_association(change: int) -> None:
    global _open_associations
    with _count_lock:
        _open_associations = max(0, _open_associations + change)


def _short_poll_sleep(seconds: float) -> None:
    time.sleep(min(seconds, _poll_seconds()))


_patched_time = types.SimpleNamespace(sleep=_short_poll_sleep, time=time.time, monotonic=time.monotonic,
                                      perf_counter=time.perf_counter)
_association_module.time = _patched_time
_dul_module.time = _patched_time

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
SENSITIVE = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate", "PatientAddress",
             "ReferringPhysicianName", "InstitutionName", "StudyID")


@dataclass
class AssocStats:
    calling_aet: str = ""
    called_aet: str = ""
    address: str = ""
    images: int = 0
    duplicates: int = 0
    failures: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    studies: set = field(default_factory=set)


class ReusePortServer(ThreadedAssociationServer):
    """An association server whose port several receiver processes can share (SO_REUSEPORT):
    the kernel spreads incoming associations over the processes, and so over the cores."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        """Stop serving and close the socket. pynetdicom's own shutdown also unregisters the server from its AE,
        which only ``AE.start_server`` registers, and fails for a server made with ``AE.make_server``."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class SiteReceiver:
    """Storage SCP of one site: handlers, allow-lists and its quarantine."""

    def __init__(self, cfg: Config, site: dict, classifier: Classifier) -> None:
        self.cfg = cfg
        self.site = site
        self.name = site["name"]
        self.q = Quarantine(site["data_dir"])
        self.q.ensure()
        self.classifier = classifier
        self.key = installation_key(cfg.data_dir)
        self.networks = [ipaddress.ip_network(n, strict=False) for n in site.get("allowed_networks") or []]
        self.min_free = float(site.get("min_free_mb", 100)) * 1024 * 1024
        self._stats: dict[int, AssocStats] = {}
        self._lock = threading.Lock()
        self.last_arrival = 0.0
        self.recorder = index.Recorder(self.q, classifier)
        self.server = None

    # -- access control -----------------------------------------------------------------------
    def address_allowed(self, address: str) -> bool:
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    # -- handlers -----------------------------------------------------------------------------
    def on_open(self, event) -> None:
        address = event.address[0]
        with self._lock:
            self._stats[id(event.assoc)] = AssocStats(address=address)
        try:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass
        _count_association(+1)

    def on_established(self, event) -> None:
        stats = self._stats.get(id(event.assoc))
        if stats is not None:
            stats.calling_aet = event.assoc.requestor.ae_title
            # The AE title the sender called (routing rules and AutoID projects key on it), not our own.
            primitive = getattr(event.assoc.requestor, "primitive", None)
            stats.called_aet = str(getattr(primitive, "called_ae_title", "") or "").strip()

    def on_rejected(self, event) -> None:
        rq = event.assoc.requestor
        logs.log_event(log, "assoc.rejected", logging.WARNING, site=self.name, calling_aet=rq.ae_title,
                       ip=rq.address, reason="calling AE title not allowed")

    def on_close(self, event) -> None:
        _count_association(-1)
        self.recorder.flush()
        with self._lock:
            stats = self._stats.pop(id(event.assoc), None)
        if stats is None or not stats.calling_aet:
            return
        logs.log_event(log, "assoc.closed", site=self.name, calling_aet=stats.calling_aet, ip=stats.address,
                       accepted=True, images=stats.images, duplicates=stats.duplicates, failures=stats.failures,
                       bytes=stats.bytes, studies=len(stats.studies), seconds=round(time.monotonic() - stats.started, 3))

    def on_echo(self, event) -> int:
        return STATUS_SUCCESS

    def on_store(self, event) -> int:
        stats = self._stats.get(id(event.assoc)) or AssocStats()
        status = self._store(event, stats)
        if status != STATUS_SUCCESS:
            stats.failures += 1
        return status

    def _store(self, event, stats: AssocStats) -> int:
        path = Path(event.dataset_path)
        try:
            ds = dcmread(path, defer_size=256)  # pixel data deferred, not dropped: classification sees it exists
        except (InvalidDicomError, ValueError, EOFError, OSError, TypeError, KeyError) as exc:
            logs.log_event(log, "store.unreadable", logging.WARNING, site=self.name, calling_aet=stats.calling_aet,
                           error=type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        size = path.stat().st_size
        if truncated_element(ds, size) is not None:
            logs.log_event(log, "store.truncated", logging.WARNING, site=self.name, calling_aet=stats.calling_aet)
            return STATUS_CANNOT_UNDERSTAND
        uids = {k: str(ds.get(k, "") or "") for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        bad = [k for k, v in uids.items() if not valid_uid(v)]
        if bad:
            logs.log_event(log, "store.invalid_uid", logging.WARNING, site=self.name, calling_aet=stats.calling_aet,
                           attributes=",".join(bad))
            return STATUS_CANNOT_UNDERSTAND
        request = event.request
        if uids["SOPInstanceUID"] != str(request.AffectedSOPInstanceUID) or str(ds.get("SOPClassUID", "")) != str(request.AffectedSOPClassUID):
            logs.log_event(log, "store.mismatch", logging.WARNING, site=self.name, calling_aet=stats.calling_aet,
                           reason="dataset SOP class/instance differs from the request")
            return STATUS_SOP_CLASS_MISMATCH
        study_key = keyed_hash(self.key, "study", uids["StudyInstanceUID"], length=16)
        with logs.correlation(study_key):
            if shutil.disk_usage(self.q.root).free < self.min_free:
                logs.log_event(log, "store.disk_full", logging.ERROR, site=self.name, free_mb=shutil.disk_usage(self.q.root).free // 2**20)
                return STATUS_OUT_OF_RESOURCES
            dest = self.q.instance_path(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"])
            try:
                stored = storage.store_file(path, None, dest, self.q.root)
            except storage.DiskFull:
                logs.log_event(log, "store.disk_full", logging.ERROR, site=self.name)
                return STATUS_OUT_OF_RESOURCES
            except OSError as exc:
                logs.log_event(log, "store.write_failed", logging.ERROR, site=self.name, error=type(exc).__name__)
                return STATUS_OUT_OF_RESOURCES
            if not stored:
                stats.duplicates += 1
                return STATUS_SUCCESS
            if self.recorder.needs_header(uids["SeriesInstanceUID"]):
                logs.register_sensitive(*(ds.get(k) for k in SENSITIVE))
            patient_hash = keyed_hash(self.key, "patient", str(ds.get("PatientID", "") or "").strip(),
                                      str(ds.get("IssuerOfPatientID", "") or "").strip())
            self.recorder.add(ds, self.name, stats.calling_aet, stats.called_aet or self.site["aet"], patient_hash, study_key)
        stats.images += 1
        stats.bytes += size  # dest holds these very bytes (linked, or copied across filesystems)
        stats.studies.add(study_key)
        self.last_arrival = time.time()
        return STATUS_SUCCESS

    # -- server -------------------------------------------------------------------------------
    def build_ae(self) -> AE:
        ae = AE(ae_title=self.site["aet"])
        ae.maximum_pdu_size = int(self.site.get("max_pdu") or 0)
        ae.maximum_associations = 32
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        if self.site.get("allowed_calling_aets"):
            ae.require_calling_aet = list(self.site["allowed_calling_aets"])
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        return ae

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.site.get("tls")
        if not tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.get("ca"))
        ctx.load_cert_chain(tls["cert"], tls["key"])
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.get("require_client_cert") else ssl.CERT_OPTIONAL if tls.get("ca") else ssl.CERT_NONE
        return ctx

    def start(self, host: str | None = None, port: int | None = None):
        handlers = [
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_CONN_OPEN, self.on_open),
            (evt.EVT_ACCEPTED, self.on_established),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_CONN_CLOSE, self.on_close),
        ]
        ae = self.build_ae()
        address = (host or self.site.get("host", "127.0.0.1"), port if port is not None else self.site["port"])
        self.server = ae.make_server(address, evt_handlers=handlers, ssl_context=self.ssl_context(), server_class=ReusePortServer)
        self.server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self.server.serve_forever, name=f"scp-{self.name}", daemon=True).start()
        receiver = self

        def verify_request(request, client_address) -> bool:
            allowed = receiver.address_allowed(client_address[0])
            if not allowed:
                logs.log_event(log, "assoc.rejected", logging.WARNING, site=receiver.name, ip=client_address[0],
                               reason="source address not in allowed_networks")
            return allowed

        self.server.verify_request = verify_request
        self.recorder.start()
        return self.server

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
        self.recorder.stop()


def chunk_dir(cfg: Config) -> Path:
    """Where pynetdicom writes incoming datasets: inside the main quarantine, so they can be linked in place."""
    path = cfg.data_dir / "quarantine" / ".incoming"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def site_list(cfg: Config, port: int | None = None, aet: str | None = None) -> list[dict]:
    """Every site, with ``port``/``aet`` overriding the main site's."""
    out = []
    for site in cfg.sites():
        if site["name"] == "main":
            site = dict(site, port=port if port is not None else site["port"], aet=aet or site["aet"])
        out.append(site)
    return out


def clean_after_crash(cfg: Config) -> None:
    """Remove what a killed receiver left behind: never-acknowledged temporaries. Run before any worker starts."""
    for leftover in chunk_dir(cfg).glob("*.dcm"):
        leftover.unlink(missing_ok=True)
    for site in cfg.sites():
        storage.clean_temporaries(Quarantine(site["data_dir"]).root)


def start_all(cfg: Config, classifier: Classifier, port: int | None = None, aet: str | None = None, clean: bool = True) -> list[SiteReceiver]:
    """Start every site's SCP in this process."""
    tempfile.tempdir = str(chunk_dir(cfg))
    if clean:
        clean_after_crash(cfg)
    receivers = []
    for site in site_list(cfg, port, aet):
        receiver = SiteReceiver(cfg, site, classifier)
        receiver.start()
        receivers.append(receiver)
    return receivers
