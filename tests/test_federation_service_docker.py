"""A whole federation from one appliance image, per release: the OneFlow service `fl-agent one
service` registers (one appliance VM template for both roles), its VMs' contexts as OneFlow and
oned render them (emulators/oneflow.py role_context: the 7.0 shape on 7.0 with 1.42.0, the 6.10
shape on 6.10 with 1.25.0), the OneGate emulator in service mode with a `superlink` role VM and
two `supernode` role VMs, each VM an `fl-agent boot` of its own (own root, own context, own
token) on this machine's engine.

- The superlink role makes its CA and server certificate, runs the SuperLink with SuperNode
  authentication and publishes FL_ENDPOINT, FL_CA_CERT, FL_VERSION and READY=YES.
- Its `fl-agent watch` (a real process) registers the keys the SuperNodes publish.
- Each SuperNode discovers the SuperLink through OneGate (endpoint, CA), runs the SuperLink's
  Flower version, makes and publishes its node key, and waits for its registration: RUNNING,
  READY=YES. On 1.42.0 the role runs FL_ISOLATION=process (SuperNode and SuperExec pairs).
- `flwr run` of the reference app over TLS, trusting the published CA, completes two rounds
  on both SuperNodes, whose node ids are the ones the registration returned.
- A VM that leaves the service is unregistered by the watch.

SuperNode agents run as instances 11 and 12 (agent/instance.py): their containers and local
ports do not clash on one engine. Everything made here is removed; the `no_supernode` lock
makes docker tests that use the host network take turns.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent import flower, instance, registration, tls
from agent.one import service as service_template
from agent.one.inputs import INPUTS, ROLE_INPUTS, SHARED_INPUTS
from agent.one.vmtemplate import Selection, TemplateRequest, render
from agent.paths import Root
from agent.superlink import CONTAINER_NAME as SUPERLINK_CONTAINER
from emulators import oneflow
from emulators.onegate import OneGateEmulator
from tests.context_cd import write_context_cd
from tests.flower_federation import docker, load_flower_local, stop_group

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
SERVICE = 5
SUPERLINK_VM = 30
NODES = {31: instance.Instance(11), 32: instance.Instance(12)}  # VM id -> agent instance
CASES = {  # Flower version -> (OpenNebula release, the supernode role's FL_ISOLATION)
    "1.42.0": ("7.0.0", "process"),
    "1.25.0": ("6.10.0", "subprocess"),
}
APPLIANCE = render(TemplateRequest(), Selection(({"SHORT_ADDRESS": "41:00.0"},), ("host-1",)))
"""The appliance VM template `fl-agent one template` writes: the one template of both roles."""


def role_contexts(version: str) -> dict[str, dict[str, str]]:
    """Each role's VM context from the service template, with the operator's answers."""
    release, isolation = CASES[version]
    body = service_template.build(5, 5, series="7.0" if release.startswith("7") else "6.10")
    answers = {i.name: i.default for i in INPUTS}
    answers |= {"FLOWER_VERSION": version, "FL_ISOLATION": isolation}
    shared = {name: answers[name] for name in SHARED_INPUTS}
    return {
        role: oneflow.role_context(
            body, role, APPLIANCE, release, shared, {n: answers[n] for n in ROLE_INPUTS[role]}
        )
        for role in ("superlink", "supernode")
    }


local = load_flower_local()


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
        values = {**variables, "VMID": str(vm_id), "ETH0_IP": "127.0.0.1"}  # what oned adds
        self.context = write_context_cd(base / f"vm{vm_id}" / "cd", values, token)
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
    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), version], check=True)
    local.ensure_venv(version)
    _remove_containers()
    watches: list[subprocess.Popen] = []
    contexts = role_contexts(version)
    with OneGateEmulator() as onegate:
        vms = {}
        for vm_id in (SUPERLINK_VM, *NODES):
            token = f"token-{vm_id}-{os.urandom(6).hex()}"
            onegate.add_vm(vm_id, token=token, ips=("127.0.0.1",))
            role = "superlink" if vm_id == SUPERLINK_VM else "supernode"
            assert contexts[role]["FL_ROLE"] == role
            variables = contexts[role] | {"ONEGATE_ENDPOINT": onegate.endpoint}
            vms[vm_id] = Vm(tmp_path, vm_id, token, variables)
        onegate.add_service(
            SERVICE, "federation", {"superlink": [SUPERLINK_VM], "supernode": list(NODES)}
        )
        try:
            yield version, onegate, vms, watches, tmp_path
        finally:
            for process in watches:
                stop_group(process, timeout=30)
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
        assert inspected["Config"]["Image"] == flower.default_image(version)
        command = inspected["Config"]["Cmd"]
        assert "--auth-supernode-private-key" in command and "--insecure" not in command
        if CASES[version][1] == "process":
            superexec = docker("inspect", "-f", "{{.State.Running}}", agent.superexec).stdout
            assert superexec.strip() == "true"
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
    leaver = max(NODES)
    onegate.remove_node(SERVICE, "supernode", leaver)
    _until(
        lambda: onegate.user_template(SUPERLINK_VM).get("FL_NODES_REGISTERED") == "1",
        60,
        "FL_NODES_REGISTERED=1 after the scale-down",
    )
    left = onegate.user_template(leaver)["FL_NODE_PUBLIC_KEY"]
    assert left not in registration.read_registry(Root(superlink.root))
