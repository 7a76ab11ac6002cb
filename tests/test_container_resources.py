"""Shared memory and ulimits for the SuperNode container, sized to the VM's /proc/meminfo."""

from __future__ import annotations

import os

import pytest

from agent.container_resources import RLIMIT_REFUSED, container_resources, mem_total
from agent.paths import Root

GIB = 2**30
MEMINFO = (
    "MemTotal:       263846296 kB\nMemFree:        250000000 kB\nMemAvailable:   255000000 kB\n"
)


def test_mem_total_from_meminfo(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(MEMINFO)
    assert mem_total(Root(tmp_path)) == 263846296 * 1024
    assert mem_total(Root(tmp_path / "nothing")) is None


@pytest.mark.parametrize(
    ("memory", "shm"),
    [
        (252 * GIB, 126 * GIB),  # an H200 VM: half its memory
        (8 * GIB, 4 * GIB),
        (2 * GIB, GIB),  # NVIDIA's --shm-size=1g
        (100 * 2**20, 64 * 2**20),  # never below Docker's default
        (None, GIB),  # unknown: NVIDIA's 1 GiB
    ],
)
def test_shm_sized_to_the_vm(memory, shm):
    assert container_resources(memory).shm_size == shm


def test_nvidia_ulimits_as_the_engine_api_takes_them():
    host = container_resources(16 * GIB).host_config()
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}
    assert limits == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert host["ShmSize"] == 8 * GIB


def _run(engine, resources) -> str:
    """Run busybox with the resources; the container is removed whatever happens."""
    body = {
        "Image": "fl-agent/busybox:latest",
        "Cmd": ["sh", "-c", "df -k /dev/shm | tail -1; ulimit -l; ulimit -s"],
        "NetworkDisabled": True,
        "HostConfig": resources.host_config(),
    }
    container_id = engine.create(body, f"fl-agent-test-resources-{os.getpid()}")
    try:
        engine.start(container_id)
        engine.wait(container_id, 60)
        return engine.logs(container_id)
    finally:
        engine.remove(container_id)


@pytest.mark.docker
def test_the_engine_applies_them_or_refuses_the_limits_by_name(engine):
    """A real container gets the /dev/shm size and the limits; an engine that may not raise
    memlock (this sandbox's dockerd lacks CAP_SYS_RESOURCE) refuses with RLIMIT_REFUSED, and
    the retry without them keeps the shared memory."""
    from agent.engine import EngineError

    resources = container_resources(2 * GIB)
    try:
        shm_line, memlock, stack = _run(engine, resources).strip().splitlines()
        assert memlock == "unlimited" and int(stack) == 67108864 // 1024
    except EngineError as exc:
        assert RLIMIT_REFUSED in str(exc)
        shm_line, *_ = _run(engine, resources.without_ulimits()).strip().splitlines()
    assert int(shm_line.split()[1]) == GIB // 1024
