"""A whole federation from one appliance image, per release: a OneFlow service (the OneGate
emulator in service mode) with a `superlink` role VM and two `supernode` role VMs, each VM an
`fl-agent boot` of its own (own root, own context, own token) on this machine's engine.

- The superlink role makes its CA and server certificate, runs the SuperLink with SuperNode
  authentication and publishes FL_ENDPOINT, FL_CA_CERT, FL_VERSION and READY=YES.
- Its `fl-agent watch` (a real process) registers the keys the SuperNodes publish.
- Each SuperNode discovers the SuperLink through OneGate (endpoint, CA), takes the SuperLink's
  Flower version (FLOWER_VERSION unset: the baked 1.42.0 pairs down to a local 1.25.0 image),
  makes and publishes its node key, and waits for its registration: RUNNING, READY=YES.
  One runs FL_ISOLATION=process (the SuperNode and its SuperExec pair).
- `flwr run` of the reference app over TLS, trusting the published CA, completes two rounds
  on both SuperNodes, whose node ids are the ones the registration returned.
- A VM that leaves the service is unregistered by the watch.

SuperNode agents run as instances 11 and 12 (agent/instance.py): their containers and local
ports do not clash on one engine. Everything made here is removed; the `no_supernode` lock
makes docker tests that use the host network take turns.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import flower, instance, registration, tls
from agent.context import render_context
from agent.paths import Root
from agent.superlink import CONTAINER_NAME as SUPERLINK_CONTAINER
from emulators.onegate import OneGateEmulator
from tests.flower_federation import docker

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
SERVICE = 5
SUPERLINK_VM = 30
NODES = {31: instance.Instance(11), 32: instance.Instance(12)}  # VM id -> agent instance
PROCESS_VM = 32  # runs FL_ISOLATION=process


def _load_flower_local():
    spec = importlib.util.spec_from_file_location("flower_local", REPO / "scripts/flower_local.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local = _load_flower_local()


def _containers() -> list[str]:
    names = [SUPERLINK_CONTAINER]
    for agent in NODES.values():
        names += [agent.supernode, agent.superexec]
    return names


def _remove_containers() -> None:
    for name in _containers():
        docker("rm", "-f", name, check=False)


class Vm:
    """One appliance VM: its root, its context CD (context.sh beside token.txt), its agent."""

    def __init__(self, base: Path, vm_id: int, token: str, variables: dict[str, str]) -> None:
        self.vm_id = vm_id
        self.root = base / f"vm{vm_id}" / "root"
        (self.root / "sys/bus/pci/devices").mkdir(parents=True)  # no PCI GPU: CPU nodes
        self.context = base / f"vm{vm_id}" / "cd" / "context.sh"
        self.context.parent.mkdir(parents=True)
        (self.context.parent / "token.txt").write_text(token + "\n")
        values = {"VMID": str(vm_id), "TOKEN": "YES", "ETH0_IP": "127.0.0.1", **variables}
        self.context.write_text(render_context(values))
        self.env = {**os.environ, "FL_AGENT_ROOT": str(self.root)}
        agent = NODES.get(vm_id)
        if agent is not None:
            self.env[instance.ENV] = str(agent.number)

    def fl_agent(self, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )

    def boot(self) -> dict:
        done = self.fl_agent("boot", "--context-file", str(self.context), "--json")
        assert done.stdout.startswith("{"), done.stdout[-2000:] + done.stderr[-6000:]
        record = json.loads(done.stdout)
        assert record["state"] == "RUNNING", done.stdout[-4000:] + done.stderr[-4000:]
        return record

    def watch(self, log: Path) -> subprocess.Popen:
        """`fl-agent watch` as the enabled unit runs it, in its own process group."""
        argv = [sys.executable, "-m", "agent", "watch", "--interval", "5"]
        argv += ["--context-file", str(self.context)]
        with log.open("w") as out:
            return subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.fixture(params=["1.42.0", "1.25.0"])
def service(request, tmp_path, no_supernode):
    version = request.param
    for needed in {version, flower.DEFAULT_FLOWER_VERSION}:  # the SuperLink's and the baked one
        subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), needed], check=True)
    local.ensure_venv(version)
    _remove_containers()
    watches: list[subprocess.Popen] = []
    with OneGateEmulator() as onegate:
        vms = {}
        for vm_id in (SUPERLINK_VM, *NODES):
            token = f"token-{vm_id}-{os.urandom(6).hex()}"
            onegate.add_vm(vm_id, token=token, ips=("127.0.0.1",))
            common = {"ONEGATE_ENDPOINT": onegate.endpoint}
            if vm_id == SUPERLINK_VM:  # the same image, the superlink role
                role = {"FL_ROLE": "superlink", "FLOWER_VERSION": version}
                role["SET_HOSTNAME"] = "superlink"
            else:  # no FLOWER_VERSION: paired with the SuperLink's FL_VERSION
                role = {"FL_ISOLATION": "process"} if vm_id == PROCESS_VM else {}
            vms[vm_id] = Vm(tmp_path, vm_id, token, common | role)
        onegate.add_service(
            SERVICE, "federation", {"superlink": [SUPERLINK_VM], "supernode": list(NODES)}
        )
        try:
            yield version, onegate, vms, watches, tmp_path
        finally:
            for process in watches:
                _stop(process)
            _remove_containers()


def test_one_image_forms_a_federation_with_tls_and_node_authentication(service):
    version, onegate, vms, watches, tmp_path = service
    superlink = vms[SUPERLINK_VM]

    # The superlink role: serving, published, READY.
    record = superlink.boot()
    assert record["superlink"]["node_auth"] is True, record["superlink"]
    published = onegate.user_template(SUPERLINK_VM)
    ca = tls.tls_files(Root(superlink.root)).ca_cert
    assert published["FL_ENDPOINT"] == flower.fleet_endpoint(version, "127.0.0.1")
    assert base64.b64decode(published["FL_CA_CERT"]).decode() == ca.read_text()
    assert (published["FL_VERSION"], published["FL_TLS"], published["READY"]) == (
        version,
        "YES",
        "YES",
    )
    watches.append(superlink.watch(tmp_path / "superlink-watch.log"))

    # Two SuperNodes of the service: discovered, paired, keyed, registered, running.
    for vm_id, agent in NODES.items():
        node = vms[vm_id].boot()
        assert node["mode"] == "CPU" and node["problems"] == [], node["problems"]
        attributes = onegate.user_template(vm_id)
        assert attributes["READY"] == "YES" and attributes["FL_STATE"] == "RUNNING"
        assert attributes["FL_NODE_PUBLIC_KEY"].startswith("ecdsa-sha2-nistp384 ")
        inspected = json.loads(docker("inspect", agent.supernode).stdout)[0]
        assert inspected["Config"]["Image"] == flower.default_image(version)  # paired
        command = inspected["Config"]["Cmd"]
        assert "--auth-supernode-private-key" in command and "--insecure" not in command
    assert docker("inspect", "-f", "{{.State.Running}}", NODES[PROCESS_VM].superexec).stdout
    registered = registration.read_registry(Root(superlink.root))
    assert len(registered) == 2
    _until(
        lambda: onegate.user_template(SUPERLINK_VM).get("FL_NODES_REGISTERED") == "2",
        30,
        "FL_NODES_REGISTERED=2",
    )

    # A run over TLS, trusting the CA the SuperLink published, trains on both SuperNodes.
    home = tmp_path / "flwr-home"
    trusted = tmp_path / "published-ca.pem"
    trusted.write_bytes(base64.b64decode(published["FL_CA_CERT"]))
    app = local.prepare_app(version, tmp_path / "app", home, trusted)
    run = subprocess.run(
        local.run_command(version, ["--run-config", "min-nodes=2"]),
        cwd=app,
        env=local.environment(version, home),
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0 and "fl-demo result: rounds=2" in out, out[-6000:]
    trained = {int(n) for n in re.findall(r"fl-demo round 2 node (\d+):", out)}
    assert trained == set(registered.values()), out[-6000:]

    # A VM that leaves the service is unregistered by the superlink role's watch.
    onegate.remove_node(SERVICE, "supernode", PROCESS_VM)
    _until(
        lambda: onegate.user_template(SUPERLINK_VM).get("FL_NODES_REGISTERED") == "1",
        60,
        "FL_NODES_REGISTERED=1 after the scale-down",
    )
    left = onegate.user_template(PROCESS_VM)["FL_NODE_PUBLIC_KEY"]
    assert left not in registration.read_registry(Root(superlink.root))
