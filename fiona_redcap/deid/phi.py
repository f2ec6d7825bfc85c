"""Identifiers of a study in every rendering, identifier patterns, text cleaning and the residual-PHI scan.

The same knowledge serves twice: cleaning descriptive text (action C removes the study's own
identifiers and identifier patterns, keeping the rest), and the scan of the output before
anything is forwarded (a hit blocks the study, reporting tag paths, never values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
FREE_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
NAME_KEYWORDS = ("PatientName", "PatientBirthName", "PatientMotherBirthName", "OtherPatientNames", "ResponsiblePerson")
ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "MedicalRecordLocator", "IssuerOfPatientID")
OTHER_KEYWORDS = ("PatientAddress", "PatientTelephoneNumbers", "PatientInsurancePlanCodeSequence")
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+")
PHONE_RE = re.compile(r"(?<![\w.])(\+\d{1,3}[\s\-]?)?\(?\d{2,4}\)?[\s\-]\d{2,4}[\s\-]\d{2,4}([\s\-]\d{2,4})?(?![\w.])")
SSN_RE = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
NO_FNR_RE = re.compile(r"(?<!\d)(\d{6})\s?(\d{5})(?!\d)")
SE_PNR_RE = re.compile(r"(?<!\d)(\d{2})?(\d{6})[-+]?(\d{4})(?!\d)")
DIGITS_AND_DOTS_RE = re.compile(r"[0-9.]+")  # UIDs, numbers, dates


def _tags(*keywords: str) -> tuple[tuple[str, int], ...]:
    from pydicom.datadict import tag_for_keyword

    return tuple((kw, tag_for_keyword(kw)) for kw in keywords)


_GATHERED = _tags(*NAME_KEYWORDS, *ID_KEYWORDS, "PatientBirthDate", *OTHER_KEYWORDS, "OtherPatientIDsSequence", *UID_KEYWORDS)


def _valid_fnr(d: str) -> bool:
    """Norwegian fødselsnummer: two mod-11 check digits."""
    if len(d) != 11 or not d.isdigit():
        return False
    n = [int(c) for c in d]
    k1 = 11 - sum(a * b for a, b in zip(n[:9], (3, 7, 6, 1, 8, 9, 4, 5, 2))) % 11
    k1 = 0 if k1 == 11 else k1
    k2 = 11 - sum(a * b for a, b in zip(n[:10], (5, 4, 3, 2, 7, 6, 5, 4, 3, 2))) % 11
    k2 = 0 if k2 == 11 else k2
    return k1 == n[9] and k2 == n[10] and int(d[:2]) <= 71 and 1 <= int(d[2:4]) % 40 <= 12


def _valid_luhn(d: str) -> bool:
    total = 0
    for i, c in enumerate(d):
        v = int(c) * (2 if i % 2 == 0 else 1)
        total += v - 9 if v > 9 else v
    return total % 10 == 0


def pattern_hits(text: str) -> list[tuple[int, int, str]]:
    """Spans of identifier patterns: e-mail, phone, US SSN, Norwegian and Swedish national IDs (checksummed)."""
    spans = [(m.start(), m.end(), "e-mail") for m in EMAIL_RE.finditer(text)]
    spans += [(m.start(), m.end(), "SSN") for m in SSN_RE.finditer(text)]
    spans += [(m.start(), m.end(), "national ID") for m in NO_FNR_RE.finditer(text) if _valid_fnr(m.group(1) + m.group(2))]
    spans += [(m.start(), m.end(), "national ID") for m in SE_PNR_RE.finditer(text)
              if _valid_luhn(m.group(2) + m.group(3)) and 1 <= int(m.group(2)[2:4]) <= 12]
    spans += [(m.start(), m.end(), "phone") for m in PHONE_RE.finditer(text) if sum(c.isdigit() for c in m.group()) >= 8]
    return spans


def _name_renderings(value: str) -> set[str]:
    parts = [p.strip() for p in str(value).split("=")[0].split("^")]
    family, given, middle = (parts + ["", "", ""])[:3]
    out = {str(value).strip()}
    if family and given:
        out |= {f"{given} {family}", f"{family} {given}", f"{family}, {given}", f"{family},{given}", f"{family}^{given}"}
        if middle:
            out |= {f"{given} {middle} {family}", f"{given} {middle[0]}. {family}", f"{given} {middle[0]} {family}"}
        initials = given[0] + (middle[0] if middle else "") + family[0]
        out |= {initials, ".".join(initials) + ".", given[0] + family[0], f"{given[0]}.{family[0]}."}
    for p in (family, given, middle):
        if len(p) >= 3:
            out.add(p)
    return {r for r in out if r}


def _id_renderings(value: str) -> set[str]:
    value = str(value).strip()
    out = {value}
    alnum = re.sub(r"[^A-Za-z0-9]", "", value)
    if len(alnum) >= 4:
        out.add(alnum)
    digits = re.sub(r"\D", "", value)
    for d in (digits, digits.lstrip("0")):
        if len(d) >= 5:  # shorter digit runs are everywhere in DICOM numbers
            out.add(d)
    return {r for r in out if len(r) >= 3}


def _date_renderings(value: str) -> set[str]:
    v = str(value).strip()
    if not re.fullmatch(r"\d{8}", v):
        return {v} if v else set()
    y, m, d = v[:4], v[4:6], v[6:]
    return {v, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}{m}{y}", f"{d}.{m}.{y[2:]}", f"{d}-{m}-{y}"}


@dataclass
class Identifiers:
    """The original identifiers of one study (all its instances), in every rendering we look for."""

    names: set[str] = field(default_factory=set)
    short: set[str] = field(default_factory=set)  # initials: matched as whole tokens only
    uids: set[str] = field(default_factory=set)
    _regex: re.Pattern | bool | None = None  # None: not built yet; False: nothing to search for
    _numeric_regex: re.Pattern | bool | None = None
    _seen: set = field(default_factory=set)  # (tag, raw bytes, character set) already gathered

    def add_dataset(self, ds: Dataset) -> None:
        charset = ds.get_item(0x00080005)
        charset = None if charset is None else charset.value if charset.is_raw else str(charset.value)  # hashable
        for kw, tag in _GATHERED:
            item = ds.get_item(tag)
            if item is None:
                continue
            # Within a study the same values repeat in every instance: each distinct one is rendered once.
            seen = (tag, item.value, charset) if item.is_raw and isinstance(item.value, bytes) else None
            if seen is not None:
                if seen in self._seen:
                    continue
                self._seen.add(seen)
            self._gather(kw, ds)
        self._regex = self._numeric_regex = None

    def _gather(self, kw: str, ds: Dataset) -> None:
        if kw in NAME_KEYWORDS:
            for value in _values(ds.get(kw)):
                for r in _name_renderings(value):
                    (self.short if len(r.replace(".", "")) <= 3 and r.replace(".", "").isalpha() and r.upper() == r else self.names).add(r)
        elif kw in ID_KEYWORDS:
            for value in _values(ds.get(kw)):
                self.names |= _id_renderings(value)
        elif kw == "PatientBirthDate":
            for value in _values(ds.get(kw)):
                self.names |= _date_renderings(value)
        elif kw in OTHER_KEYWORDS:
            for value in _values(ds.get(kw)):
                if isinstance(value, str) and len(value.strip()) >= 4:
                    self.names.add(value.strip())
        elif kw == "OtherPatientIDsSequence":
            for item in ds.get(kw) or []:
                for value in _values(item.get("PatientID")):
                    self.names |= _id_renderings(value)
        elif kw in UID_KEYWORDS:
            for value in _values(ds.get(kw)):
                self.uids.add(str(value))

    def regex(self) -> re.Pattern | None:
        if self._regex is None:
            self._regex = _names_regex(self.names, self.short) or False  # False: computed, nothing to find
        return self._regex or None

    def numeric_regex(self) -> re.Pattern | None:
        """The same search for texts of digits and dots only (UIDs, numbers, dates): only renderings of digits
        and dots can be found in them, and a regex of those few is much faster than one of all."""
        if self._numeric_regex is None:
            self._numeric_regex = _names_regex({n for n in self.names if DIGITS_AND_DOTS_RE.fullmatch(n)}, set()) or False
        return self._numeric_regex or None

    def clean(self, text: str) -> str:
        """Text without the study's identifiers and identifier patterns; the rest kept."""
        rx = self.regex()
        if rx is not None:
            text = rx.sub("", text)
        for start, end, _ in sorted(pattern_hits(text), reverse=True):
            text = text[:start] + text[end:]
        return re.sub(r"\s{2,}", " ", text).strip(" ,;^")

    def _has_uid(self, text: str) -> bool:
        """An original UID as a whole number run: not preceded by a digit or dot, not followed by a digit
        (so also as the head of a longer dotted run). Looked up per run, not searched: a study has thousands."""
        for m in DIGITS_AND_DOTS_RE.finditer(text):
            run = m.group()
            if run in self.uids:
                return True
            dot = run.find(".")
            while dot != -1:
                if run[:dot] in self.uids:
                    return True
                dot = run.find(".", dot + 1)
        return False

    def hits(self, text: str, patterns: bool = True) -> list[str]:
        """What kinds of identifiers a text still contains (never the values); ``patterns``: also identifier
        patterns (e-mail, phone, national IDs), which only free text can carry."""
        kinds = []
        rx = self.numeric_regex() if DIGITS_AND_DOTS_RE.fullmatch(text) else self.regex()
        if rx is not None and rx.search(text):
            kinds.append("study identifier")
        if self.uids and self._has_uid(text):
            kinds.append("original UID")
        if patterns:
            kinds += sorted({kind for _, _, kind in pattern_hits(text)})
        return kinds


