"""`fl-agent boot` on the superlink role, end to end on the real engine and images (1.42.0, 1.25.0).

The OneGate emulator holds a OneFlow service (a superlink VM and two supernode VMs that
published FL_NODE_PUBLIC_KEY) and a VM of another service with a key of its own. One boot:
the SuperLink container runs, OneGate has its FL_ENDPOINT, FL_CA_CERT, FL_TLS, FL_VERSION and
READY=YES, the service's two keys are registered and the other service's is not; a SuperNode
started by hand with a registered key connects, the outsider's is refused. A VM that leaves the
service is unregistered by the watch's tick. A second boot reuses the certificate and leaves the
container running; a certificate near expiry is renewed under the same CA and the container
replaced.

The SuperLink and the SuperNodes run on the host network (as on the appliance); the
`no_supernode` lock makes the tests that start containers on this engine take turns, and every
container made here is removed.
"""

from __future__ import annotations

import base64
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from agent import flower, nodeauth, registration, tls
from agent.boot import BootOptions, boot
from agent.outcome import BootState
from agent.paths import Root
from agent.superlink import CONTAINER_NAME, FLOWER_USER
from agent.supernode_status import SupernodeStatus, classify
from agent.watch import Watch
from emulators.onegate import OneGateEmulator
from tests.context_cd import write_context_cd
from tests.flower_federation import docker

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
SUPERLINK_VM, MEMBER_VM, LEAVER_VM, OUTSIDER_VM = 10, 11, 13, 12
TOKEN = "tok-superlink-10"
NIC_IP = "10.99.0.5"  # published in FL_ENDPOINT; the SuperNodes here dial loopback
HOSTNAME = "superlink.test"


def _remove(*names: str) -> None:
    for name in names:
        docker("rm", "-f", name, check=False)


@pytest.fixture(params=["1.42.0", "1.25.0"])
def superlink_setup(request, tmp_path, no_supernode):
    version = request.param
    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), version], check=True)
    prefix = f"fl-agent-test-sl-{tmp_path.name[-12:].lower().replace('_', '-')}"
    _remove(CONTAINER_NAME)
    with OneGateEmulator() as onegate:
        keys = {}
        for vm_id in (SUPERLINK_VM, MEMBER_VM, LEAVER_VM, OUTSIDER_VM):
            key = nodeauth.ensure_node_key(tmp_path / "keys" / str(vm_id), owner=FLOWER_USER)
            (tmp_path / "keys" / str(vm_id)).chmod(0o755)
            keys[vm_id] = key
            template = {} if vm_id == SUPERLINK_VM else {"FL_NODE_PUBLIC_KEY": key.public_openssh}
            onegate.add_vm(
                vm_id, token=TOKEN if vm_id == SUPERLINK_VM else None, user_template=template
            )
        onegate.add_service(1, "federation", {"superlink": [SUPERLINK_VM], "supernode": [11, 13]})
        onegate.add_service(2, "elsewhere", {"supernode": [OUTSIDER_VM]})
        variables = {
            "FL_ROLE": "superlink",
            "FLOWER_VERSION": version,
            "FL_SUPERNODE_IMAGE": f"fl-agent/supernode:{version}",
            "ETH0_IP": NIC_IP,
            "SET_HOSTNAME": HOSTNAME,
            "ONEGATE_ENDPOINT": onegate.endpoint,
            "VMID": str(SUPERLINK_VM),
            "TOKEN": "YES",
        }
        context = write_context_cd(tmp_path / "cd", variables, TOKEN)
        root = Root(tmp_path / "root")
        try:
            yield root, context, onegate, keys, prefix, version
        finally:
            names = docker("ps", "-aq", "--filter", f"name={prefix}-", check=False).stdout.split()
            _remove(CONTAINER_NAME, *names)


def _boot(root: Root, context: Path):
    return boot(root, context, BootOptions(stability_s=3.0, serve_wait_s=60.0))


