"""`fl-agent boot` of a SuperNode with node authentication and FL_ISOLATION=process against a
real SuperLink (TLS, SuperNode authentication on), per release.

The agent runs as instance 7 (agent/instance.py): its containers are flower-supernode-7 and
flower-superexec-7 on the host network, the SuperNode's local API on 127.0.0.1:39107. The
SuperLink (tests/flower_federation.py) runs on a network of its own with its fleet port
published on 127.0.0.1. First boot: the node's key is new, not registered: the SuperLink refuses
it, the boot ends FAILED with node_auth_rejected, the watch reports AUTH_REJECTED and `fl-agent
status` says how to fix it. Once the key is registered (`flwr supernode register`, as the
SuperLink role does), the SuperNode left to its restart policy joins; a second boot finds the
pair running, and `flwr run` trains through the SuperExec.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import flower, instance
from agent.context import render_context
from tests.flower_federation import Federation, docker

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
NUMBER = 7
NODE = "agent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fl_agent(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FL_AGENT_ROOT": str(root), instance.ENV: str(NUMBER)}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(params=["1.42.0", "1.25.0"])
def federation(request, tmp_path, no_supernode):
    version = request.param
    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), version], check=True)
    (tmp_path / "fed").mkdir()
    fed = Federation(version, tmp_path / "fed", repository="fl-agent/supernode")
    port = free_port()
    names = (instance.Instance(NUMBER).supernode, instance.Instance(NUMBER).superexec)
    try:
        fed.start_superlink(publish=(f"127.0.0.1:{port}:{flower.release_for(version).fleet_port}",))
        fed.wait_for("superlink", "Starting Flower SuperExec")
        yield fed, f"127.0.0.1:{port}"
    finally:
        for name in names:
            docker("rm", "-f", name, check=False)
        fed.close()


def context(path: Path, fed: Federation, address: str) -> Path:
    ca = base64.b64encode(fed.tls.ca_cert.read_bytes()).decode()
    path.write_text(
        render_context(
            {
                "FLOWER_VERSION": fed.version,
                "FL_SUPERLINK_ADDRESS": address,
                "FL_SSL_CA_CERT": ca,
                "FL_ISOLATION": "process",
                "FL_NODE_CONFIG": "partition-id=0 num-partitions=1",
                "FL_MAX_RETRIES": "0",
            }
        )
    )
    return path


def running(name: str) -> bool:
    state = docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
    return state == "true"


def test_the_pair_is_refused_until_its_key_is_registered_then_trains(federation, tmp_path):
    fed, address = federation
    root = tmp_path / "root"
    (root / "sys/bus/pci/devices").mkdir(parents=True)  # a VM without any PCI GPU
    ctx = context(tmp_path / "context.sh", fed, address)
    supernode, superexec = instance.Instance(NUMBER).supernode, instance.Instance(NUMBER).superexec

    first = fl_agent(
        root, "boot", "--context-file", str(ctx), "--json", "--stability-window", "8",
        "--registration-wait", "0",
    )  # fmt: skip
    record = json.loads(first.stdout)
    assert record["state"] == "FAILED", first.stdout + first.stderr
    assert [p["name"] for p in record["problems"]] == ["node_auth_rejected"], record["problems"]
    command = record["plan"]["companion"]["command"]
    assert "--auth-supernode-private-key" in command and "/app/node-key/node.key" in command
    assert "--isolation" in command and "process" in command
    key_dir = root / "var/lib/fl-agent/node-key"
    private = key_dir / "node.key"
    assert (private.stat().st_mode & 0o777, private.stat().st_uid) == (0o600, 49999)
    assert "PRIVATE KEY" not in first.stdout + first.stderr
    assert "PRIVATE KEY" not in (root / "var/lib/fl-agent/state.json").read_text()

    watched = fl_agent(root, "watch", "--once", "--json")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["supernode"]["status"] == "AUTH_REJECTED"
    status = fl_agent(root, "status")
    assert "FL_SUPERNODE_STATUS=AUTH_REJECTED" in status.stdout, status.stdout
    assert "flwr supernode register" in status.stdout

    (fed.workdir / "keys" / NODE).mkdir(parents=True)
    for name in ("node.key", "node.pub"):
        shutil.copy2(key_dir / name, fed.workdir / "keys" / NODE / name)
    assert fed.register(NODE) is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "SuperNode ID" not in _logs(supernode):
        time.sleep(2)
    assert "SuperNode ID" in _logs(supernode), _logs(supernode)[-3000:]

    second = fl_agent(root, "boot", "--context-file", str(ctx), "--json")
    record = json.loads(second.stdout)
    assert (record["state"], record["mode"]) == ("RUNNING", "CPU"), second.stdout + second.stderr
    assert running(supernode) and running(superexec)
    inspected = json.loads(docker("inspect", superexec).stdout)[0]
    assert inspected["Config"]["Entrypoint"] == ["flower-superexec"]
    assert inspected["HostConfig"]["NetworkMode"] == "host"
    assert inspected["Config"]["Image"] == flower.default_image(fed.version)
    node_config = next(a for a in record["plan"]["companion"]["command"] if "node-config" in a)
    assert 'fl-mode="cpu"' in node_config and "partition-id=0" in node_config

    out = fed.run_app()
    assert "fl-demo result: rounds=2" in out, out + _logs(superexec)[-3000:]


def _logs(name: str) -> str:
    with contextlib.suppress(subprocess.SubprocessError):
        done = subprocess.run(
            ["docker", "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return done.stdout
    return ""


def test_a_refused_gpu_moves_the_whole_pair_to_cpu(tmp_path, no_supernode):
    """The engine here refuses every GPU request (what a VM without the toolkit does): the
    SuperExec falls back to its CPU spec, and the SuperNode is converged again with the CPU
    facts in its node config. Instance 8; no SuperLink listens, so the SuperNode retries."""
    from dataclasses import replace

    from agent.boot import BootOptions, Facts, Session, apply, plan_inputs
    from agent.config import build_config
    from agent.context import Platform
    from agent.discovery import Discovery
    from agent.engine import connect
    from agent.nodefacts import GpuNodeFacts
    from agent.paths import Root
    from agent.plan import GpuVerdict, make_plan

    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), "1.42.0"], check=True)
    address = f"127.0.0.1:{free_port()}"
    variables = {"FLOWER_VERSION": "1.42.0", "FL_TLS_ENABLED": "NO", "FL_ISOLATION": "process"}
    config = build_config({**variables, "FL_SUPERLINK_ADDRESS": address}).config
    root = tmp_path / "root"
    session = Session(Root(root), BootOptions(stability_s=3))
    session.engine = connect(timeout_s=30)
    pair = instance.Instance(8)
    facts = Facts(
        Platform(),
        config,
        image=session.engine.image(config.supernode_image),
        discovery=Discovery(address, None, "partition-id=0"),
        data_dir_host=str(root / "opt/flower/data"),
        data_dir_exists=False,
        instance=pair,
    )
    gpu = GpuVerdict("PASSED", ("GPU-11111111-1111-1111-1111-111111111111",), False)
    h200 = GpuNodeFacts(1, "NVIDIA H200", 143771, False, "12.8")
    plan = make_plan(config, replace(plan_inputs(facts, None), gpu=gpu, node_facts=h200))
    assert plan.spec.mode == "GPU" and 'fl-mode="gpu"' in " ".join(plan.companion.command)
    try:
        record = apply(session, plan, facts, None).record
        assert (record.state, record.mode) == ("DEGRADED", "CPU"), record.problems
        assert [p.name for p in record.problems] == ["gpu_start_failed"]
        assert record.companion["spec_hash"] == plan.companion_fallback.spec_hash
        assert record.container["spec_hash"] == plan.fallback.spec_hash
        for name in (pair.supernode, pair.superexec):
            assert running(name), _logs(name)
        supernode = json.loads(docker("inspect", pair.supernode).stdout)[0]
        node_config = next(a for a in supernode["Args"] if a.startswith("--node-config="))
        assert 'fl-mode="cpu"' in node_config and "fl-gpu-model" not in node_config
        superexec = json.loads(docker("inspect", pair.superexec).stdout)[0]
        assert not superexec["HostConfig"].get("DeviceRequests")
        assert "NVIDIA_VISIBLE_DEVICES=void" in superexec["Config"]["Env"]
        assert superexec["Args"] == ["--runtime-api-address", "127.0.0.1:39108", "--insecure"]
    finally:
        for name in (pair.supernode, pair.superexec):
            docker("rm", "-f", name, check=False)
