"""Whole boots reporting to the OneGate emulator: discovery, GPU fallback, READY when running."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.context import render_context
from emulators.onegate import OneGateEmulator
from tests.fixtures_gpu import cpu_only_vm, gpu_vm, nvml_env

pytestmark = pytest.mark.docker

ME, SUPERLINK, OTHER = 42, 41, 40


@pytest.fixture
def onegate():
    with OneGateEmulator() as em:
        em.add_vm(SUPERLINK, token="tok-41", ips=("127.0.0.1",))
        em.add_vm(OTHER, token="tok-40", ips=("10.0.0.40",))
        em.add_vm(ME, token="tok-42", ips=("10.0.0.42",))
        em.add_service(7, "flower", {"superlink": [SUPERLINK], "supernode": [OTHER, ME]})
        em.set_attributes(SUPERLINK, FL_ENDPOINT="127.0.0.1:9092", FL_READY="YES", FL_TLS="NO")
        yield em


def boot(tmp_path, onegate, image: str, *flags: str, **variables: str) -> tuple[int, dict]:
    context_dir = tmp_path / "cd"
    context_dir.mkdir(exist_ok=True)
    base = {
        "ONEGATE_ENDPOINT": onegate.endpoint,
        "VMID": str(ME),
        "TOKEN": "YES",
        "FL_TLS_ENABLED": "NO",
        "FL_SUPERNODE_IMAGE": image,
    }
    (context_dir / "context.sh").write_text(render_context({**base, **variables}))
    (context_dir / "token.txt").write_text("tok-42\n")
    env = nvml_env(None, None, tmp_path)  # no NVML library: what a VM without a driver has
    env["FL_AGENT_ROOT"] = str(tmp_path / "root")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "boot",
            "--context-file",
            str(context_dir / "context.sh"),
            "--stability-window",
            "1",
            "--discovery-attempts",
            "2",
            "--discovery-interval",
            "0.2",
            "--json",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert "tok-42" not in proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def state_puts(em) -> list[dict[str, str]]:
    out = []
    for request in em.requests:
        if request.method == "PUT" and request.params.get("type") == "1":
            lines = [line.split("=", 1) for line in request.data_lines]
            out.append(dict(lines))
    return out


def test_discovered_superlink_partition_and_ready_last(
    onegate, tmp_path, docker_client, standin_images, no_supernode
):
    cpu_only_vm(tmp_path / "root")
    code, record = boot(tmp_path, onegate, standin_images["ok"], FL_GPU_ENABLED="AUTO")
    assert code == 0, record
    command = record["plan"]["spec"]["command"]
    assert command[command.index("--superlink") + 1] == "127.0.0.1:9092"
    node_config = next(a for a in command if a.startswith("--node-config="))
    assert node_config.startswith("--node-config=partition-id=1 num-partitions=2 ")
    assert 'fl-mode="cpu"' in node_config  # the node's facts (agent/nodefacts.py) after it
    puts = state_puts(onegate)
    assert puts[0]["FL_STATE"] == "BOOTING"
    states = [p["FL_STATE"] for p in puts if "FL_STATE" in p]
    assert states[0] == "BOOTING" and states[-1] == "RUNNING"
    assert "STARTING" in states and "VALIDATING" in states
    assert [i for i, p in enumerate(puts) if "READY" in p] == [len(puts) - 1]
    held = onegate.user_template(ME)
    assert held["READY"] == "YES" and held["FL_NODE_READY"] == "YES"
    assert held["FL_GPU_MODE"] == "CPU" and held["FL_VALIDATION"] == "CPU_ONLY"
    assert held["FL_SUPERNODE_IMAGE"] == standin_images["ok"]
    assert "FL_ERROR" not in held

    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--root",
            str(tmp_path / "root"),
            "status",
            "--remote",
            "--json",
            "--context-file",
            str(tmp_path / "cd" / "context.sh"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["last_boot"]["state"] == "RUNNING"
    held_remote = data["remote"]["attributes"]
    assert held_remote["READY"] == "YES" and held_remote["FL_STATE"] == "RUNNING"
    assert data["remote"]["queued_reports"] == 0
    assert "tok-42" not in status.stdout


def test_gpu_still_on_vfio_runs_degraded_on_cpu(
    onegate, tmp_path, docker_client, standin_images, no_supernode
):
    gpu_vm(tmp_path / "root", "vfio-pci")
    code, record = boot(tmp_path, onegate, standin_images["ok"])
    assert code == 3, record
    assert record["state"] == "DEGRADED" and record["mode"] == "CPU"
    assert docker_client.containers.get("flower-supernode").status == "running"
    held = onegate.user_template(ME)
    assert held["FL_STATE"] == "DEGRADED" and held["READY"] == "YES"
    assert held["FL_VALIDATION"].startswith("FAILED:")
    assert any(k.startswith("FL_ERROR") for k in held)


def test_gpu_required_fails_without_ready_or_container(
    onegate, tmp_path, docker_client, standin_images, no_supernode
):
    from docker.errors import NotFound

    gpu_vm(tmp_path / "root", "vfio-pci")
    code, record = boot(tmp_path, onegate, standin_images["ok"], FL_GPU_REQUIRED="YES")
    assert code == 1 and record["state"] == "FAILED"
    with pytest.raises(NotFound):
        docker_client.containers.get("flower-supernode")
    held = onegate.user_template(ME)
    assert held["FL_STATE"] == "FAILED" and "READY" not in held
    assert all("READY" not in p for p in state_puts(onegate))


def test_recovery_clears_the_error_and_keeps_ready(
    onegate, tmp_path, docker_client, standin_images, no_supernode
):
    code, _ = boot(tmp_path, onegate, standin_images["ok"], FL_GPU_ENABLED="bogus")
    assert code == 2
    held = onegate.user_template(ME)
    assert held["FL_STATE"] == "FAILED" and "READY" not in held
    code, _ = boot(tmp_path, onegate, standin_images["ok"], FL_GPU_ENABLED="NO")
    assert code == 0
    held = onegate.user_template(ME)
    assert held["FL_STATE"] == "RUNNING" and held["READY"] == "YES"
    assert not any(k.startswith("FL_ERROR") for k in held)


def test_no_superlink_anywhere_fails_clearly(
    onegate, tmp_path, docker_client, standin_images, no_supernode
):
    onegate.set_attributes(SUPERLINK, FL_ENDPOINT="")
    onegate.vms[SUPERLINK].nics.clear()
    code, record = boot(
        tmp_path,
        onegate,
        standin_images["ok"],
        FL_GPU_ENABLED="NO",
        FL_NODE_CONFIG="partition-id=0",
    )
    assert code == 1
    assert record["problems"][0]["name"] in ("superlink_not_found", "superlink_unreachable")
    assert "READY" not in onegate.user_template(ME)


def test_periodic_reconvergence_keeps_ready_and_resends_queued(
    onegate, tmp_path, docker_client, standin_images, no_supernode
):
    onegate.set_faults(drop=True)
    static = {
        "FL_GPU_ENABLED": "NO",
        "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
        "FL_NODE_CONFIG": "partition-id=0",
    }
    code, record = boot(tmp_path, onegate, standin_images["ok"], **static)
    assert code == 0, record  # OneGate down delays nothing
    assert "FL_STATE" not in onegate.user_template(ME)
    onegate.clear_faults()
    onegate.clear_requests()
    code, record = boot(tmp_path, onegate, standin_images["ok"], "--periodic", **static)
    assert code == 0 and record["container"]["action"] == "unchanged"
    held = onegate.user_template(ME)
    assert held["FL_STATE"] == "RUNNING" and held["READY"] == "YES"
    puts = [r for r in onegate.requests if r.method == "PUT"]
    states = [
        dict(line.split("=", 1) for line in r.data_lines).get("FL_STATE")
        for r in puts
        if r.params.get("type") == "1"
    ]
    # the first boot's queued reports and the periodic run's outcome go out as one report
    assert states == ["RUNNING"]
    assert held["FL_AGENT_VERSION"]  # the BOOTING report's facts were merged in
    first_ready = next(i for i, r in enumerate(puts) if "READY=YES" in r.data_lines)
    assert not [
        r for r in puts[first_ready:] if r.params.get("type") == "2" and r.data_lines == ["READY"]
    ]
