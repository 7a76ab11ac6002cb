"""A real federation from the agent's contract, per release: the SuperLink with the CA and
certificate agent/tls.py made and SuperNode authentication on (agent/flower.py's argv), a
SuperNode whose key (agent/nodeauth.py) was registered with `flwr supernode register` connects,
one whose key was not is refused and both sides' logs say so, and the status classifier reads
the live logs. The SuperLink keeps its registrations in its database across a restart.

Runs flwr/supernode:<version> (images/build-supernode.sh) on a bridge network of its own;
tests/flower_federation.py removes every container and the network it made.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from agent import tls
from agent.supernode_status import SupernodeStatus, classify
from tests.flower_federation import Federation, docker

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent


def _started(version: str, workdir: Path, repository: str):
    """A federation whose SuperLink is up; everything it made is removed afterwards."""
    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), version], check=True)
    fed = Federation(version, workdir, repository=repository)
    try:
        fed.start_superlink()
        fed.wait_for("superlink", "Starting Flower SuperExec")
        yield fed
    finally:
        fed.close()


@pytest.fixture(params=["1.25.0", "1.42.0"])
def federation(request, tmp_path):
    yield from _started(request.param, tmp_path, "flwr/supernode")


def test_registered_node_connects_and_an_unregistered_one_is_refused(federation):
    node_id = federation.register("member")
    assert node_id is not None
    federation.start_supernode("member")
    federation.start_supernode("stranger")

    member = federation.wait_for("member", r"SuperNode ID: \d+")
    state = classify(member)
    assert (state.status, state.node_id) == (SupernodeStatus.CONNECTED, node_id)

    stranger = federation.wait_for("stranger", "No SuperNode found|Failed to activate SuperNode")
    assert classify(stranger).status is SupernodeStatus.AUTH_REJECTED
    superlink = federation.wait_for("superlink", "No SuperNode found with the given public key")
    assert f"node_id={node_id}" in superlink  # the member's activation or its pulls


def test_an_unregistered_node_is_refused_again(federation):
    """A VM that left the service: its key is unregistered by node id and the SuperLink
    refuses that key from then on."""
    node_id = federation.register("leaver")
    assert '"success": true' in federation.unregister(node_id)
    federation.start_supernode("leaver")
    log = federation.wait_for("leaver", "No SuperNode found|Failed to activate SuperNode")
    assert classify(log).status is SupernodeStatus.AUTH_REJECTED


def test_wrong_ca_is_a_tls_error(federation, tmp_path):
    other = tls.TlsFiles(tmp_path / "other-ca")
    tls.ensure_server_tls(other, tls.wanted_sans((), federation.superlink_host))
    federation.register("member")
    federation.start_supernode("member", ca=other.ca_cert)
    log = federation.wait_for("member", "CERTIFICATE_VERIFY_FAILED")
    assert classify(log).status is SupernodeStatus.TLS_ERROR


def test_superlink_restart_keeps_registrations(federation):
    federation.register("member")
    federation.start_supernode("member")
    federation.wait_for("member", r"SuperNode ID: \d+")
    federation.stop("superlink")
    stopped = federation.wait_for("member", "Connection attempt failed", timeout=90)
    assert classify(stopped).status is SupernodeStatus.RECONNECTING
    federation.start("superlink")
    back = federation.wait_for("member", "Connection successful", timeout=120)
    assert classify(back).status is SupernodeStatus.CONNECTED


def test_process_isolation_pair_runs(federation):
    """`--isolation process` SuperNode plus the SuperExec `superexec_args` describes: the
    SuperExec stays up beside the connected SuperNode and neither reports a problem."""
    federation.register("member")
    federation.start_supernode("member", isolation="process")
    federation.wait_for("member", r"SuperNode ID: \d+")
    superexec = federation.start_superexec("member")
    federation.wait_for("member-superexec", "Starting Flower SuperExec")
    time.sleep(10)
    running = docker("inspect", "-f", "{{.State.Running}}", superexec).stdout.strip()
    assert running == "true", federation.logs("member-superexec")
    assert classify(federation.logs("member")).status is SupernodeStatus.CONNECTED
    assert classify(federation.logs("member-superexec")).status is SupernodeStatus.STARTING


@pytest.fixture(params=["1.25.0", "1.42.0"])
def training_federation(request, tmp_path):
    """As `federation`, on the images that carry the reference app's dependencies."""
    yield from _started(request.param, tmp_path, "fl-agent/supernode")


def test_process_isolation_trains(training_federation):
    """`flwr run` of the reference app completes its two rounds on a SuperNode with
    `--isolation process`, its ClientApps run by the paired SuperExec; TLS and node
    authentication on."""
    fed = training_federation
    fed.register("member")
    fed.start_supernode("member", isolation="process", node_config="partition-id=0")
    fed.wait_for("member", r"SuperNode ID: \d+")
    fed.start_superexec("member")
    out = fed.run_app()
    assert "fl-demo result: rounds=2" in out, out
    clientapp = fed.logs("member-superexec")
    assert "fl-demo round 2 node" in out + clientapp, clientapp
