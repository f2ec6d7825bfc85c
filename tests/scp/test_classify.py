"""Classification rules: the original classifyRules.json format, with its bugs fixed."""

import json

import pytest
from pydicom import Dataset

from scp.classify import Classifier, RulesError


def ds(**kw):
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_default_rules_classify_common_series():
    c = Classifier.load()
    mr = ds(Modality="MR", ImageType=["ORIGINAL", "PRIMARY", "M"], ImageOrientationPatient=[1, 0, 0, 0, 1, 0], SeriesDescription="DTI_30", PixelData=b"\0\0")
    assert c.classify(mr) == ["mr", "original", "axial", "diffusion"]
    sc = ds(Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", PixelData=b"\0\0")
    assert {"secondary-capture", "pixel-phi-risk"} <= set(c.classify(sc))
    us_clean = ds(Modality="US", BurnedInAnnotation="NO", PixelData=b"\0\0")
    assert "pixel-phi-risk" not in c.classify(us_clean)
    loc = ds(Modality="MR", ImageOrientationPatient=[0, 1, 0, 0, 0, -1], SeriesDescription="3-plane loc", PixelData=b"\0\0")
    assert {"sagittal", "localizer"} <= set(c.classify(loc))


def test_exist_notexist_and_operators():
    rules = [
        {"type": "has-accession", "rules": [{"tag": ["AccessionNumber"], "operator": "exist"}]},
        {"type": "no-accession", "rules": [{"tag": ["0x0008", "0x0050"], "operator": "notexist"}]},
        {"type": "thick", "rules": [{"tag": ["SliceThickness"], "operator": ">", "value": 3}]},
        {"type": "ge", "rules": [{"tag": ["Manufacturer"], "value": "GE", "operator": "contains"}]},
        {"type": "not-ge", "rules": [{"tag": ["Manufacturer"], "value": "GE", "operator": "contains", "negate": "yes"}]},
        {"type": "same-dates", "rules": [{"tag": ["StudyDate"], "operator": "==", "value": {"tag": ["SeriesDate"]}}]},
        {"type": "first-row", "rules": [{"tag": ["0x0020", "0x0037", 0], "operator": "==", "value": 1}]},
    ]
    c = Classifier(rules)
    assert c.classify(ds(AccessionNumber="A1", SliceThickness=5, Manufacturer="GE MEDICAL", StudyDate="20200101", SeriesDate="20200101",
                         ImageOrientationPatient=[1, 0, 0, 0, 1, 0])) == ["has-accession", "thick", "ge", "same-dates", "first-row"]
    assert c.classify(ds(SliceThickness=1, Manufacturer="Siemens")) == ["no-accession", "not-ge"]


@pytest.mark.parametrize("rules, message", [
    ([{"type": "x", "rules": [{"tag": ["Modality"], "operator": "like", "value": "MR"}]}], "unknown operator 'like'"),
    ([{"type": "x", "rules": [{"tag": ["NoSuchKeyword"], "value": "MR"}]}], "unknown DICOM keyword"),
    ([{"type": "x", "rules": [{"rule": "missing"}]}], "refers to unknown rule 'missing'"),
    ([{"type": "a", "rules": [{"rule": "b"}]}, {"type": "b", "rules": [{"notrule": "a"}]}], "cycle: a -> b -> a"),
    ([{"type": "x", "rules": [{"tag": ["Modality"], "value": "(["}]}], "invalid regular expression"),
    ([{"type": "x"}], "'rules' is a required property"),
    ([{"type": "x", "rules": [{"tag": ["Modality"], "operator": "=="}]}], "needs a value"),
])
def test_bad_rule_files_are_rejected_with_the_place(rules, message):
    with pytest.raises(RulesError, match=message.replace("(", r"\(").replace("[", r"\[")):
        Classifier(rules)


def test_rule_file_errors_name_the_file(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text("[{")
    with pytest.raises(RulesError, match=f"{path}: not valid JSON"):
        Classifier.load(path)
    path.write_text(json.dumps([{"type": "x", "rules": [{"tag": ["Modality"], "operator": "bogus", "value": 1}]}]))
    with pytest.raises(RulesError, match="class 'x' rule 1: unknown operator"):
        Classifier.load(path)
