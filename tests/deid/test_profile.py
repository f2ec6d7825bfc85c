"""Table-driven: every row of PS3.15 Table E.1-1 (2025b), for the basic profile, each option alone and the
project defaults, at top level and nested two levels deep, gets the action the table prescribes."""

import json
from importlib import resources

import pytest
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from fiona_redcap.deid import DeidOptions, ProjectPolicy, Pseudonymizer, phi
from fiona_redcap.deid.options import OPTION_CODES
from fiona_redcap.deid.profile import COMPOUND, ActionTable
from tests.fixtures.dicom import Identity, make_instance

PROFILE = json.loads(resources.files("fiona_redcap").joinpath("data/deid_profile.json").read_text())
CONVENTIONS = {0x00100010, 0x00100020, 0x00080080, 0x00080090, 0x00120050, 0x00120020, 0x00120021, 0x00080050, 0x00200010,
               0x00120062, 0x00120063, 0x00120064, 0x00280303}
STRUCTURAL = {0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x7FE00010}
SAMPLE = {"AE": "PLAINAE", "AS": "042Y", "CS": "PLAIN", "DA": "20200102", "DS": "1.5", "DT": "20200102030405", "FL": 1.5, "FD": 1.5,
          "IS": "7", "LO": "plain text", "LT": "plain text", "PN": "PLAIN^TEXT", "SH": "plain", "SL": 7, "SS": 7, "ST": "plain text",
          "TM": "030405", "UC": "plain text", "UL": 7, "UR": "http://example.org", "US": 7, "UT": "plain text", "OB": b"\x01\x02",
          "OW": b"\x01\x02", "UN": b"\x01\x02"}
OPTION_SETS = [("basic", DeidOptions())] + [(name, DeidOptions.from_names([name])) for name in OPTION_CODES] + [("defaults", DeidOptions.defaults())]


def rows():
    """Rows with a concrete tag that pydicom knows and whose VR we can fill."""
    out = []
    for row in PROFILE["attributes"]:
        tag = row["tag"]
        if len(tag) != 8 or not all(c in "0123456789ABCDEF" for c in tag):
            continue
        t = int(tag, 16)
        if t in CONVENTIONS or t in STRUCTURAL or t >> 16 == 0x0002:
            continue
        try:
            vr = dictionary_VR(t)
        except KeyError:
            continue
        if vr == "SQ" or vr in SAMPLE:
            out.append((t, vr, row))
    return out


ROWS = rows()


IDENTIFYING = {kw for kw in phi.NAME_KEYWORDS + phi.ID_KEYWORDS + phi.OTHER_KEYWORDS} | {"PatientBirthDate"}


def sample(t: int, vr: str):
    """The planted value: identifying attributes get values of their own, so that the residual-PHI scan
    (which looks for every rendering of the study's identifiers) does not flag the neutral samples."""
    if keyword_for_tag(t) == "PatientBirthDate":
        return "19500607"
    if keyword_for_tag(t) in IDENTIFYING and vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC"):
        return "QXZPN^QXZGIVEN" if vr == "PN" else f"QXZ{t:08X}"
    return SAMPLE[vr]


def expected(row, options: DeidOptions) -> str:
    return ActionTable._resolve(row, set(options.enabled())).action


def fill(ds: Dataset) -> None:
    for t, vr, _ in ROWS:
        if vr == "SQ":
            item = Dataset()
            item.CodeMeaning = "plain text"
            ds.add_new(t, vr, Sequence([item]))
        else:
            ds.add_new(t, vr, sample(t, vr))


def test_profile_records_its_edition_and_covers_the_table():
    assert PROFILE["edition"] == "2025b" and len(PROFILE["attributes"]) == 647
    assert len(ROWS) > 450  # nearly every row is exercised below
    assert set(COMPOUND) >= {r["basic"] for r in PROFILE["attributes"] if "/" in r["basic"]}


@pytest.mark.parametrize("label, options", OPTION_SETS, ids=[n for n, _ in OPTION_SETS])
def test_every_row_gets_its_action_top_level_and_nested(tmp_path, label, options):
    ident = Identity()
    ds = make_instance(generate_uid(), generate_uid(), 1, ident)
    fill(ds)
    level1 = Dataset()
    level2 = Dataset()
    fill(level2)
    level1.VOILUTSequence = Sequence([level2])  # not in the profile: kept, its items de-identified
    ds.DimensionIndexSequence = Sequence([level1])
    src = tmp_path / "in.dcm"
    ds.save_as(src, enforce_file_format=True)
    engine = Pseudonymizer(ProjectPolicy("PROJ1", options=options), b"k" * 32, "kid")
    result = engine.study([src], tmp_path / "out", "P001", "baseline")
    from pydicom import dcmread

    out = dcmread(result.files[0])
    nested = out.DimensionIndexSequence[0].VOILUTSequence[0]
    problems = []
    for where, container in (("top", out), ("nested", nested)):
        for t, vr, row in ROWS:
            action = expected(row, options)
            present = t in container
            value = container[t].value if present else None
            original = sample(t, vr) if vr != "SQ" else None
            ok = {
                "X": not present,
                "Z": present and (value in ("", None) or (vr == "SQ" and len(value) == 0)),
                "D": present and (vr == "SQ" or value not in (None,) and value != original or vr in ("DA", "DT")) and (vr not in ("OB", "OW", "UN") or not any(value)),
                "U": present and str(value) != original,
                "K": present and (value == original or vr in ("DA", "DT", "SQ")),
                "C": (not present) if vr in ("OB", "OW", "UN") else present,
            }[action]
            if vr in ("DA", "DT") and present and action in ("K", "C", "D") and options.retain_long_modified_dates and not options.retain_long_full_dates:
                ok = ok and value != original  # every kept date is shifted
            if vr in ("DA", "DT") and present and action == "K" and options.retain_long_full_dates:
                ok = ok and value == original
            if not ok:
                problems.append(f"{where} {keyword_for_tag(t) or hex(t)} {row['basic']}->{action}: {value!r}")
    assert not problems, f"{len(problems)} rows wrong, e.g. {problems[:8]}"
