"""The container and framework stages against the real Docker engine.

This engine has no NVIDIA toolkit, so it refuses every GPU request with the genuine
`could not select device driver "" with capabilities: [[gpu]]` at container start: the stages
must fail with that cause and its fix, and leave no container behind.
"""

from __future__ import annotations

import pytest

from agent import engine as docker
from agent.config import build_config
from agent.paths import Root
from agent.validation import run_stages
from tests.fixtures_gpu import H100_UUID

pytestmark = pytest.mark.docker

IMAGE = "fl-agent/busybox:latest"
REFUSAL = 'could not select device driver "" with capabilities: [[gpu]]'


def config(image: str = IMAGE):
    variables = {"FL_GPU_ENABLED": "YES", "FL_SUPERLINK_ADDRESS": "10.0.0.1:9092"}
    result = build_config({**variables, "FL_SUPERNODE_IMAGE": image})
    assert result.ok, result.problems
    return result.config


def probe_containers(client) -> list:
    return client.containers.list(all=True, filters={"label": docker.PROBE_LABEL})


@pytest.fixture
def clean(docker_client, engine):
    """The agent's engine client; no container left behind by what the test runs."""
    docker_client.images.get(IMAGE)  # built by scripts/setup.sh; never pulled
    before = {c.id for c in docker_client.containers.list(all=True)}
    yield engine
    after = {c.id for c in docker_client.containers.list(all=True)}
    docker.remove_probes(engine)  # clean up even when the check below fails
    assert after <= before, "a probe container was left behind"


@pytest.mark.parametrize("stage", ["container", "framework"])
def test_engine_refusal_is_a_failure_with_cause_and_fix(tmp_path, clean, docker_client, stage):
    result = run_stages(config(), Root(tmp_path), (stage,), engine=clean)
    (outcome,) = [s for s in result.stages if s.name == stage]
    assert outcome.status == "fail"
    assert outcome.problem.name == "gpu_runtime_unavailable"
    assert REFUSAL in outcome.detail
    assert "systemctl restart docker" in outcome.hint
    assert probe_containers(docker_client) == []


def test_device_ids_request_is_refused_the_same_way_and_cleaned_up(clean, docker_client):
    run = docker.run_probe(clean, IMAGE, ["nvidia-smi", "-L"], (H100_UUID,))
    assert run.exit_code is None and run.problem.name == "gpu_runtime_unavailable"
    assert REFUSAL in run.output
    assert probe_containers(docker_client) == []


def test_missing_supernode_image(tmp_path, clean):
    missing = config("fl-agent-test/absent-image:none")
    result = run_stages(missing, Root(tmp_path), ("container",), engine=clean)
    (outcome,) = [s for s in result.stages if s.name == "container"]
    assert outcome.status == "fail" and outcome.problem.name == "supernode_image_missing"
    assert "docker pull fl-agent-test/absent-image:none" in outcome.hint
