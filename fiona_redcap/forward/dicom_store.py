"""DICOM C-STORE SCU to a research PACS: one association per batch, stored syntax first.

Each file is proposed in its stored transfer syntax with Explicit and Implicit VR Little
Endian as fallbacks; when the peer accepts only a fallback, pynetdicom decompresses or
re-encodes the dataset for it. Sockets use TCP_NODELAY (see :mod:`fiona_redcap.dicom_net`).
More SOP classes than one association can carry (128 presentation contexts) are sent in
further associations, one per group of SOP classes.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Callable

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from ..dicom_net import SendResult, send_files
from . import ForwardError

CONTEXTS_PER_ASSOCIATION = 128
SYNTAXES_PER_CLASS = 3  # stored syntax + two fallbacks


class _ServerContext(ssl.SSLContext):
    """A client context that always names the server it checks (pynetdicom's helpers may pass no hostname)."""

    server_host = ""

    def wrap_socket(self, sock, *args, server_hostname=None, **kwargs):
        return super().wrap_socket(sock, *args, server_hostname=server_hostname or self.server_host, **kwargs)


def tls_context(dest: dict) -> ssl.SSLContext | None:
    """A client TLS context from the destination's ``tls``: the server is verified against ``ca`` (or the
    system store) and its name; ``cert``/``key`` authenticate FIONA when the PACS asks for a client certificate."""
    tls = dest.get("tls")
    if not tls:
        return None
    ctx = _ServerContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_host = dest["host"]
    if tls.get("ca"):
        ctx.load_verify_locations(cafile=tls["ca"])
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.get("cert"):
        ctx.load_cert_chain(tls["cert"], tls.get("key"))
    return ctx


def _sop_class(path: Path) -> str:
    try:
        return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)
    except (InvalidDicomError, AttributeError, OSError, ValueError):
        return ""


def batches(files: list[Path]) -> list[list[Path]]:
    """Files grouped so that each group's SOP classes fit in one association."""
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(_sop_class(f), []).append(f)
    per_batch = CONTEXTS_PER_ASSOCIATION // SYNTAXES_PER_CLASS
    classes = list(by_class)
    return [[f for c in classes[i:i + per_batch] for f in by_class[c]] for i in range(0, len(classes), per_batch)]


def store_files(dest: dict, files: list[Path], calling_aet: str,
                progress: Callable[[int, int], None] | None = None) -> SendResult:
    """C-STORE every file to the destination; raises ForwardError if no association can be opened."""
    total = SendResult()
    timeout = float(dest.get("timeout_seconds", 60))
    done = 0
    for batch in batches(files):
        def step(i: int, _n: int, offset=done) -> None:
            if progress:
                progress(offset + i, len(files))

        try:
            result = send_files(batch, dest["aet"], dest["host"], int(dest["port"]), calling_aet=calling_aet,
                                progress=step, timeout=timeout, ssl_context=tls_context(dest))
        except ConnectionError:
            raise ForwardError(f"association with {dest['aet']}@{dest['host']}:{dest['port']} was rejected or could not be "
                               f"opened ({total.sent} of {len(files)} images stored)") from None
        total.sent += result.sent
        total.failed.extend(result.failed)
        for code, n in result.statuses.items():
            total.statuses[code] = total.statuses.get(code, 0) + n
        done += len(batch)
    return total
