"""A small reader for protobuf text format (what Triton's ``config.pbtxt`` is written in).

It knows no schema: every field becomes a list of values (scalars, enum identifiers as strings, or
nested dicts of the same form); :mod:`sepconv.service.registry.model_config` applies Triton's schema on top.
Handles ``#`` comments, ``field: value``, ``field { ... }``, ``field: { ... }``, ``field: [a, b]``,
``field [ {..}, {..} ]``, ``<...>`` message delimiters, and quoted strings with escapes.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}\[\]<>:,;])
    """,
    re.VERBOSE,
)


class PbtxtError(ValueError):
    """The text is not valid protobuf text format."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise PbtxtError(f"line {line}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group(), text.count("\n", 0, pos) + 1))
        pos = m.end()
    return out


def _scalar(kind: str, value: str, line: int) -> Any:
    if kind == "string":
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise PbtxtError(f"line {line}: bad string {value}") from exc
    if kind == "number":
        v = value.rstrip("fF") if not value.lower().startswith(("0x", "-0x", "+0x")) else value
        try:
            return int(v, 0)
        except ValueError:
            return float(v)
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    return value  # enum identifier


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise PbtxtError("unexpected end of text")
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, v, line = self.take()
        if v != value:
            raise PbtxtError(f"line {line}: expected {value!r}, got {v!r}")

    def message(self, close: str | None) -> dict[str, list[Any]]:
        fields: dict[str, list[Any]] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise PbtxtError(f"unexpected end of text: missing {close!r}")
                return fields
            kind, value, line = tok
            if close is not None and value == close:
                self.i += 1
                return fields
            if kind != "ident":
                raise PbtxtError(f"line {line}: expected a field name, got {value!r}")
            self.i += 1
            fields.setdefault(value, []).extend(self.field_value())
            nxt = self.peek()
            if nxt is not None and nxt[1] in (",", ";"):
                self.i += 1

    def field_value(self) -> list[Any]:
        tok = self.peek()
        if tok is None:
            raise PbtxtError("unexpected end of text after a field name")
        has_colon = tok[1] == ":"
        if has_colon:
            self.i += 1
            tok = self.peek()
            if tok is None:
                raise PbtxtError("unexpected end of text after ':'")
        kind, value, line = tok
        if value in ("{", "<"):
            self.i += 1
            return [self.message("}" if value == "{" else ">")]
        if value == "[":
            self.i += 1
            items: list[Any] = []
            while True:
                kind, value, line = self.take()
                if value == "]":
                    return items
                if value in ("{", "<"):
                    items.append(self.message("}" if value == "{" else ">"))
                elif kind in ("string", "number", "ident"):
                    items.append(_scalar(kind, value, line))
                else:
                    raise PbtxtError(f"line {line}: unexpected {value!r} in a list")
                sep = self.peek()
                if sep is not None and sep[1] == ",":
                    self.i += 1
        if not has_colon:
            raise PbtxtError(f"line {line}: expected ':' or '{{' after a field name, got {value!r}")
        if kind not in ("string", "number", "ident"):
            raise PbtxtError(f"line {line}: expected a value, got {value!r}")
        self.i += 1
        result = _scalar(kind, value, line)
        # adjacent string literals concatenate
        while kind == "string" and self.peek() is not None and self.peek()[0] == "string":  # type: ignore[index]
            k2, v2, l2 = self.take()
            result += _scalar(k2, v2, l2)
        return [result]


def parse(text: str) -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field: [values...]}`` (nested messages likewise)."""
    return _Parser(text).message(None)
