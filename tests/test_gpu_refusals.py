"""GPU start refusals: every recorded engine/runc/toolkit text keeps its class and repair.

tests/data/gpu_refusals.json holds texts produced here (a private engine whose prestart hook
fails: docker 20.10 + runc 1.1), real logs from public issues (runc >= 1.2 wording) and texts
assembled from the upstream format strings; each names its source. The docker test produces
the runc texts again, for real, so a change of wording on this machine shows up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.gpu.refusals import (
    REFUSALS,
    REGENERATE_CDI_SPEC,
    RESTART_ENGINE,
    classify_refusal,
    next_step,
)

CASES = json.loads((Path(__file__).parent / "data" / "gpu_refusals.json").read_text())["cases"]
BUSYBOX = "fl-agent/busybox:latest"


@pytest.mark.parametrize("case", CASES, ids=[f"{c['class']}-{i}" for i, c in enumerate(CASES)])
def test_recorded_refusal_is_classified(case):
    refusal = classify_refusal(case["text"])
    assert refusal is not None, case["source"]
    assert (refusal.problem.name, refusal.repair) == (case["class"], case["repair"])
    assert refusal.problem.fix


def test_every_class_has_a_recorded_text():
    recorded = {c["class"] for c in CASES}
    assert {r.name for r in REFUSALS} <= recorded


@pytest.mark.parametrize(
    "text",
    [
        "No such image: flwr/supernode:9.9",
        'Conflict. The container name "/flower-supernode" is already in use',
        "driver failed programming external connectivity on endpoint flower-supernode",
    ],
)
def test_other_engine_errors_are_not_gpu_refusals(text):
    assert classify_refusal(text) is None


def test_both_runc_hook_wordings_are_gpu_refusals():
    old = "error running hook #0: error running hook: exit status 1, stdout: , stderr: x"
    new = "error running prestart hook #0: exit status 1, stdout: , stderr: x"
    assert classify_refusal(old).problem.name == classify_refusal(new).problem.name
    assert classify_refusal(new).problem.name == "gpu_hook_failed"


HOOK = """#!/bin/sh
cat >/dev/null
echo "nvidia-container-cli: initialization error: nvml error: driver not loaded" >&2
exit 1
"""


@pytest.mark.docker
def test_runc_texts_on_this_machine(tmp_path, docker_client):
    """A private engine (own network namespace) runs a failing prestart hook for --gpus."""
    from bench.engine import PrivateEngine

    hook_dir = tmp_path / "bin"
    hook_dir.mkdir()
    hook = hook_dir / "nvidia-container-runtime-hook"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    docker_client.images.get(BUSYBOX)
    with PrivateEngine(path_first=(str(hook_dir),), own_netns=True) as engine:
        engine.load_image(BUSYBOX)
        run = ["run", "--rm", "--network", "none", "--gpus", "all", BUSYBOX, "true"]
        hooked = engine.docker(*run, check=False).stderr
        hook.unlink()
    with PrivateEngine(own_netns=True) as engine:  # started without the hook on its PATH
        engine.load_image(BUSYBOX)
        bare = engine.docker(*run, check=False).stderr
    assert "error running hook #0" in hooked or "error running prestart hook #0" in hooked
    assert classify_refusal(hooked).problem.name == "gpu_driver_not_loaded"
    refusal = classify_refusal(bare)
    assert (refusal.problem.name, refusal.repair) == ("gpu_runtime_unavailable", "restart_engine")
    assert os.path.exists("/sys/class/net/docker0")  # the machine's bridge is untouched


def test_next_step_repairs_once_and_restarts_the_engine_only_at_boot():
    no_driver = classify_refusal('could not select device driver "" with capabilities: [[gpu]]')
    stale = classify_refusal(
        "CDI device injection failed: unresolvable CDI devices nvidia.com/gpu=0"
    )
    hook = classify_refusal("error running prestart hook #0: exit status 1, stdout: , stderr: x")
    none: frozenset[str] = frozenset()
    assert next_step(no_driver, at_boot=True, repairs_done=none) == "repair"
    assert next_step(no_driver, at_boot=False, repairs_done=none) == "cpu"
    assert next_step(no_driver, at_boot=True, repairs_done=frozenset({RESTART_ENGINE})) == "cpu"
    assert next_step(stale, at_boot=False, repairs_done=none) == "repair"
    assert next_step(stale, at_boot=True, repairs_done=frozenset({REGENERATE_CDI_SPEC})) == "cpu"
    assert next_step(hook, at_boot=True, repairs_done=none) == "cpu"
    assert next_step(None, at_boot=True, repairs_done=none) == "raise"


def test_shared_names_have_one_definition():
    """The refusal table and NVML's causes take the catalogue's cause and fix for its names."""
    from agent.gpu.nvml import problem_for
    from agent.gpu.refusals import REFUSALS
    from agent.outcome import PROBLEMS

    for refusal in REFUSALS:
        if refusal.name in ("gpu_driver_not_loaded", "toolkit_not_configured"):
            assert (refusal.cause, refusal.fix) == PROBLEMS[refusal.name]
    not_loaded = problem_for(9, "Driver Not Loaded")
    assert not_loaded.fix == PROBLEMS["gpu_driver_not_loaded"][1]