def _names_regex(names: set[str], short: set[str]) -> re.Pattern | None:
    # Whole words only: a family name "Doe" must not flag "does"; an ID must not flag a longer number.
    parts = [rf"(?<![A-Za-z0-9]){re.escape(n)}(?![A-Za-z0-9])" for n in sorted(names, key=len, reverse=True) if len(n) >= 3]
    parts += [rf"(?<![A-Za-z]){re.escape(s)}(?![A-Za-z])" for s in sorted(short, key=len, reverse=True)]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _values(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [v for v in value if v not in (None, "")]
    return [value]


def walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, DataElement]]:
    """Every text element at any depth with a readable path: ``(0040,0275)[0].(0008,0050)``.

    Elements of other VRs are not decoded (decoding every value is the costly part of a scan).
    """
    for tag in list(ds.keys()):
        vr = ds.get_item(tag).VR
        if vr in (None, "UN"):
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue
        if vr not in TEXT_VRS and vr != "SQ":
            continue
        elem = ds[tag]
        here = f"{path}({tag.group:04X},{tag.element:04X})"
        yield here, elem
        if elem.VR == "SQ" and isinstance(elem.value, Sequence):
            for i, item in enumerate(elem.value):
                yield from walk(item, f"{here}[{i}].")


def scan(ds: Dataset, idents: Identifiers, allowed: set[str]) -> list[str]:
    """Tag paths (with the kind of finding) whose text still carries identifiers, file meta included."""
    findings = []
    sources = [("", ds)]
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        sources.append(("meta:", meta))
    for prefix, source in sources:
        for path, elem in walk(source, prefix):
            if elem.VR not in TEXT_VRS or elem.value in (None, ""):
                continue
            for value in _values(elem.value):
                text = str(value)
                if text in allowed:
                    continue
                kinds = idents.hits(text, patterns=elem.VR in FREE_TEXT_VRS)
                if kinds:
                    findings.append(f"{path} ({', '.join(kinds)})")
    return findings
