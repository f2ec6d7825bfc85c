"""Verification: ask the destination which instances of a study it holds (C-FIND).

A series-level query lists the study's series, then one image-level query per series lists
its SOPInstanceUIDs, so the caller can compare sets, not just totals, and send only what is
missing.
"""

from __future__ import annotations

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from ..dicom_net import _nodelay
from . import ForwardError
from .dicom_store import tls_context


def _find(assoc, level: str, **keys) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    out = []
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status is None or "Status" not in status:
            raise ForwardError("the destination stopped answering a C-FIND")
        code = int(status.Status)
        if code in (0xFF00, 0xFF01) and identifier is not None:
            out.append(identifier)
        elif code not in (0x0000, 0xFF00, 0xFF01):
            raise ForwardError(f"the destination refused a C-FIND (status 0x{code:04X})")
    return out


def stored_instances(dest: dict, study_uid: str, calling_aet: str) -> set[str]:
    """SOPInstanceUIDs of ``study_uid`` held by a DICOM destination."""
    ae = AE(ae_title=calling_aet)
    timeout = float(dest.get("timeout_seconds", 60))
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ctx = tls_context(dest)
    kwargs = {"tls_args": (ctx, None)} if ctx else {}
    assoc = ae.associate(dest["host"], int(dest["port"]), ae_title=dest["aet"],
                         evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)], **kwargs)
    if not assoc.is_established:
        raise ForwardError(f"cannot query {dest['aet']}@{dest['host']}:{dest['port']} (association rejected or no answer)")
    try:
        found: set[str] = set()
        for series in _find(assoc, "SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=""):
            series_uid = str(series.get("SeriesInstanceUID", ""))
            if not series_uid:
                continue
            for image in _find(assoc, "IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=""):
                if image.get("SOPInstanceUID"):
                    found.add(str(image.SOPInstanceUID))
        return found
    finally:
        if assoc.is_established:
            assoc.release()
