"""Text that is safe to print on a terminal.

Context values, OneGate attributes of peer VMs (FL_ERROR, ...) and server answers may hold
escape sequences (ESC, the C1 CSI byte) that a terminal would act on, line breaks that would
forge lines of output, or bidirectional overrides that reorder what is shown. The command line
passes everything it did not write itself through `escape_controls`.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def escape_controls(text: str, *, keep: str = "") -> str:
    """`text` with control, format and line-separator characters written as escapes
    (``\\x1b``, ``\\n``, ``\\u202e``); characters in `keep` are left as they are."""
    return _UNSAFE.sub(lambda m: m[0] if m[0] in keep else _escape(m[0]), text)


def _escape(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def escape_all(data: object) -> object:
    """A copy of a JSON-like value with every string (keys too) escaped."""
    if isinstance(data, str):
        return escape_controls(data)
    if isinstance(data, dict):
        return {escape_all(k): escape_all(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [escape_all(v) for v in data]
    return data
