"""Shared fixtures: the real Docker engine and the stand-in SuperNode images."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

STANDIN_DIR = Path(__file__).parent / "images" / "supernode-standin"
STANDIN_IMAGE = "fl-agent-test/supernode-standin:ok"
STANDIN_CRASH_IMAGE = "fl-agent-test/supernode-standin:crash"
STANDIN_ROOT_IMAGE = "fl-agent-test/supernode-standin:root"


TEST_NETWORK_PREFIX = "fl-agent-test-"
"""Networks of test runs (this project's convention): other runs on the shared engine create
and remove theirs while this session runs, so they and their `br-<id>` links are not counted."""


def host_network_state() -> dict[str, set[str]]:
    """The host's links and the machine engine's networks, without what comes and goes with
    other test runs (veth container ends, test networks and their bridges, private engines'
    `fle-` bridges): what the Docker tests must leave as they found it."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    listed = subprocess.run(
        ["docker", "network", "ls", "--no-trunc", "--format", "{{.ID}} {{.Name}} {{.Driver}}"],
        capture_output=True, text=True, check=False, env=env, timeout=60,
    )  # fmt: skip
    networks = {line for line in listed.stdout.splitlines() if line.strip()}
    tests = {n.split()[0][:12] for n in networks if n.split()[1].startswith(TEST_NETWORK_PREFIX)}
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = {line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()}
    transient = ("veth", "fle-")
    return {
        "links": {n for n in names if not n.startswith(transient) and n[3:] not in tests},
        "docker networks": {n for n in networks if n.split()[0][:12] not in tests},
    }


@pytest.fixture(scope="session", autouse=True)
def host_left_as_found(request):
    """Fails the session when Docker tests changed the host's links (docker0 among them: a
    private engine once deleted it) or the machine engine's networks, or left a private
    engine's bridge behind."""
    if not any(item.get_closest_marker("docker") for item in request.session.items):
        yield
        return
    from bench import engine

    before = host_network_state()
    yield
    after = host_network_state()
    changes = {
        kind: {"gone": sorted(was - after[kind]), "new": sorted(after[kind] - was)}
        for kind, was in before.items()
        if was != after[kind]
    }
    left = sorted(b for b in engine.CREATED_BRIDGES if _link_exists(b))
    assert not changes and not left, f"the Docker tests changed the host: {changes}, left {left}"


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


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
