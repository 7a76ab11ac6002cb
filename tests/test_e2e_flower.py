"""End to end, per supported Flower release: a SuperLink on this host, `fl-agent boot` starts
the real SuperNode image (CPU here), `flwr run` of the reference app completes two rounds and
the ClientApp reports device=cpu.

Images come from images/build-supernode.sh (cached by tag and input hash; the first build takes
about a minute per release), the SuperLink and `flwr` from .venv-flwr-<version>
(scripts/flower_local.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import flower
from agent.context import render_context
from tests.flower_federation import load_flower_local, stop_group

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ("1.25.0", "1.42.0")


local = load_flower_local()


@pytest.fixture(scope="module", params=VERSIONS)
def version(request) -> str:
    """The release under test, its images built and its host venv ready."""
    subprocess.run(["bash", str(REPO / "images/build-supernode.sh"), request.param], check=True)
    local.ensure_venv(request.param)
    return request.param


@pytest.fixture
def superlink(version, tmp_path):
    """A SuperLink of `version` on 127.0.0.1, stopped (whole process group) afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    log = (tmp_path / "superlink.log").open("w")
    proc = subprocess.Popen(
        local.superlink_command(version),
        env=local.environment(version, home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    release = flower.release_for(version)
    try:
        local.wait_for_port(release.fleet_port)
        local.wait_for_port(release.control_port)
        yield home
    finally:
        stop_group(proc)
        log.close()


def boot(root: Path, context: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", "boot", "--context-file", str(context), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "FL_AGENT_ROOT": str(root)},
        timeout=300,
    )


def test_two_rounds_through_the_supernode_the_agent_booted(
    no_supernode, version, superlink, tmp_path, docker_client
):
    context = tmp_path / "context.sh"
    context.write_text(
        render_context(
            {
                "FLOWER_VERSION": version,
                "FL_SUPERLINK_ADDRESS": local.superlink_address(version),
                "FL_TLS_ENABLED": "NO",
                "FL_GPU_ENABLED": "AUTO",
                "FL_NODE_CONFIG": "partition-id=1 num-partitions=2",
            }
        )
    )
    root = tmp_path / "root"
    (root / "sys/bus/pci/devices").mkdir(parents=True)  # a VM without any PCI GPU
    booted = boot(root, context)
    assert booted.returncode == 0, booted.stdout + booted.stderr
    record = json.loads(booted.stdout)
    assert (record["state"], record["mode"]) == ("RUNNING", "CPU")

    container = docker_client.containers.get("flower-supernode")
    assert container.image.tags == [flower.default_image(version)]
    assert "FL_GPU_MODE=CPU" in container.attrs["Config"]["Env"]

    app = local.prepare_app(version, tmp_path / "app", superlink)
    run = subprocess.run(
        local.run_command(version),
        cwd=app,
        env=local.environment(version, superlink),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    for server_round in (1, 2):
        assert f"fl-demo round {server_round} node" in out, out
    assert "device=cpu (cpu)" in out
    assert "fl-demo result: rounds=2" in out and "devices=cpu" in out, out

    logs = container.logs().decode(errors="replace")
    assert "device selected: cpu (cpu): FL_GPU_MODE=CPU" in logs, logs


def test_images_have_the_released_layout_and_the_helpers(version, docker_client):
    image = docker_client.images.get(flower.default_image(version))
    config = image.attrs["Config"]
    assert config["Entrypoint"] == ["flower-supernode"]
    assert config["User"] == "app" and config["WorkingDir"] == "/app"
    assert "HOME=/app" in config["Env"]
    probe = (
        "import os, flwr, torch; from agent.clientapp import select_device;"
        "from importlib.metadata import version;"
        "print(os.getuid(), version('flwr'), torch.version.cuda, select_device().kind)"
    )
    out = docker_client.containers.run(
        image.id, ["-c", probe], entrypoint="python", remove=True, network_disabled=True
    )
    assert out.decode().split() == ["49999", version, "None", "cpu"]


def test_image_build_is_skipped_when_nothing_changed(version):
    again = subprocess.run(
        ["bash", str(REPO / "images/build-supernode.sh"), version],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "built" not in again.stdout


PARSE = (
    "import importlib, json, sys;"
    "importlib.import_module('flwr.supernode.cli.flower_supernode');"
    "m = sys.modules['flwr.supernode.cli.flower_supernode'];"
    "ns = m._parse_args_run_supernode().parse_args(json.loads(sys.argv[1]));"
    "print(json.dumps(vars(ns), default=str))"
)


def parse_with_real_cli(version: str, args: list[str]) -> subprocess.CompletedProcess:
    python = local.venv_dir(version) / "bin" / "python"
    return subprocess.run(
        [str(python), "-c", PARSE, json.dumps(args)], capture_output=True, text=True, timeout=60
    )


def test_agent_argv_is_what_this_release_parses(version):
    args = flower.supernode_args(
        version=version,
        superlink=local.superlink_address(version),
        insecure=True,
        root_certificates=None,
        isolation="subprocess",
        node_config="partition-id=0 num-partitions=2",
        max_retries=5,
        max_wait_time=60,
    )
    parsed = parse_with_real_cli(version, args)
    assert parsed.returncode == 0, parsed.stderr
    values = json.loads(parsed.stdout)
    assert values["superlink"] == local.superlink_address(version)
    assert (values["max_retries"], values["max_wait_time"]) == (5, 60)

    other = "1.42.0" if version == "1.25.0" else "1.25.0"
    foreign = flower.supernode_args(
        version=other,
        superlink=local.superlink_address(version),
        insecure=True,
        root_certificates=None,
        isolation="subprocess",
        node_config=None,
        max_retries=0,
        max_wait_time=0,
    )
    assert parse_with_real_cli(version, foreign).returncode != 0