def _supernode(version: str, prefix: str, root: Root, key_dir: Path, name: str, port: int) -> str:
    """A SuperNode on the host network with the node's key, trusting the SuperLink's CA."""
    args = flower.supernode_args(
        version=version,
        superlink=flower.fleet_endpoint(version, "127.0.0.1"),
        insecure=False,
        root_certificates="/ca/ca.crt",
        isolation="subprocess",
        node_config=None,
        max_retries=0,
        max_wait_time=0,
        clientappio_address=f"127.0.0.1:{port}",
        auth_private_key="/key/node.key",
    )
    container = f"{prefix}-{name}"
    ca = tls.tls_files(root).ca_cert
    docker(
        "run", "-d", "--name", container, "--network", "host", "-e", "FLWR_TELEMETRY_ENABLED=0",
        "-v", f"{ca}:/ca/ca.crt:ro", "-v", f"{key_dir}:/key:ro",
        f"flwr/supernode:{version}", *args,
    )  # fmt: skip
    return container


def _wait_log(container: str, pattern: str, timeout: float = 60.0) -> str:
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = docker("logs", container, check=False)
        text = done.stdout + done.stderr
        if re.search(pattern, text):
            return text
        time.sleep(1)
    raise AssertionError(f"{container}: no {pattern!r} in {timeout:.0f} s:\n{text[-3000:]}")


def test_a_superlink_boot_serves_publishes_registers_reuses_and_renews(superlink_setup):
    root, context, onegate, keys, prefix, version = superlink_setup
    first = _boot(root, context)
    assert first.state == BootState.RUNNING, first.record.problems
    container = first.record.container
    assert container["action"] == "created"

    published = onegate.user_template(SUPERLINK_VM)
    files = tls.tls_files(root)
    assert published["FL_ENDPOINT"] == flower.fleet_endpoint(version, NIC_IP)
    assert base64.b64decode(published["FL_CA_CERT"]).decode() == files.ca_cert.read_text()
    assert (published["FL_TLS"], published["FL_VERSION"]) == ("YES", version)
    assert (published["READY"], published["FL_NODES_REGISTERED"]) == ("YES", "2")
    facts = tls.facts_on_disk(files)
    assert {f"IP:{NIC_IP}", f"DNS:{HOSTNAME}", "IP:127.0.0.1"} == facts.sans
    assert files.server_key.stat().st_uid == FLOWER_USER[0]
    assert files.server_key.stat().st_mode & 0o777 == 0o600

    registered = registration.read_registry(root)
    member, leaver, outsider = (keys[v].public_openssh for v in (MEMBER_VM, LEAVER_VM, OUTSIDER_VM))
    assert set(registered) == {member, leaver}

    # the member's SuperNode connects; the other service's key was never registered
    member_node = _supernode(
        version, prefix, root, keys[MEMBER_VM].private_key.parent, "member", 19094
    )
    state = classify(_wait_log(member_node, r"SuperNode ID: \d+|Failed to activate|No SuperNode"))
    assert (state.status, state.node_id) == (SupernodeStatus.CONNECTED, registered[member])
    stranger = _supernode(
        version, prefix, root, keys[OUTSIDER_VM].private_key.parent, "outsider", 19095
    )
    log = _wait_log(stranger, "No SuperNode found|Failed to activate SuperNode")
    assert classify(log).status is SupernodeStatus.AUTH_REJECTED
    assert outsider not in registered

    # a VM leaves the service: the watch's tick unregisters its key
    onegate.remove_node(1, "supernode", LEAVER_VM)
    watched = Watch(root, context_file=context).tick()
    assert watched.nodes_registered == 1 and not watched.problems
    assert set(registration.read_registry(root)) == {member}
    assert onegate.user_template(SUPERLINK_VM)["FL_NODES_REGISTERED"] == "1"

    # a second boot reuses the certificate: the container stays as it is
    cert_before = files.server_cert.read_bytes()
    second = _boot(root, context)
    assert second.state == BootState.RUNNING, second.record.problems
    assert second.record.container["action"] == "unchanged"
    assert second.record.container["container_id"] == container["container_id"]
    assert files.server_cert.read_bytes() == cert_before

    # a certificate near expiry is renewed under the same CA and the SuperLink replaced
    ca_before = files.ca_cert.read_bytes()
    files.server_cert.unlink()
    sans = tls.wanted_sans((NIC_IP,), HOSTNAME)
    tls.ensure_server_tls(files, sans, server_validity=timedelta(days=5), key_owner=FLOWER_USER)
    third = _boot(root, context)
    assert third.state == BootState.RUNNING, third.record.problems
    assert third.record.container["action"] == "replaced"
    renewed = tls.facts_on_disk(files)
    assert files.ca_cert.read_bytes() == ca_before and renewed.signed_by_ca
    assert renewed.not_after - renewed.not_before > timedelta(days=300)
