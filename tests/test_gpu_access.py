"""A GPU container that lost its devices: parsing its `nvidia-smi -L`, the repair ladder, and the
ladder run for real on a private Docker engine with a stand-in NVIDIA hook (GPU-mode containers
on this GPU-less machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.gpu.access import (
    LOST,
    OK,
    RECREATE,
    RESTART,
    UNCHECKED,
    GpuAccess,
    check_access,
    repair_for,
)
from tests.fixtures_gpu import A100_UUIDS, H100_UUID, MIG_UUIDS

IMAGES = Path(__file__).parent / "images"
BUSYBOX = "fl-agent/busybox:latest"
STANDIN = "fl-agent-test/gpu-standin:latest"
LISTING = (
    f"GPU 0: NVIDIA A100-SXM4-80GB (UUID: {A100_UUIDS[0]})\n"
    f"  MIG 3g.40gb     Device  0: (UUID: {MIG_UUIDS[0]})\n"
    f"GPU 1: NVIDIA A100-SXM4-80GB (UUID: {A100_UUIDS[1]})\n"
)

# --- parsing ---


def test_all_given_gpus_listed():
    assert check_access(0, LISTING, A100_UUIDS).state == OK
    assert check_access(0, LISTING, (MIG_UUIDS[0],)).state == OK


def test_unknown_error_is_lost_access():
    access = check_access(255, "Failed to initialize NVML: Unknown Error\n", (H100_UUID,))
    assert (access.state, access.reason, access.missing) == (LOST, "unknown_error", (H100_UUID,))


def test_a_gpu_missing_from_the_list():
    access = check_access(0, LISTING, (*A100_UUIDS, H100_UUID))
    assert (access.state, access.reason, access.missing) == (LOST, "missing_uuids", (H100_UUID,))
    assert check_access(0, "", (H100_UUID,)).reason == "missing_uuids"


def test_a_check_that_could_not_run_is_not_a_loss():
    access = check_access(127, "exec: nvidia-smi: not found\n", (H100_UUID,))
    assert (access.state, access.reason) == (UNCHECKED, "exec: nvidia-smi: not found")


# --- the ladder ---

LOST_ACCESS = GpuAccess(LOST, (H100_UUID,), "unknown_error", (H100_UUID,))


def test_restart_then_recreate_then_give_up():
    host = {H100_UUID}
    assert repair_for(LOST_ACCESS, host, ()) == RESTART
    assert repair_for(LOST_ACCESS, host, (RESTART,)) == RECREATE
    assert repair_for(LOST_ACCESS, host, (RESTART, RECREATE)) is None


def test_no_container_repair_when_the_host_lost_the_gpu_or_access_is_fine():
    assert repair_for(LOST_ACCESS, set(), ()) is None  # a GPU loss: the re-convergence's
    assert repair_for(check_access(0, LISTING, A100_UUIDS), set(A100_UUIDS), ()) is None
    unchecked = check_access(127, "not found", (H100_UUID,))
    assert repair_for(unchecked, {H100_UUID}, ()) is None


# --- for real, on a private engine ---

HOOK = """#!/bin/sh
# The NVIDIA prestart hook's stand-in: logs the OCI state it is given (one line per call).
tr -d '\\n' >>"{log}"
echo >>"{log}"
"""


@pytest.fixture
def gpu_engine(tmp_path, docker_client):
    """A private engine whose dockerd has the stand-in hook on its PATH, with the image built."""
    from bench.engine import PrivateEngine

    hook_dir = tmp_path / "bin"
    hook_dir.mkdir()
    hook = hook_dir / "nvidia-container-runtime-hook"
    hook.write_text(HOOK.format(log=tmp_path / "hook.log"))
    hook.chmod(0o755)
    (tmp_path / "hook.log").write_text("")
    docker_client.images.get(BUSYBOX)  # built by scripts/setup.sh; never pulled
    with PrivateEngine(path_first=(str(hook_dir),), own_netns=True) as engine:
        engine.load_image(BUSYBOX)
        engine.docker("build", "-q", "-t", STANDIN, str(IMAGES / "gpu-standin"))
        engine.hook_log = tmp_path / "hook.log"
        yield engine


RUN = (
    "run",
    "-d",
    "--name",
    "gpu-standin",
    "--network",
    "none",
    "--gpus",
    f"device={H100_UUID}",
    "--tmpfs",
    "/run/gpu-standin",  # per-start state: the device cgroup's stand-in
    STANDIN,
)


def check(engine) -> GpuAccess:
    proc = engine.docker("exec", "gpu-standin", "nvidia-smi", "-L", check=False)
    return check_access(proc.returncode, proc.stdout + proc.stderr, (H100_UUID,))


def repair(engine, action: str) -> None:
    if action == RESTART:
        engine.docker("restart", "-t", "1", "gpu-standin")
    else:
        engine.docker("rm", "-f", "gpu-standin")
        engine.docker(*RUN)


def run_ladder(engine, lose: str) -> tuple[list[str], GpuAccess]:
    """Lose access, then climb the ladder until access is back or it gives up."""
    engine.docker("exec", "gpu-standin", "sh", "-c", lose)
    tried: list[str] = []
    access = check(engine)
    assert (access.state, access.reason) == (LOST, "unknown_error")
    while (action := repair_for(access, {H100_UUID}, tried)) is not None:
        repair(engine, action)
        tried.append(action)
        access = check(engine)
        if access.state == OK:
            break
    return tried, access


def container_id(engine) -> str:
    return engine.docker("inspect", "-f", "{{.Id}}", "gpu-standin").stdout.strip()


@pytest.mark.docker
def test_restart_reruns_the_hook_and_restores_per_start_device_state(gpu_engine):
    """The real failure mode lives in the running container's device cgroup: a restart builds
    a new one and runs the NVIDIA prestart hook again, so the restart is enough."""
    gpu_engine.docker(*RUN)
    first = container_id(gpu_engine)
    assert check(gpu_engine).state == OK
    environ = gpu_engine.docker("exec", "gpu-standin", "cat", "/proc/1/environ").stdout
    assert f"NVIDIA_VISIBLE_DEVICES={H100_UUID}" in environ.split("\0")  # docker's GPU driver
    tried, access = run_ladder(gpu_engine, "touch /run/gpu-standin/lost")
    assert (tried, access.state) == ([RESTART], OK)
    assert container_id(gpu_engine) == first  # same container, same log
    calls = [line for line in gpu_engine.hook_log.read_text().splitlines() if first in line]
    assert len(calls) == 2  # the prestart hook ran at the first start and at the restart


@pytest.mark.docker
def test_state_kept_in_the_container_needs_the_recreate(gpu_engine):
    """Had the loss been kept in the container's own layer, only a new container clears it."""
    gpu_engine.docker(*RUN)
    first = container_id(gpu_engine)
    lose = "mkdir -p /var/lib/gpu-standin && touch /var/lib/gpu-standin/lost"
    tried, access = run_ladder(gpu_engine, lose)
    assert (tried, access.state) == ([RESTART, RECREATE], OK)
    assert container_id(gpu_engine) != first
