"""`fl-agent boot` end to end on the real Docker engine, through the command line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from agent.context import render_context
from agent.paths import Root
from agent.state import boot_lock

pytestmark = pytest.mark.docker


def write_context(path, image: str, **variables: str):
    base = {
        "FL_SUPERLINK_ADDRESS": "127.0.0.1:9092",
        "FL_TLS_ENABLED": "NO",
        "FL_NODE_CONFIG": "partition-id=0 num-partitions=1",
        "FL_GPU_ENABLED": "NO",
        "FL_SUPERNODE_IMAGE": image,
    }
    base.update(variables)
    path.write_text(render_context({k: v for k, v in base.items() if v is not None}))
    return path


def boot(root, context, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FL_AGENT_ROOT": str(root)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "boot",
            "--context-file",
            str(context),
            "--stability-window",
            "1",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def container_id(client) -> str:
    return client.containers.get("flower-supernode").id


def test_first_boot_second_boot_and_change(docker_client, standin_images, no_supernode, tmp_path):
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", standin_images["ok"])
    first = boot(root, ctx)
    assert first.returncode == 0, first.stdout + first.stderr
    record = json.loads(first.stdout)
    assert record["state"] == "RUNNING" and record["mode"] == "CPU"
    assert record["container"]["action"] == "created"
    cid = container_id(docker_client)

    state = root / "var/lib/fl-agent/state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert json.loads(state.read_text())["container"]["container_id"] == cid
    assert "All set and ready to serve" in (root / "etc/motd").read_text()
    report = root / "etc/one-appliance/config"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600

    second = boot(root, ctx)
    assert second.returncode == 0
    assert json.loads(second.stdout)["container"]["action"] == "unchanged"
    assert container_id(docker_client) == cid

    write_context(ctx, standin_images["ok"], FL_LOG_LEVEL="DEBUG")
    third = boot(root, ctx)
    assert third.returncode == 0
    assert json.loads(third.stdout)["container"]["action"] == "replaced"
    assert container_id(docker_client) != cid

    status = subprocess.run(
        [sys.executable, "-m", "agent", "--root", str(root), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0
    assert json.loads(status.stdout)["last_boot"]["state"] == "RUNNING"


def test_invalid_context_fails_with_2_and_no_container(
    docker_client, standin_images, no_supernode, tmp_path
):
    from docker.errors import NotFound

    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", standin_images["ok"], FL_GPU_ENABLED="perhaps")
    result = boot(root, ctx)
    assert result.returncode == 2
    record = json.loads(result.stdout)
    assert record["state"] == "FAILED" and record["invalid_config"]
    assert record["problems"][0]["subject"] == "FL_GPU_ENABLED"
    with pytest.raises(NotFound):
        docker_client.containers.get("flower-supernode")
    assert "All set" not in (root / "etc/motd").read_text()


def test_crash_loop_is_failed_with_log_lines(docker_client, standin_images, no_supernode, tmp_path):
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", standin_images["crash"])
    result = boot(root, ctx, "--stability-window", "2")
    assert result.returncode == 1
    record = json.loads(result.stdout)
    assert record["problems"][0]["name"] == "supernode_crash_loop"
    assert any("exiting with 3" in line for line in record["container"]["log_tail"])


def test_dry_run_changes_nothing(docker_client, standin_images, no_supernode, tmp_path):
    from docker.errors import NotFound

    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", standin_images["ok"])
    result = boot(root, ctx, "--dry-run")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert plan["mode"] == "CPU" and plan["spec"]["name"] == "flower-supernode"
    with pytest.raises(NotFound):
        docker_client.containers.get("flower-supernode")
    assert not (root / "var/lib/fl-agent/state.json").exists()


def test_missing_image_and_no_registry_is_a_clear_failure(docker_client, no_supernode, tmp_path):
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", "fl-agent-test/not-there:1.0")
    result = boot(root, ctx)
    assert result.returncode == 1
    record = json.loads(result.stdout)
    assert record["problems"][0]["name"] == "image_pull_failed"


def test_second_concurrent_boot_exits_cleanly(standin_images, tmp_path):
    root = tmp_path / "root"
    ctx = write_context(tmp_path / "context.sh", standin_images["ok"])
    with boot_lock(Root(root)):
        result = boot(root, ctx)
    assert result.returncode == 1
    assert json.loads(result.stdout)["problems"][0]["name"] == "boot_in_progress"
