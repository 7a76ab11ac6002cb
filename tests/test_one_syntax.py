"""OpenNebula template syntax: quoting as oned unescapes, and reading templates back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.one.syntax import TemplateSyntaxError, parse, quote


def test_quote_escapes_only_double_quotes():
    assert quote('say "hi"') == r'"say \"hi\""'
    assert quote("C:\\path\\x") == '"C:\\path\\x"'
    assert quote(8) == '"8"'


@pytest.mark.parametrize("value", ["ends with \\", "a]]>b"])
def test_quote_rejects_what_oned_cannot_read(value):
    with pytest.raises(TemplateSyntaxError):
        quote(value)


representable = st.text().filter(lambda s: not s.endswith("\\") and "]]>" not in s)


@given(representable, representable)
def test_quoted_values_read_back_unchanged(a, b):
    text = f"A = {quote(a)}\nV = [\n  X = {quote(a)},\n  Y = {quote(b)} ]\n"
    assert parse(text) == [("A", a), ("V", {"X": a, "Y": b})]


def test_parse_reads_the_reference_forms():
    text = (
        "# comment\n"
        "name = test-vm\n"
        "MEMORY=128\n"
        "EMPTY =\n"
        'OS = [ kernel_ds = "$FILE[IMAGE=\\"kernel 3.6\\"]",\n'
        '       KERNEL_CMD = "ro console=tty1"]\n'
        'PCI = [ SHORT_ADDRESS = "41:00.0" ]\n'
        'PCI = [ VENDOR = "10de", DEVICE = "2335", CLASS = "0302" ]\n'
    )
    assert parse(text) == [
        ("NAME", "test-vm"),
        ("MEMORY", "128"),
        ("EMPTY", ""),
        ("OS", {"KERNEL_DS": '$FILE[IMAGE="kernel 3.6"]', "KERNEL_CMD": "ro console=tty1"}),
        ("PCI", {"SHORT_ADDRESS": "41:00.0"}),
        ("PCI", {"VENDOR": "10de", "DEVICE": "2335", "CLASS": "0302"}),
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('A = "unterminated\n', 1),
        ("A = 1\nB 2\n", 2),
        ('A = 1\nV = [ X = "1"\nB = 2\n', 3),
        ("A = 1\nB = x]]>y\n", 2),
        ("V = [ X =\n ]\n", 1),
    ],
)
def test_parse_errors_name_the_line(text, line):
    with pytest.raises(TemplateSyntaxError, match=f"line {line}:"):
        parse(text)
