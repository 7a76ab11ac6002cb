"""The context parser (and the config built from what it returns) fuzzed with hypothesis.

Arbitrary bytes and near-grammar inputs (oned's records, comments and blank lines, with the
tokens that break them mixed in, then cut, spliced and mutated): the only exception allowed
is the parser's own AgentError; whatever parses goes through `build_config` without raising.
The normal run tries a few thousand inputs; the `slow` variants (bench/fuzz_context.sh) at
least 100,000 per generator.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import build_config
from agent.context import parse_context
from agent.errors import AgentError

FAST = settings(max_examples=2500, deadline=None, suppress_health_check=list(HealthCheck))
LONG = settings(
    max_examples=int(os.environ.get("FL_FUZZ_EXAMPLES", "100000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

NAMES = [
    "FL_GPU_ENABLED", "FL_GPU_REQUIRED", "FL_CUDA_VISIBLE_DEVICES", "FL_GPU_MEMORY_FRACTION",
    "FL_SUPERLINK_ADDRESS", "FL_NODE_CONFIG", "FLOWER_VERSION", "ONEAPP_FLOWER_VERSION",
    "FL_SUPERNODE_IMAGE", "FL_ISOLATION", "FL_LOG_LEVEL", "FL_MAX_RETRIES", "FL_MAX_WAIT_TIME",
    "FL_TLS_ENABLED", "FL_SSL_CA_CERT", "FL_TOOLKIT_INSTALL", "FL_DATA_DIR", "ONEGATE_ENDPOINT",
    "VMID", "REPORT_READY", "ONEAPP_FL_GPU_ENABLED", "TOKEN", "ETH0_IP", "_X", "a1",
]  # fmt: skip
VALUES = [
    "", "YES", "no", "AUTO", "all", "0,1", "0,0", "GPU-12345678-1234-1234-1234-123456789abc",
    "MIG-GPU-12345678-1234-1234-1234-123456789abc/1/0", "0.5", "1.0000001", "nan", "-1",
    "127.0.0.1:9092", "[::1]:9092", "host:99999", "partition-id=0 num-partitions=2",
    "k='v w' x=True", "1.25.0", "1.42.9", "9.9.9", "/opt/flower/data", "relative",
    "registry:5000/repo/name:tag", "UPPER/Case", "subprocess", "LS0tLS1CRUdJTg==",
    "http://10.0.0.1:5030", "12", "line\nbreak", "it's", "é ü 漢字", "\t", "$(reboot)",
]  # fmt: skip
TOKENS = [
    b"'", b"\\''", b"'\\''", b"=", b"='", b"\n", b"\r\n", b"#", b" ", b"\t", b";", b'"', b"\\",
    b"export ", b"$(", b"`", b"\0", b"\xff", b"\xc3", b"\xe2\x82", b"=''", b"A", b"_", b"9",
]  # fmt: skip


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


names = st.one_of(
    st.sampled_from(NAMES), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
)
values = st.one_of(st.sampled_from(VALUES), st.text(max_size=40))
record = st.builds(lambda n, v: f"{n}={_quote(v)}\n".encode(), names, values)
comment = st.text(max_size=30).map(lambda t: ("#" + t.replace("\n", " ") + "\n").encode())
piece = st.one_of(
    record, record, record, comment, st.just(b"\n"), st.sampled_from(TOKENS), st.binary(max_size=8)
)
well_formed = st.lists(piece, max_size=24).map(b"".join)


@st.composite
def near_grammar(draw) -> bytes:
    """A near-valid file, then a few cuts, splices and byte flips."""
    data = bytearray(draw(well_formed))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(("cut", "insert", "flip", "truncate")))
        at = draw(st.integers(0, len(data)))
        if action == "cut":
            del data[at : at + draw(st.integers(1, 6))]
        elif action == "insert":
            data[at:at] = draw(
                st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=4))
            )
        elif action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at:]
    return bytes(data)


def check(data: bytes) -> None:
    """The property: AgentError or a dict of str that `build_config` takes without raising."""
    try:
        variables = parse_context(data, "fuzz.sh")
    except AgentError as exc:
        assert exc.problems and all(p.name and p.subject for p in exc.problems)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())
    result = build_config(variables)
    assert (result.config is None) == bool(result.problems)


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data):
    check(data)


@FAST
@given(near_grammar())
def test_near_grammar(data):
    check(data)


@pytest.mark.slow
@LONG
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_long(data):
    check(data)


@pytest.mark.slow
@LONG
@given(near_grammar())
def test_near_grammar_long(data):
    check(data)
