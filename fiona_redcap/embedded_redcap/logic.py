"""REDCap logic (``filterLogic``): a tokenizer and recursive-descent parser.

Supported: ``[field]``, ``[event][field]``, ``[field(code)]`` for checkboxes, numbers,
quoted strings, ``""`` for empty, ``"today"``/``today``, comparisons ``= <> != < <= > >=``,
``+ - * /``, ``and``/``or``/``not`` (also ``&&``/``||``), parentheses, and the functions
``datediff``, ``if``, ``contains``, ``starts_with``, ``ends_with``, ``isblankormissingcode``,
``sum``, ``min``, ``max``, ``abs``, ``round``, ``length``. Anything else is a
:class:`LogicError` — never a silent "match everything".

As in REDCap, ``=`` and friends compare numerically when both sides are numbers and as
text otherwise; a comparison involving an empty value with ``<``/``>`` is false.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Callable

TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<ref>\[[A-Za-z0-9_]+(?:\([A-Za-z0-9_.\-]+\))?\])
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<str>"[^"]*"|'[^']*')
  | (?P<op><>|!=|<=|>=|==|&&|\|\||[=<>+\-*/(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
FUNCTIONS = {"datediff", "if", "contains", "starts_with", "ends_with", "isblankormissingcode", "sum", "min", "max", "abs", "round", "length", "not_contain"}


class LogicError(ValueError):
    """The logic cannot be parsed or uses something unsupported."""


@dataclass
class Tok:
    kind: str
    text: str
    pos: int


def tokenize(text: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN_RE.match(text, pos)
        if not m:
            raise LogicError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = m.lastgroup
        if kind != "ws":
            out.append(Tok(kind, m.group(), pos))
        pos = m.end()
    return out


# A compiled expression is a function of a resolver: resolve(event or None, field, code or None) -> str
Node = Callable[[Callable[[str | None, str, str | None], str]], Any]


MAX_NESTING = 50


class Parser:
    def __init__(self, text: str, known_field: Callable[[str], bool], known_event: Callable[[str], bool]) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.known_field = known_field
        self.known_event = known_event
        self.fields: set[str] = set()
        self.depth = 0

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Tok:
        tok = self.peek()
        if tok is None:
            raise LogicError("logic ends unexpectedly")
        self.i += 1
        return tok

    def accept(self, *texts: str) -> Tok | None:
        tok = self.peek()
        if tok is not None and (tok.text.lower() in texts) and tok.kind in ("op", "word"):
            self.i += 1
            return tok
        return None

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise LogicError(f"expected {text!r} at position {tok.pos + 1}, found {tok.text!r}")

    def parse(self) -> Node:
        if not self.toks:
            raise LogicError("logic is empty")
        node = self.or_expr()
        if self.peek() is not None:
            tok = self.peek()
            raise LogicError(f"unexpected {tok.text!r} at position {tok.pos + 1}")
        return node

    def or_expr(self) -> Node:
        left = self.and_expr()
        while self.accept("or", "||"):
            right = self.and_expr()
            left = (lambda a, b: lambda r: truthy(a(r)) or truthy(b(r)))(left, right)
        return left

    def and_expr(self) -> Node:
        left = self.not_expr()
        while self.accept("and", "&&"):
            right = self.not_expr()
            left = (lambda a, b: lambda r: truthy(a(r)) and truthy(b(r)))(left, right)
        return left

    def not_expr(self) -> Node:
        if self.accept("not"):
            inner = self.not_expr()
            return lambda r: not truthy(inner(r))
        return self.comparison()

    def comparison(self) -> Node:
        left = self.additive()
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.text in ("=", "==", "<>", "!=", "<", "<=", ">", ">="):
            self.i += 1
            right = self.additive()
            return (lambda a, b, op: lambda r: compare(a(r), b(r), op))(left, right, tok.text)
        return left

    def additive(self) -> Node:
        left = self.term()
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "op" and tok.text in "+-" and len(tok.text) == 1:
                self.i += 1
                right = self.term()
                left = (lambda a, b, op: lambda r: arith(a(r), b(r), op))(left, right, tok.text)
            else:
                return left

    def term(self) -> Node:
        left = self.unary()
        while True:
            tok = self.peek()
            if tok is not None and tok.kind == "op" and tok.text in ("*", "/"):
                self.i += 1
                right = self.unary()
                left = (lambda a, b, op: lambda r: arith(a(r), b(r), op))(left, right, tok.text)
            else:
                return left

    def unary(self) -> Node:
        if self.accept("-"):
            inner = self.unary()
            return lambda r: arith("0", inner(r), "-")
        return self.primary()

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "num":
            return lambda r, v=tok.text: v
        if tok.kind == "str":
            value = tok.text[1:-1]
            if value.lower() == "today":
                return lambda r: dt.date.today().isoformat()
            return lambda r, v=value: v
        if tok.kind == "ref":
            return self.reference(tok)
        if tok.kind == "op" and tok.text == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise LogicError(f"logic is nested more than {MAX_NESTING} parentheses deep")
            node = self.or_expr()
            self.expect(")")
            self.depth -= 1
            return node
        if tok.kind == "word":
            word = tok.text.lower()
            if word == "today":
                return lambda r: dt.date.today().isoformat()
            if word in ("true", "false"):
                return lambda r, v=("1" if word == "true" else "0"): v
            if word in FUNCTIONS and self.peek() is not None and self.peek().text == "(":
                return self.function(word)
            raise LogicError(f"unsupported word {tok.text!r} at position {tok.pos + 1}")
        raise LogicError(f"unexpected {tok.text!r} at position {tok.pos + 1}")

    def reference(self, tok: Tok) -> Node:
        inner = tok.text[1:-1]
        event = None
        nxt = self.peek()
        if nxt is not None and nxt.kind == "ref" and self.known_event(inner) and nxt.pos == tok.pos + len(tok.text):
            event = inner
            self.i += 1
            inner = nxt.text[1:-1]
        code = None
        if "(" in inner:
            inner, code = inner[:-1].split("(", 1)
        if not self.known_field(inner):
            if self.known_event(inner):
                raise LogicError(f"[{inner}] is an event; it must be followed by a [field]")
            raise LogicError(f"unknown field [{inner}] in logic")
        self.fields.add(inner)
        return lambda r, e=event, f=inner, c=code: r(e, f, c)

    def function(self, name: str) -> Node:
        self.expect("(")
        args: list[Node] = []
        if self.peek() is not None and self.peek().text != ")":
            args.append(self.or_expr())
            while self.accept(","):
                args.append(self.or_expr())
        self.expect(")")
        return make_function(name, args)


def truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (None, "", "0"):
        return False
    try:
        return float(value) != 0
    except (TypeError, ValueError):
        return bool(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def compare(a: Any, b: Any, op: str) -> bool:
    if isinstance(a, bool):
        a = "1" if a else "0"
    if isinstance(b, bool):
        b = "1" if b else "0"
    a = "" if a is None else a
    b = "" if b is None else b
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        x, y = na, nb
    else:
        x, y = str(a), str(b)
        if op in ("<", "<=", ">", ">=") and (x == "" or y == ""):
            return False
    if op in ("=", "=="):
        return x == y
    if op in ("<>", "!="):
        return x != y
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def arith(a: Any, b: Any, op: str) -> str:
    x, y = _num(a), _num(b)
    if x is None or y is None:
        return ""
    if op == "/" and y == 0:
        return ""
    value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else 0}[op]
    return str(int(value)) if value == int(value) else str(value)


def _parse_date(value: str) -> dt.datetime | None:
    value = (value or "").strip()
    if value.lower() == "today":
        return dt.datetime.combine(dt.date.today(), dt.time())
    if value.lower() == "now":
        return dt.datetime.now()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


UNITS = {"y": 365.2425 * 86400, "M": 30.44 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def make_function(name: str, args: list[Node]) -> Node:
    def need(n_min: int, n_max: int) -> None:
        if not n_min <= len(args) <= n_max:
            raise LogicError(f"{name}() takes {n_min}..{n_max} arguments, got {len(args)}")

    if name == "datediff":
        need(3, 5)

        def datediff(r):
            d1, d2 = _parse_date(str(args[0](r))), _parse_date(str(args[1](r)))
            unit = str(args[2](r))
            if unit not in UNITS:
                raise LogicError(f"datediff() unit must be one of y, M, d, h, m, s (got {unit!r})")
            if d1 is None or d2 is None:
                return ""
            signed = len(args) >= 4 and str(args[-1](r)).lower() in ("true", "1")
            diff = (d2 - d1).total_seconds() / UNITS[unit]
            return str(diff if signed else abs(diff))

        return datediff
    if name == "if":
        need(3, 3)
        return lambda r: args[1](r) if truthy(args[0](r)) else args[2](r)
    if name in ("contains", "not_contain", "starts_with", "ends_with"):
        need(2, 2)
        test = {
            "contains": lambda a, b: b.lower() in a.lower(),
            "not_contain": lambda a, b: b.lower() not in a.lower(),
            "starts_with": lambda a, b: a.lower().startswith(b.lower()),
            "ends_with": lambda a, b: a.lower().endswith(b.lower()),
        }[name]
        return lambda r: test(str(args[0](r)), str(args[1](r)))
    if name == "isblankormissingcode":
        need(1, 1)
        return lambda r: str(args[0](r)) == ""
    if name == "length":
        need(1, 1)
        return lambda r: str(len(str(args[0](r))))
    if name in ("sum", "min", "max"):
        need(1, 99)

        def agg(r):
            values = [v for v in (_num(a(r)) for a in args) if v is not None]
            if not values:
                return ""
            value = {"sum": sum, "min": min, "max": max}[name](values)
            return str(int(value)) if value == int(value) else str(value)

        return agg
    if name == "abs":
        need(1, 1)
        return lambda r: arith("0", str(abs(_num(args[0](r)))), "+") if _num(args[0](r)) is not None else ""
    if name == "round":
        need(1, 2)

        def rnd(r):
            x = _num(args[0](r))
            if x is None:
                return ""
            places = int(_num(args[1](r)) or 0) if len(args) > 1 else 0
            value = round(x, places)
            return str(int(value)) if places == 0 else str(value)

        return rnd
    raise LogicError(f"unsupported function {name}()")


def compile_logic(text: str, known_field: Callable[[str], bool], known_event: Callable[[str], bool]) -> tuple[Node, set[str]]:
    """Parse logic once; returns (evaluator, referenced fields)."""
    parser = Parser(text, known_field, known_event)
    try:
        node = parser.parse()
    except RecursionError:  # e.g. thousands of "not" or "-" in a row
        raise LogicError("logic is nested too deeply") from None
    return node, parser.fields


def evaluate(node: Node, resolve: Callable[[str | None, str, str | None], str]) -> bool:
    return truthy(node(resolve))
