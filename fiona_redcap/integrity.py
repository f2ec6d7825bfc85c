"""Is a DICOM file whole? pydicom reads a truncated file without complaint (the last values are just shorter), so
the receiver and the pseudonymizer ask here before treating what they read as a complete instance."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.tag import BaseTag


def truncated_element(ds: Dataset, file_size: int) -> BaseTag | None:
    """The first top-level element of ``ds`` (read from a file of ``file_size`` bytes) that ends before its stated
    length, or None. Values pydicom deferred are checked against the file's size; undefined lengths are skipped
    (their end is a delimiter pydicom did find, or the data would not have been read)."""
    for elem in ds.values():
        if not elem.is_raw or elem.length == 0xFFFFFFFF:
            continue
        if elem.value is None:
            if elem.value_tell + elem.length > file_size:
                return elem.tag
        elif len(elem.value) != elem.length:
            return elem.tag
    return None
