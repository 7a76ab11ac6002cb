"""Shared fixtures: the real Docker engine and the stand-in SuperNode images."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

STANDIN_DIR = Path(__file__).parent / "images" / "supernode-standin"
STANDIN_IMAGE = "fl-agent-test/supernode-standin:ok"
STANDIN_CRASH_IMAGE = "fl-agent-test/supernode-standin:crash"
STANDIN_ROOT_IMAGE = "fl-agent-test/supernode-standin:root"


@pytest.fixture(scope="session")
def docker_client():
    """The machine's real Docker engine (scripts/setup.sh starts it); no engine is a failure."""
    import docker

    client = docker.from_env(timeout=120)
    client.ping()
    return client


@pytest.fixture(scope="session")
def engine(docker_client):
    """The agent's own Engine API client for the same engine."""
    from agent.engine import connect

    return connect(timeout_s=30)


@pytest.fixture(scope="session")
def standin_images(docker_client) -> dict[str, str]:
    """Build the stand-in SuperNode images from the local busybox base (no registry here)."""
    built = {}
    for key, dockerfile, tag in (
        ("ok", "Dockerfile", STANDIN_IMAGE),
        ("crash", "Dockerfile.crash", STANDIN_CRASH_IMAGE),
        ("root", "Dockerfile.root", STANDIN_ROOT_IMAGE),
    ):
        docker_client.images.build(path=str(STANDIN_DIR), dockerfile=dockerfile, tag=tag, rm=True)
        built[key] = tag
    return built


SUPERNODE_LOCK = "/tmp/fl-agent-test-supernode.lock"


@pytest.fixture
def no_supernode(docker_client):
    """No `flower-supernode` container before and after the test, and none of another's.

    The engine is shared by every test process on the machine and the container's name is fixed:
    a lock on a host-wide file makes the tests that use it take turns.
    """
    import fcntl

    from docker.errors import NotFound

    def remove() -> None:
        with contextlib.suppress(NotFound):
            docker_client.containers.get("flower-supernode").remove(force=True)

    with open(SUPERNODE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove()
        yield
        remove()
