"""The SuperNode's connection state, read from the lines its own container prints.

Pure: a fold over log lines (`advance`, `classify`), so `fl-agent watch` can feed lines as they
come and tests feed the recorded logs of real SuperNodes (tests/fixtures/supernode-logs/, made
by scripts/record_supernode_logs.py against real SuperLinks of 1.25.0 and 1.42.0).

Each pattern below is a line a real SuperNode (or its paired SuperExec) printed. What the logs
cannot tell: a 1.25 SuperNode and a 1.42 SuperLink speak different transports, so each side's
SuperNode only retries (SUPERLINK_UNREACHABLE), and a 1.41 SuperNode connects to a 1.42
SuperLink without a word; the version check that speaks is the SuperNode <-> SuperExec one of
process isolation (1.30 on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum


class SupernodeStatus(StrEnum):
    """FL_SUPERNODE_STATUS values."""

    STARTING = "STARTING"
    """Nothing about the SuperLink printed yet."""
    CONNECTED = "CONNECTED"
    RECONNECTING = "RECONNECTING"
    """Was connected; its retries are failing now (SuperLink stopped or unreachable)."""
    SUPERLINK_UNREACHABLE = "SUPERLINK_UNREACHABLE"
    """Never connected since it started; retrying. Also what a SuperNode of another transport
    (1.25 against 1.42's HTTP fleet, or the reverse) shows: their logs only say "retrying"."""
    TLS_ERROR = "TLS_ERROR"
    AUTH_REJECTED = "AUTH_REJECTED"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    EXITED = "EXITED"
    """It said it stopped: an exit code this table does not explain (1.42 prints "Exit Code:
    N"), or "terminated gracefully" (1.42, after a SuperLink restarted without its database
    refused the node's next request)."""


_STICKY = frozenset(
    {SupernodeStatus.TLS_ERROR, SupernodeStatus.AUTH_REJECTED, SupernodeStatus.VERSION_MISMATCH}
)
"""A cause, once seen, is kept through the retry lines that follow it (1.25 interleaves its
TLS handshake failures with "Connection attempt failed"); only a success clears it."""

_RETRYING = re.compile(r"Connection attempt failed, retrying in")
_PATTERNS: tuple[tuple[re.Pattern[str], SupernodeStatus], ...] = (
    # 1.25 and 1.42: registered with the SuperLink (first connection).
    (re.compile(r"SuperNode ID: \d+"), SupernodeStatus.CONNECTED),
    # 1.25 and 1.42: back after retries.
    (re.compile(r"Connection successful after"), SupernodeStatus.CONNECTED),
    # 1.25 (gRPC): the SuperLink's answer for a key it does not know.
    (re.compile(r"No SuperNode found with the given public key"), SupernodeStatus.AUTH_REJECTED),
    # 1.42 (HTTP): exit 305 with the API error of a refused activation.
    (re.compile(r"\[code: 2004\] Failed to activate SuperNode"), SupernodeStatus.AUTH_REJECTED),
    # 1.25 (gRPC core) and 1.42 (Python ssl): the SuperLink's certificate is not trusted.
    (re.compile(r"CERTIFICATE_VERIFY_FAILED"), SupernodeStatus.TLS_ERROR),
    (re.compile(r"SSL/TLS handshake error"), SupernodeStatus.TLS_ERROR),
    (re.compile(r"Handshake failed with error SSL_ERROR"), SupernodeStatus.TLS_ERROR),
    # 1.42 SuperNode with a 1.41 SuperExec: the SuperNode's API error, the SuperExec's exit.
    (re.compile(r"runtime version mismatch"), SupernodeStatus.VERSION_MISMATCH),
    (re.compile(r"Exit Code: 606\b"), SupernodeStatus.VERSION_MISMATCH),
    (re.compile(r"SuperNode terminated gracefully"), SupernodeStatus.EXITED),
)
_EXIT = re.compile(r"Exit Code: \d+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
EVIDENCE_MAX = 200


@dataclass(frozen=True)
class LogState:
    """Where the fold stands: the status, the line that set it, and what it has seen."""

    status: SupernodeStatus = SupernodeStatus.STARTING
    evidence: str = ""
    ever_connected: bool = False
    node_id: int | None = None


def advance(state: LogState, line: str) -> LogState:
    """The state after one more line of the SuperNode's log."""
    text = _ANSI.sub("", line).strip()
    for pattern, status in _PATTERNS:
        if pattern.search(text):
            return _set(state, status, text)
    if _RETRYING.search(text):
        if state.status in _STICKY:
            return state
        if state.ever_connected:
            return _set(state, SupernodeStatus.RECONNECTING, text)
        return _set(state, SupernodeStatus.SUPERLINK_UNREACHABLE, text)
    if _EXIT.search(text) and state.status not in _STICKY:
        return _set(state, SupernodeStatus.EXITED, text)
    return state


def classify(lines: list[str] | str, state: LogState | None = None) -> LogState:
    """Fold a batch of lines (or a whole log) into the state."""
    state = state or LogState()
    for line in lines.splitlines() if isinstance(lines, str) else lines:
        state = advance(state, line)
    return state


def _set(state: LogState, status: SupernodeStatus, text: str) -> LogState:
    connected = status is SupernodeStatus.CONNECTED
    match = _NODE_ID.search(text)
    return replace(
        state,
        status=status,
        evidence=_printable(text)[:EVIDENCE_MAX],
        ever_connected=state.ever_connected or connected,
        node_id=int(match[1]) if match else state.node_id,
    )


def _printable(text: str) -> str:
    """The line as it may travel to OneGate and the terminal: control characters dropped."""
    return "".join(ch for ch in text if ch.isprintable())
