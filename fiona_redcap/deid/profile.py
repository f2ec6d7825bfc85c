"""The de-identification action table: PS3.15 Table E.1-1 resolved for one set of options.

Per attribute the enabled option's action wins over the basic profile; where two enabled
options apply, retaining (K) wins over cleaning (C) over removing. Compound codes keep the
dataset conformant where the attribute may be required: X/Z → Z, X/D → D, Z/D and X/Z/D → Z,
X/Z/U* → U.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .options import DeidOptions

COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "Z", "X/Z/D": "Z", "X/Z/U*": "U", "X/Z/U": "U"}
PRIORITY = {"K": 0, "C": 1, "U": 2, "D": 3, "Z": 4, "X": 5}


@dataclass(frozen=True)
class Rule:
    action: str  # K, C, U, D, Z or X
    source: str  # "basic" or the option that decided it
    name: str


@lru_cache(maxsize=1)
def profile_data() -> dict:
    return json.loads(resources.files("fiona_redcap").joinpath("data/deid_profile.json").read_text())


def edition() -> str:
    return profile_data()["edition"]


class ActionTable:
    """tag → Rule for one option set, plus repeating-group masks and the private-tag rule."""

    def __init__(self, options: DeidOptions) -> None:
        enabled = set(options.enabled())
        self.exact: dict[int, Rule] = {}
        self.masks: list[tuple[int, int, Rule]] = []
        self.private = Rule("X", "basic", "Private Attributes")
        for row in profile_data()["attributes"]:
            rule = self._resolve(row, enabled)
            tag = row["tag"]
            if tag.startswith("gggg"):
                self.private = rule
            elif "X" in tag:
                mask = int("".join("0" if c == "X" else "F" for c in tag), 16)
                value = int(tag.replace("X", "0"), 16)
                self.masks.append((mask, value, rule))
            else:
                self.exact[int(tag, 16)] = rule

    @staticmethod
    def _resolve(row: dict, enabled: set[str]) -> Rule:
        choices = [(act, opt) for opt, act in (row.get("options") or {}).items() if opt in enabled]
        if choices:
            act, opt = min(choices, key=lambda c: PRIORITY.get(COMPOUND.get(c[0], c[0]), 9))
            return Rule(COMPOUND.get(act, act), opt, row["name"])
        return Rule(COMPOUND.get(row["basic"], row["basic"]), "basic", row["name"])

    def lookup(self, tag: int) -> Rule | None:
        rule = self.exact.get(tag)
        if rule is not None:
            return rule
        for mask, value, masked_rule in self.masks:
            if tag & mask == value:
                return masked_rule
        return None


@lru_cache(maxsize=32)
def table_for(options: DeidOptions) -> ActionTable:
    return ActionTable(options)


@lru_cache(maxsize=1)
def safe_private() -> dict[str, set[tuple[int, int]]]:
    """Private Creator → {(group, element byte)} of Table E.3.10-1."""
    out: dict[str, set[tuple[int, int]]] = {}
    for row in profile_data()["safe_private"]:
        element = row["element"]
        if "X" in element.upper():
            continue
        out.setdefault(row["creator"].strip().upper(), set()).add((int(row["group"], 16), int(element, 16)))
    return out
