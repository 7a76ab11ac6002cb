"""OpenNebula's PCI probe filter (`pci.conf`), read without a YAML library.

PyYAML is not a dependency, and the file has one small known shape (the one OpenNebula installs
under PCI_CONF_PATHS, agent/host/checks.py): a few top-level symbol keys (`:filter:`,
`:short_address:`, `:device_name:`, `:nvidia_vendors:`) whose values are a scalar (plain or
quoted), a flow list (`['10de:*', '8086::0c03']`) or a block list (`- '10de:*'` lines). That
is all this reader understands; anything else under a key is kept as raw text and simply
matches nothing.

The filter uses `lspci -d` syntax, `vendor:device[:class]` in hex with `*` for any; a string
value may hold several filters separated by commas.
"""

from __future__ import annotations

import re

_KEY = re.compile(r"^(:?[A-Za-z_][\w-]*:?):(?:\s+(.*))?$")


def parse(text: str) -> dict[str, list[str]]:
    """Top-level keys (without the colons) to their list of string values."""
    data: dict[str, list[str]] = {}
    key: str | None = None
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() == "---":
            continue
        match = _KEY.match(line) if not line[0].isspace() else None
        if match:
            key = match.group(1).strip(":")
            data[key] = _values(match.group(2) or "")
        elif key is not None and line.strip().startswith("- "):
            data[key].append(_unquote(line.strip()[2:].strip()))
    return data


def filters(data: dict[str, list[str]]) -> list[str]:
    """Every `vendor:device[:class]` filter, comma-separated strings split."""
    return [f.strip() for value in data.get("filter", []) for f in value.split(",") if f.strip()]


def matches_vendor(filter_: str, vendor: str = "10de") -> bool:
    """Whether an lspci -d filter selects devices of `vendor` (hex, without 0x)."""
    wanted = filter_.split(":")[0].strip().lower()
    return wanted in ("*", "") or wanted.removeprefix("0x").lstrip("0") == vendor.lstrip("0")


def _values(rest: str) -> list[str]:
    rest = rest.strip()
    if not rest:
        return []
    if rest.startswith("[") and rest.endswith("]"):
        return [_unquote(v.strip()) for v in _split_flow(rest[1:-1]) if v.strip()]
    return [_unquote(rest)]


def _split_flow(body: str) -> list[str]:
    """Split a flow list on commas outside quotes (a quoted '10de:*,8086:*' stays one)."""
    parts, current, quote = [], "", ""
    for char in body:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _strip_comment(line: str) -> str:
    """Drop a `#` comment that starts a line or follows whitespace outside quotes."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line
