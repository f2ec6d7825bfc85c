"""AutoID: participant IDs generated from a project's naming pattern.

The AutoID project stores only a keyed hash of the source patient (never the PatientID), so
the same patient gets the same participant ID on later studies. New IDs are drawn with a
CSPRNG from the project's participant regex and checked against *every* existing participant
of the project (its own REDCap, Incoming transfers and earlier AutoID entries).
"""

from __future__ import annotations

import re
import secrets
import string

try:  # Python 3.11+: the regex parser is public-by-convention as re._parser
    from re import _parser as sre_parse  # type: ignore[attr-defined]
    from re import _constants as sre_constants  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

from redcap import Project

from ..config import Config
from . import client
from .transfers import now_text

MAX_REPEAT = 8  # how far an open-ended quantifier (*, +, {n,}) may repeat in generated IDs
PRINTABLE = string.ascii_letters + string.digits


class AutoIdError(Exception):
    """The project's pattern cannot generate IDs, or the ID space is exhausted."""


def autoid_project(cfg: Config) -> Project:
    return client.control_project(cfg, "autoid")


def lookup(proj: Project, project: str, patient_hash: str) -> str | None:
    """The participant ID already given to this patient in this project, if any."""
    rows = client.export_records(proj, filter_logic=f'[autoid_project] = "{_q(project)}" and [autoid_patient_hash] = "{_q(patient_hash)}"')
    rows = [r for r in rows if r.get("autoid_project") == project and r.get("autoid_patient_hash") == patient_hash]
    return rows[0]["autoid_participant"] if rows else None


def all_ids(proj: Project, project: str) -> set[str]:
    rows = client.export_records(proj, filter_logic=f'[autoid_project] = "{_q(project)}"')
    return {r["autoid_participant"] for r in rows if r.get("autoid_project") == project}


def record(proj: Project, project: str, patient_hash: str, participant: str) -> None:
    row = {
        "autoid_id": "1",
        "autoid_project": project,
        "autoid_patient_hash": patient_hash,
        "autoid_participant": participant,
        "autoid_created_at": now_text(),
        "autoid_complete": "2",
    }
    client.import_records(proj, [row], force_auto_number=True)


def _q(text: str) -> str:
    if '"' in text or "\\" in text:
        raise AutoIdError("value contains a quote or backslash")
    return text


def generate(pattern: str, taken: set[str], tries: int = 1000) -> str:
    """A random ID that fully matches ``pattern`` and is not in ``taken``."""
    try:
        compiled = re.compile(pattern)
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise AutoIdError(f"participant pattern is not a valid regular expression ({exc})") from None
    for _ in range(tries):
        candidate = _gen(parsed)
        if compiled.fullmatch(candidate) and candidate not in taken:
            return candidate
    raise AutoIdError("could not generate a new participant ID: the pattern's ID space looks exhausted")


def _gen(parsed) -> str:
    out = []
    for op, arg in parsed:
        out.append(_gen_one(op, arg))
    return "".join(out)


def _gen_one(op, arg) -> str:
    c = sre_constants
    if op == c.LITERAL:
        return chr(arg)
    if op == c.NOT_LITERAL:
        return secrets.choice([ch for ch in PRINTABLE if ord(ch) != arg])
    if op == c.ANY:
        return secrets.choice(PRINTABLE)
    if op == c.IN:
        return secrets.choice(_charset(arg))
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", object())):
        lo, hi, sub = arg
        hi = min(hi, lo + MAX_REPEAT) if hi != c.MAXREPEAT else lo + MAX_REPEAT
        return "".join(_gen(sub) for _ in range(lo + secrets.randbelow(hi - lo + 1)))
    if op == c.SUBPATTERN:
        return _gen(arg[-1])
    if op == c.BRANCH:
        return _gen(secrets.choice(arg[1]))
    if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
        return ""
    raise AutoIdError(f"participant pattern uses a construct AutoID cannot generate from ({op})")


def _charset(items) -> list[str]:
    c = sre_constants
    chars: list[str] = []
    negate = False
    for op, arg in items:
        if op == c.NEGATE:
            negate = True
        elif op == c.LITERAL:
            chars.append(chr(arg))
        elif op == c.RANGE:
            chars.extend(chr(x) for x in range(arg[0], arg[1] + 1))
        elif op == c.CATEGORY:
            chars.extend({c.CATEGORY_DIGIT: string.digits, c.CATEGORY_WORD: PRINTABLE + "_"}.get(arg, ""))
            if arg not in (c.CATEGORY_DIGIT, c.CATEGORY_WORD):
                raise AutoIdError("participant pattern uses a character class AutoID cannot generate from")
    if negate:
        chars = [ch for ch in PRINTABLE if ch not in chars]
    if not chars:
        raise AutoIdError("participant pattern has an empty character class")
    return chars
