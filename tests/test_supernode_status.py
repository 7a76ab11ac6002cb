"""agent/supernode_status.py over the logs real SuperNodes printed (tests/fixtures/supernode-logs/,
recorded by scripts/record_supernode_logs.py against real SuperLinks with TLS and SuperNode
authentication)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.supernode_status import LogState, SupernodeStatus, advance, classify

LOGS = Path(__file__).parent / "fixtures" / "supernode-logs"
S = SupernodeStatus


@pytest.mark.parametrize(
    ("version", "situation", "status"),
    [
        ("1.25.0", "connected", S.CONNECTED),
        ("1.25.0", "superlink-stopped", S.RECONNECTING),
        ("1.25.0", "superlink-back", S.CONNECTED),
        ("1.25.0", "unreachable", S.SUPERLINK_UNREACHABLE),
        ("1.25.0", "unregistered", S.AUTH_REJECTED),
        ("1.25.0", "wrong-ca", S.TLS_ERROR),
        ("1.25.0", "superlink-1.42.0", S.SUPERLINK_UNREACHABLE),
        ("1.42.0", "connected", S.CONNECTED),
        ("1.42.0", "superlink-stopped", S.RECONNECTING),
        ("1.42.0", "superlink-back", S.CONNECTED),
        ("1.42.0", "unreachable", S.SUPERLINK_UNREACHABLE),
        ("1.42.0", "unregistered", S.AUTH_REJECTED),
        ("1.42.0", "wrong-ca", S.TLS_ERROR),
        ("1.42.0", "superlink-1.25.0", S.SUPERLINK_UNREACHABLE),
        ("1.41.0", "superlink-1.42.0", S.CONNECTED),
        ("1.42.0", "process-pair", S.CONNECTED),
        ("1.42.0", "process-pair.superexec", S.STARTING),
        ("1.42.0", "superexec-1.41.0", S.VERSION_MISMATCH),
        ("1.42.0", "superexec-1.41.0.superexec", S.VERSION_MISMATCH),
    ],
)
def test_real_logs(version, situation, status):
    state = classify((LOGS / version / f"{situation}.log").read_text())
    assert state.status is status, state


@pytest.mark.parametrize("version", ["1.25.0", "1.42.0"])
def test_node_id_and_history_survive_a_reconnection(version):
    connected = classify((LOGS / version / "connected.log").read_text())
    back = classify((LOGS / version / "superlink-back.log").read_text())
    assert connected.node_id is not None and back.node_id == connected.node_id
    assert back.ever_connected and back.evidence.startswith("INFO :      Connection successful")


def test_fed_line_by_line_as_the_watch_does():
    lines = (LOGS / "1.42.0" / "superlink-back.log").read_text().splitlines()
    seen = []
    state = LogState()
    for line in lines:
        state = advance(state, line)
        if not seen or seen[-1] is not state.status:
            seen.append(state.status)
    assert seen == [S.STARTING, S.CONNECTED, S.RECONNECTING, S.CONNECTED]


def test_tls_error_stays_through_retries_until_a_success():
    state = classify((LOGS / "1.25.0" / "wrong-ca.log").read_text())
    assert "CERTIFICATE_VERIFY_FAILED" in state.evidence
    state = advance(state, "WARNING :   Connection attempt failed, retrying in 1.00 seconds")
    assert state.status is S.TLS_ERROR
    assert advance(state, "INFO : Connection successful after 3.0 seconds").status is S.CONNECTED


@pytest.mark.parametrize(
    ("line", "status"),
    [
        ("ERROR :     Exit Code: 301", S.EXITED),
        ("INFO :      SuperNode terminated gracefully.", S.EXITED),
        ("\x1b[92mINFO \x1b[0m:      SuperNode ID: 42", S.CONNECTED),
        ("INFO :      Starting Flower SuperExec", S.STARTING),
    ],
)
def test_single_lines(line, status):
    assert classify([line]).status is status


def test_evidence_is_printable_and_bounded():
    state = classify(["Exit Code: 1 \x07\x1b]0;title\x07" + "x" * 500])
    assert state.status is S.EXITED
    assert state.evidence.isprintable() and len(state.evidence) == 200
