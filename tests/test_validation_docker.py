"""The container and framework stages against the real Docker engine.

This engine has no NVIDIA toolkit, so it refuses every GPU request with the genuine
`could not select device driver "" with capabilities: [[gpu]]` at container start: the stages
must fail with that cause and its fix, and leave no container behind.
"""

from __future__ import annotations

import pytest

from agent.config import build_config
from agent.gpu import probe
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
    return client.containers.list(all=True, filters={"label": probe.LABEL})


@pytest.fixture
def engine(docker_client):
    docker_client.images.get(IMAGE)  # built by scripts/setup.sh; never pulled
    before = {c.id for c in docker_client.containers.list(all=True)}
    yield docker_client
    after = {c.id for c in docker_client.containers.list(all=True)}
    probe.remove_probes(docker_client)  # clean up even when the check below fails
    assert after <= before, "a probe container was left behind"


@pytest.mark.parametrize("stage", ["container", "framework"])
def test_engine_refusal_is_a_failure_with_cause_and_fix(tmp_path, engine, stage):
    result = run_stages(config(), Root(tmp_path), (stage,), docker_client=engine)
    (outcome,) = [s for s in result.stages if s.name == stage]
    assert outcome.status == "fail"
    assert outcome.problem.name == "gpu_runtime_unavailable"
    assert REFUSAL in outcome.detail
    assert "systemctl restart docker" in outcome.hint and "nvidia-ctk" in outcome.hint
    assert probe_containers(engine) == []


def test_device_ids_request_is_refused_the_same_way_and_cleaned_up(engine):
    run = probe.run_probe(engine, IMAGE, ["nvidia-smi", "-L"], (H100_UUID,))
    assert run.exit_code is None and run.problem.name == "gpu_runtime_unavailable"
    assert REFUSAL in run.output
    assert probe_containers(engine) == []


def test_missing_supernode_image(tmp_path, engine):
    missing = config("fl-agent-test/absent-image:none")
    result = run_stages(missing, Root(tmp_path), ("container",), docker_client=engine)
    (outcome,) = [s for s in result.stages if s.name == "container"]
    assert outcome.status == "fail" and outcome.problem.name == "supernode_image_missing"
    assert "docker pull fl-agent-test/absent-image:none" in outcome.hint
