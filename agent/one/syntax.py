"""OpenNebula template syntax: quoting values for it and reading it back.

oned's grammar (src/parsers/template_parser.l and template_syntax.y):
- a quoted value is ``"`` then any characters but ``"``, where ``\\"`` stands for ``"``; the
  only unescaping oned does is ``\\"`` -> ``"``, so other backslashes stay as they are;
- a value ending in a backslash cannot be written (its last backslash would escape the closing
  quote), and a line holding ``]]>`` after ``=`` aborts the whole parse (the CDATA guard);
- vector attributes are ``NAME = [ A = "x", B = "y" ]``; names are upper-cased; ``#`` starts
  a comment line; an attribute may repeat (several ``PCI``, ``DISK``, ``NIC``).
"""

from __future__ import annotations

import re

Value = str | dict[str, str]

_NAME = re.compile(r"[A-Za-z0-9_]+")
_QUOTED = re.compile(r'"((?:\\"|[^"])*)"', re.S)
_BARE = re.compile(r"[^=#\s,\[\]]+")
_EMPTY = re.compile(r"[ \t]*(?:\n|$)")
_SPACE = re.compile(r"(?:[ \t\r\n]+|[ \t]*#[^\n]*(?:\n|$))+")


class TemplateSyntaxError(ValueError):
    """A value that cannot be written, or text that is not OpenNebula template syntax."""


def quote(value: object) -> str:
    """`value` as a double-quoted OpenNebula template string, exactly as oned will read it."""
    text = str(value)
    if text.endswith("\\"):
        raise TemplateSyntaxError(f"{text!r}: a value cannot end with a backslash")
    if "]]>" in text:
        raise TemplateSyntaxError(f"{text!r}: oned rejects ']]>' in a template")
    return '"' + text.replace('"', '\\"') + '"'


def parse(text: str) -> list[tuple[str, Value]]:
    """Attributes in order, repeats kept; vector values become dicts. Raises on bad syntax."""
    return _Parser(text).attributes()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> TemplateSyntaxError:
        line = self.text.count("\n", 0, self.pos) + 1
        near = self.text[self.pos : self.pos + 20]
        return TemplateSyntaxError(f"line {line}: expected {what}, found {near!r}")

    def skip(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        if match:
            self.pos = match.end()

    def take(self, pattern: re.Pattern[str], what: str) -> re.Match[str]:
        self.skip()
        match = pattern.match(self.text, self.pos)
        if not match:
            raise self.fail(what)
        self.pos = match.end()
        return match

    def literal(self, char: str) -> bool:
        self.skip()
        if self.text.startswith(char, self.pos):
            self.pos += 1
            return True
        return False

    def attributes(self) -> list[tuple[str, Value]]:
        out: list[tuple[str, Value]] = []
        self.skip()
        while self.pos < len(self.text):
            name = self.take(_NAME, "an attribute name")[0].upper()
            if not self.literal("="):
                raise self.fail("'='")
            if _EMPTY.match(self.text, self.pos):
                out.append((name, ""))
            else:
                out.append((name, self.vector() if self.literal("[") else self.scalar()))
            self.skip()
        return out

    def scalar(self) -> str:
        self.skip()
        line_end = self.text.find("\n", self.pos)
        if "]]>" in self.text[self.pos : line_end if line_end >= 0 else None]:
            raise self.fail("no ']]>'")
        if self.text.startswith('"', self.pos):
            return self.take(_QUOTED, "a closing quote")[1].replace('\\"', '"')
        return self.take(_BARE, "a value")[0]

    def vector(self) -> dict[str, str]:
        items: dict[str, str] = {}
        if self.literal("]"):
            return items
        while True:
            key = self.take(_NAME, "a vector key")[0].upper()
            if not self.literal("=") or _EMPTY.match(self.text, self.pos):
                raise self.fail("'=' and a value")
            items.setdefault(key, self.scalar())
            if self.literal("]"):
                return items
            if not self.literal(","):
                raise self.fail("',' or ']'")
