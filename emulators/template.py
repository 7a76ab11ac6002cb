"""OpenNebula's template syntax as the core parses it: the emulators' own port.

A port of src/parsers/template_parser.l (the lexer) and template_syntax.y (the grammar), written
apart from the agent's own reader (agent/one/syntax.py), so that a bug there can fail a test
against an emulator instead of being shared by both sides.
"""

from __future__ import annotations

import re


class TemplateError(ValueError):
    """What the core's template parser rejects."""


# (token, regex) in the lexer's rule order; flex takes the longest match, the first on a tie.
_INITIAL = (
    (None, re.compile(r"[ \t]*#.*\n")),
    (None, re.compile(r"[ \t\n]+")),
    ("VARIABLE", re.compile(r"[A-Za-z0-9_]+")),
    ("EQUAL", re.compile(r"[ \t]*=[ \t]*")),
    ("EQUAL_EMPTY", re.compile(r"[ \t]*=[ \t]*\n")),
    ("COMMA", re.compile(r"[ \t\n]*,[ \t\n]*")),
    ("CBRACKET", re.compile(r"[ \t\n]*\][ \t\n]*")),
)
_VALUE = (
    ("OBRACKET", re.compile(r"[ \t]*\[[ \t\n]*")),
    ("CCDATA", re.compile(r".*\]\]>.*")),
    ("QSTRING", re.compile(r'"(?:\\"|[^"])*"')),
    ("STRING", re.compile(r"[^=# \t\n,\[\]]+")),
)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(token, text, line) like template_parser.l; unmatched characters are dropped (flex ECHO)."""
    tokens: list[tuple[str, str, int]] = []
    pos, value_state = 0, False
    while pos < len(text):
        rules = _VALUE if value_state else _INITIAL
        best: tuple[str | None, str] | None = None
        for name, rx in rules:
            m = rx.match(text, pos)
            if m and m.group() and (best is None or len(m.group()) > len(best[1])):
                best = (name, m.group())
        if best is None:
            pos += 1
            continue
        name, lexeme = best
        line = text.count("\n", 0, pos) + 1
        pos += len(lexeme)
        if name == "EQUAL":
            value_state = True
        elif name in ("OBRACKET", "CCDATA", "QSTRING", "STRING"):
            value_state = False
        if name == "QSTRING":
            tokens.append(("STRING", lexeme[1:-1].replace('\\"', '"'), line))
        elif name is not None:
            tokens.append((name, lexeme, line))
    return tokens


def parse_template(text: str) -> list[tuple[str, str | dict[str, str]]]:
    """Attributes (upper-cased names) in order; TemplateError like the core's parse error."""
    tokens = _tokens(text)
    pos = 0

    def take(*expected: str) -> tuple[str, str, int]:
        nonlocal pos
        if pos >= len(tokens):
            raise TemplateError(
                f"Parse error: syntax error, unexpected $end, expecting {' or '.join(expected)}"
            )
        token = tokens[pos]
        if token[0] not in expected:
            raise TemplateError(
                f"Parse error: syntax error, unexpected {token[0]}, expecting "
                f"{' or '.join(expected)} at line {token[2]}"
            )
        pos += 1
        return token

    out: list[tuple[str, str | dict[str, str]]] = []
    while pos < len(tokens):
        name = take("VARIABLE")[1].upper()
        if take("EQUAL", "EQUAL_EMPTY")[0] == "EQUAL_EMPTY":
            out.append((name, ""))
            continue
        kind, value, _ = take("STRING", "OBRACKET", "CCDATA")
        if kind == "OBRACKET":
            vector: dict[str, str] = {}
            while True:
                key = take("VARIABLE")[1].upper()
                take("EQUAL")
                vector[key] = take("STRING")[1]
                if take("COMMA", "CBRACKET")[0] == "CBRACKET":
                    break
            out.append((name, vector))
        elif kind == "STRING":
            out.append((name, value))
    return out
