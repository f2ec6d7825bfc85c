"""Series classification with rules in the original FIONA ``classifyRules.json`` format.

A rule set is a list of classes::

    {"type": "axial", "id": "axial", "description": "...", "check": "SeriesLevel" (optional),
     "rules": [ {"tag": ["ImageOrientationPatient"], "value": [1,0,0,0,1,0], "operator": "approx", "approxLevel": 0.3},
                {"rule": "mr"}, {"notrule": "localizer"} ]}

``tag`` is ``[keyword]``, ``[group, element]`` or ``[group, element, index]`` (numbers or hex
strings); ``value`` is a regular expression (default operator ``regexp``), a literal, a list,
or a tag reference ``{"tag": [...]}``; operators: regexp, contains, ==, !=, <, >, approx
(with approxLevel), exist, notexist; ``negate`` inverts a rule. A class applies when all its
rules hold. Rule sets are validated at load (schema, unknown operators, unknown references,
reference cycles) with messages that say where the problem is.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword

OPERATORS = ("regexp", "contains", "==", "!=", "<", ">", "approx", "exist", "notexist")

SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "rules"],
        "additionalProperties": True,
        "properties": {
            "type": {"type": "string", "minLength": 1},
            "id": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "check": {"enum": ["SeriesLevel", "ImageLevel"]},
            "rules": {
                "type": "array",
                "items": {
                    "type": "object",
                    "oneOf": [
                        {"required": ["tag"], "not": {"anyOf": [{"required": ["rule"]}, {"required": ["notrule"]}]}},
                        {"required": ["rule"], "not": {"anyOf": [{"required": ["tag"]}, {"required": ["notrule"]}]}},
                        {"required": ["notrule"], "not": {"anyOf": [{"required": ["tag"]}, {"required": ["rule"]}]}},
                    ],
                    "properties": {
                        "tag": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": ["string", "integer"]}},
                        "value": {},
                        "operator": {"type": "string"},
                        "negate": {"type": ["string", "boolean"]},
                        "approxLevel": {"type": ["string", "number"]},
                        "rule": {"type": "string"},
                        "notrule": {"type": "string"},
                    },
                },
            },
        },
    },
}


class RulesError(ValueError):
    """A rule file that cannot be used; the message names the class and rule."""


def _num(x: Any) -> int:
    if isinstance(x, int):
        return x
    return int(str(x).strip(), 16)  # group/element strings are hexadecimal, with or without 0x


def _tag_and_index(spec: list) -> tuple[int, int | None]:
    if len(spec) == 1:
        tag = tag_for_keyword(str(spec[0]))
        if tag is None:
            raise RulesError(f"unknown DICOM keyword {spec[0]!r}")
        return tag, None
    group, element = _num(spec[0]), _num(spec[1])
    return (group << 16) | element, (int(spec[2]) if len(spec) > 2 else None)


class Classifier:
    """A validated rule set; :meth:`classify` returns the types that apply to a dataset."""

    def __init__(self, rules: list[dict], source: str = "rules") -> None:
        try:
            jsonschema.validate(rules, SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise RulesError(f"{source}: at {where or 'top level'}: {exc.message}") from None
        self.rules = rules
        self.by_id: dict[str, dict] = {}
        for i, cls in enumerate(rules):
            key = cls.get("id") or cls["type"]
            self.by_id.setdefault(key, cls)
            for j, rule in enumerate(cls["rules"]):
                where = f"{source}: class {cls['type']!r} rule {j + 1}"
                op = rule.get("operator", "regexp")
                if "tag" in rule:
                    if op not in OPERATORS:
                        raise RulesError(f"{where}: unknown operator {op!r} (one of {', '.join(OPERATORS)})")
                    try:
                        _tag_and_index(rule["tag"])
                        if isinstance(rule.get("value"), dict) and "tag" in rule["value"]:
                            _tag_and_index(rule["value"]["tag"])
                    except (RulesError, ValueError) as exc:
                        raise RulesError(f"{where}: {exc}") from None
                    if op == "regexp" and not isinstance(rule.get("value"), (dict, list)):
                        try:
                            re.compile(str(rule.get("value", "")))
                        except re.error as exc:
                            raise RulesError(f"{where}: invalid regular expression ({exc})") from None
                    if op not in ("exist", "notexist") and "value" not in rule:
                        raise RulesError(f"{where}: operator {op!r} needs a value")
        for cls in rules:
            for j, rule in enumerate(cls["rules"]):
                ref = rule.get("rule") or rule.get("notrule")
                if ref is not None and ref not in self.by_id:
                    raise RulesError(f"{source}: class {cls['type']!r} rule {j + 1}: refers to unknown rule {ref!r}")
        for key in self.by_id:
            self._check_cycle(key, [], source)

    def _check_cycle(self, key: str, path: list[str], source: str) -> None:
        if key in path:
            raise RulesError(f"{source}: rule references form a cycle: {' -> '.join(path + [key])}")
        for rule in self.by_id[key]["rules"]:
            ref = rule.get("rule") or rule.get("notrule")
            if ref:
                self._check_cycle(ref, path + [key], source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Classifier":
        if path is None:
            text = resources.files("scp").joinpath("classify_rules.json").read_text()
            source = "default classification rules"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise RulesError(f"{path}: cannot be read ({exc.strerror})") from None
            source = str(path)
        try:
            rules = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls(rules, source)

    def classify(self, ds: Dataset) -> list[str]:
        memo: dict[str, bool] = {}
        types: list[str] = []
        for cls in self.rules:
            if self._applies(cls, ds, memo) and cls["type"] not in types:
                types.append(cls["type"])
        return types

    def _applies(self, cls: dict, ds: Dataset, memo: dict[str, bool]) -> bool:
        key = cls.get("id") or cls["type"]
        if key in memo and self.by_id.get(key) is cls:
            return memo[key]
        result = all(self._rule(rule, ds, memo) for rule in cls["rules"])
        if self.by_id.get(key) is cls:
            memo[key] = result
        return result

    def _rule(self, rule: dict, ds: Dataset, memo: dict[str, bool]) -> bool:
        if "rule" in rule:
            return self._applies(self.by_id[rule["rule"]], ds, memo)
        if "notrule" in rule:
            return not self._applies(self.by_id[rule["notrule"]], ds, memo)
        result = self._tag_rule(rule, ds)
        negate = rule.get("negate")
        if negate is True or str(negate).lower() in ("yes", "true", "1"):
            result = not result
        return result

    def _tag_rule(self, rule: dict, ds: Dataset) -> bool:
        tag, index = _tag_and_index(rule["tag"])
        op = rule.get("operator", "regexp")
        present = tag in ds and ds[tag].value not in (None, "", b"")
        if op == "exist":
            return present
        if op == "notexist":
            return not present
        if not present:
            return False
        value = _value(ds, tag, index)
        target = rule.get("value")
        if isinstance(target, dict) and "tag" in target:
            ttag, tindex = _tag_and_index(target["tag"])
            if ttag not in ds:
                return False
            target = _value(ds, ttag, tindex)
        if op == "regexp":
            return re.search(str(target), _text(value)) is not None
        if op == "contains":
            if isinstance(value, list):
                return any(str(target).lower() == str(v).lower() for v in value)
            return str(target).lower() in _text(value).lower()
        if op == "approx":
            level = float(rule.get("approxLevel", 1e-4))
            a, b = _floats(value), _floats(target)
            return a is not None and b is not None and len(a) == len(b) and all(abs(x - y) <= level for x, y in zip(a, b))
        a, b = _floats(value), _floats(target)
        if a is not None and b is not None and len(a) == len(b) == 1:
            x, y = a[0], b[0]
        else:
            x, y = _text(value), _text(target)
        return {"==": x == y, "!=": x != y, "<": x < y, ">": x > y}[op]


def _value(ds: Dataset, tag: int, index: int | None) -> Any:
    raw = ds[tag].value
    if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        values = list(raw)
        if index is not None:
            return values[index] if index < len(values) else None
        return values
    return raw


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _floats(value: Any) -> list[float] | None:
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None
