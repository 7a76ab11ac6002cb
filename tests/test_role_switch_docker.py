"""A VM whose FL_ROLE changes: the next boot removes the other role's containers (the agent's
own, by label) before it starts its own, on the real engine, for the appliance's single agent.

SuperNode (TLS off, dialing a port nothing listens on: it retries and keeps running) -> the
same root boots FL_ROLE=superlink: flower-supernode is removed, flower-superlink runs -> back to
a SuperNode: flower-superlink is removed. A container of that name without the agent's label is
never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.context import render_context
from agent.superlink import CONTAINER_NAME as SUPERLINK
from tests.flower_federation import docker

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
VERSION = "1.42.0"
SUPERNODE = "flower-supernode"


def _running(name: str) -> bool:
    found = docker("inspect", "-f", "{{.State.Running}}", name, check=False)
    return found.returncode == 0 and found.stdout.strip() == "true"


def _boot(root: Path, context: Path, variables: dict[str, str]) -> dict:
    context.write_text(render_context(variables))
    env = {k: v for k, v in os.environ.items() if k != "FL_AGENT_INSTANCE"}
    done = subprocess.run(
        [sys.executable, "-m", "agent", "boot", "--context-file", str(context), "--json"],
        capture_output=True,
        text=True,
        env={**env, "FL_AGENT_ROOT": str(root)},
        timeout=300,
    )
    assert done.stdout.startswith("{"), done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture
def clean_engine(no_supernode):
    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), VERSION], check=True)
    for name in (SUPERNODE, SUPERLINK):
        docker("rm", "-f", name, check=False)
    yield
    for name in (SUPERNODE, SUPERLINK):
        docker("rm", "-f", name, check=False)


def test_a_role_change_removes_the_other_roles_containers(tmp_path, clean_engine):
    root = tmp_path / "root"
    (root / "sys/bus/pci/devices").mkdir(parents=True)
    context = tmp_path / "context.sh"
    supernode = {
        "FLOWER_VERSION": VERSION,
        "FL_TLS_ENABLED": "NO",
        "FL_SUPERLINK_ADDRESS": "127.0.0.1:9",
        "FL_NODE_CONFIG": "partition-id=0",
    }
    first = _boot(root, context, supernode)
    assert first["state"] == "RUNNING" and _running(SUPERNODE), first["problems"]

    link = _boot(root, context, {"FLOWER_VERSION": VERSION, "FL_ROLE": "superlink"})
    assert link["state"] == "RUNNING", link["problems"]
    removed = [a["target"] for a in link["plan"]["actions"] if a["kind"] == "remove_container"]
    assert removed == [SUPERNODE]
    assert _running(SUPERLINK) and docker("inspect", SUPERNODE, check=False).returncode != 0

    back = _boot(root, context, supernode)
    assert back["state"] == "RUNNING", back["problems"]
    assert _running(SUPERNODE) and docker("inspect", SUPERLINK, check=False).returncode != 0


def test_a_container_of_that_name_the_agent_did_not_make_is_left_alone(tmp_path, clean_engine):
    docker("run", "-d", "--name", SUPERLINK, "--entrypoint", "sleep",
           f"fl-agent/supernode:{VERSION}", "300")  # fmt: skip
    root = tmp_path / "root"
    (root / "sys/bus/pci/devices").mkdir(parents=True)
    variables = {"FLOWER_VERSION": VERSION, "FL_TLS_ENABLED": "NO"}
    variables |= {"FL_SUPERLINK_ADDRESS": "127.0.0.1:9", "FL_NODE_CONFIG": "partition-id=0"}
    booted = _boot(root, tmp_path / "context.sh", variables)
    assert booted["state"] == "RUNNING", booted["problems"]
    assert not [a for a in booted["plan"]["actions"] if a["kind"] == "remove_container"]
    assert _running(SUPERLINK)
