"""DICOM network client helpers shared by ``fiona send``, the forwarders and health checks.

Sockets disable Nagle's algorithm (TCP_NODELAY): DIMSE is request/response, and Nagle plus
delayed ACKs otherwise cost tens of milliseconds per image.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


@dataclass
class SendResult:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_target(text: str) -> tuple[str, str, int]:
    """``AE@host:port`` → (AE, host, port)."""
    try:
        aet, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return aet, host, int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not AE@host:port") from None


def _nodelay(event) -> None:
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Every regular file under the given files/directories (recursively), sorted."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            out.append(p)
    return out


def echo(aet: str, host: str, port: int, calling_aet: str = "FIONA", timeout: float = 10) -> bool:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def send_files(files: list[Path], aet: str, host: str, port: int, calling_aet: str = "FIONA",
               progress: Callable[[int, int], None] | None = None, timeout: float = 60, ssl_context=None) -> SendResult:
    """C-STORE the files in one association, proposing each file's own transfer syntax.

    Unreadable files are reported, not sent. Raises ConnectionError if no association.
    """
    result = SendResult()
    metas = []
    for f in files:
        try:
            ds = dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
            ts = ds.file_meta.TransferSyntaxUID
            metas.append((f, str(ds.SOPClassUID), str(ts)))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            result.failed.append((f.name, f"not a DICOM file ({type(exc).__name__})"))
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    contexts: dict[str, set[str]] = {}
    for _, sop_class, ts in metas:
        contexts.setdefault(sop_class, set()).add(ts)
    count = 0
    for sop_class, syntaxes in contexts.items():
        for ts in sorted(syntaxes | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}):
            if count < 128:
                ae.add_requested_context(sop_class, ts)
                count += 1
    if not metas:
        return result
    kwargs = {"tls_args": (ssl_context, host)} if ssl_context else {}  # host: checked against the certificate
    assoc = ae.associate(host, port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)], **kwargs)
    if not assoc.is_established:
        raise ConnectionError(f"association with {aet}@{host}:{port} was rejected or could not be opened")
    try:
        for i, (f, _, _) in enumerate(metas, 1):
            try:
                status = assoc.send_c_store(f)
            except (ValueError, AttributeError, RuntimeError) as exc:
                result.failed.append((f.name, f"cannot be sent ({type(exc).__name__}: {exc})"[:200]))
                continue
            code = int(status.Status) if status and "Status" in status else -1
            result.statuses[code] = result.statuses.get(code, 0) + 1
            if code in (0x0000, 0xB000, 0xB007, 0xB006):
                result.sent += 1
            else:
                result.failed.append((f.name, f"status 0x{code & 0xFFFF:04X}" if code >= 0 else "no response"))
            if progress:
                progress(i, len(metas))
            if not assoc.is_established:
                result.failed.extend((g.name, "association lost") for g, _, _ in metas[i:])
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return result
