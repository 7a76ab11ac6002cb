"""agent.clientapp: device choice and GPU memory cap, against the real (CPU) torch in .venv."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from agent.clientapp import (
    DeviceChoice,
    apply_memory_limit,
    gpu_forbidden,
    parse_fraction,
    select_device,
)
from agent.clientapp.memory import installed_framework
from tests.fixtures_gpu import (  # noqa: F401 - fixtures
    H100_UUID,
    MIG_UUIDS,
    h100,
    nvml_env,
    nvml_stub,
    run_python,
    two_a100_mig,
)

CUDA = torch.cuda.is_available()
GPU = DeviceChoice(kind="cuda", torch_device="cuda:0", name="a GPU", reason="test")
CPU = DeviceChoice(kind="cpu", torch_device="cpu", name="cpu", reason="test")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FL_GPU_MODE": "CPU"}, "FL_GPU_MODE=CPU"),
        ({"FL_GPU_MODE": "cpu"}, "FL_GPU_MODE=CPU"),
        ({"CUDA_VISIBLE_DEVICES": ""}, "hides every GPU"),
        ({"CUDA_VISIBLE_DEVICES": "void"}, "hides every GPU"),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "hides every GPU"),
        ({"NVIDIA_VISIBLE_DEVICES": "void"}, "injects no GPU"),
    ],
)
def test_environment_that_rules_the_gpu_out(env, needle):
    assert needle in gpu_forbidden(env)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"FL_GPU_MODE": "GPU"},
        {"CUDA_VISIBLE_DEVICES": "GPU-8d2e0c3a-1111-2222-3333-444455556666"},
        {"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "all"},
        # CDI injection sets NVIDIA_VISIBLE_DEVICES=void in a container that has the GPU
        {"FL_GPU_MODE": "GPU", "NVIDIA_VISIBLE_DEVICES": "void"},
    ],
)
def test_environment_that_allows_a_gpu(env):
    assert gpu_forbidden(env) is None


def test_cpu_mode_never_asks_cuda(caplog, monkeypatch):
    def boom() -> bool:
        raise AssertionError("CUDA probed in CPU mode")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    with caplog.at_level(logging.INFO, logger="flwr.fl_agent"):
        choice = select_device({"FL_GPU_MODE": "CPU", "CUDA_VISIBLE_DEVICES": "0"})
    assert (choice.kind, choice.torch_device, choice.is_gpu) == ("cpu", "cpu", False)
    assert "device selected: cpu (cpu): FL_GPU_MODE=CPU" in caplog.text


@pytest.mark.skipif(CUDA, reason="this torch sees a GPU")
def test_cpu_torch_falls_back_to_cpu_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="flwr.fl_agent"):
        choice = select_device({"FL_GPU_MODE": "GPU"})
    assert choice.kind == "cpu"
    assert "CUDA not available" in choice.reason
    assert torch.__version__ in choice.reason or "no CUDA device" in choice.reason
    assert "device selected: cpu" in caplog.text
    torch.ones(2, device=choice.torch_device)


@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (bench/gpu_train.py on real hardware)")
def test_gpu_is_chosen_and_capped_when_present():
    choice = select_device({"FL_GPU_MODE": "GPU"})
    assert choice.is_gpu and choice.name == torch.cuda.get_device_name(0)
    limit = apply_memory_limit(choice, {"FL_GPU_MEMORY_FRACTION": "0.5"}, framework="torch")
    assert limit.applied and limit.fraction == 0.5
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(total * 0.6), dtype=torch.uint8, device="cuda:0")
    torch.cuda.set_per_process_memory_fraction(1.0, 0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", (None, None)),
        ("0.25", (0.25, None)),
        ("1", (1.0, None)),
        (" 0.5 ", (0.5, None)),
    ],
)
def test_fraction_parsing(raw, expected):
    assert parse_fraction({"FL_GPU_MEMORY_FRACTION": raw}) == expected


@pytest.mark.parametrize(
    ("raw", "needle"), [("half", "not a number"), ("0", "outside"), ("1.5", "outside")]
)
def test_unusable_fraction_is_reported_not_raised(raw, needle):
    fraction, problem = parse_fraction({"FL_GPU_MEMORY_FRACTION": raw})
    assert fraction is None and needle in problem
    limit = apply_memory_limit(GPU, {"FL_GPU_MEMORY_FRACTION": raw}, framework="torch")
    assert not limit.applied and needle in limit.detail


def test_cpu_device_gets_no_cap(caplog):
    with caplog.at_level(logging.INFO, logger="flwr.fl_agent"):
        limit = apply_memory_limit(CPU, {"FL_GPU_MEMORY_FRACTION": "0.3"})
    assert (limit.framework, limit.fraction, limit.applied) == ("torch", 0.3, False)
    assert "gpu memory: CPU device" in caplog.text


def test_gpu_without_fraction_is_left_whole():
    limit = apply_memory_limit(GPU, {}, framework="torch")
    assert not limit.applied and "unset" in limit.detail


def test_gpu_without_a_framework_is_reported():
    limit = apply_memory_limit(GPU, {"FL_GPU_MEMORY_FRACTION": "0.3"}, framework="none")
    assert not limit.applied and "neither torch nor tensorflow" in limit.detail


def test_torch_is_the_framework_found_here():
    assert installed_framework() == "torch"


def test_helpers_import_without_the_agent_dependencies():
    """The SuperNode image carries agent/__init__.py and agent/clientapp only."""
    code = (
        "import sys, agent.clientapp;"
        "heavy = {'structlog', 'docker', 'requests', 'pynvml', 'torch', 'tensorflow'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


_VISIBLE = """
import json, sys
from agent.clientapp.memory import visible_memory_mib
print(json.dumps(visible_memory_mib(json.loads(sys.argv[1]))))
"""


@pytest.mark.parametrize(
    ("scenario", "env", "mib"),
    [
        ("mig", {"CUDA_VISIBLE_DEVICES": "MIG_A"}, 20 * 1024),  # the slice, not the 80 GB parent
        ("mig", {}, 20 * 1024),  # a MIG-mode GPU counts as its MIG devices
        ("h100", {"CUDA_VISIBLE_DEVICES": "GPU_H100"}, 80 * 1024),
        ("h100", {}, 80 * 1024),
    ],
)
def test_tensorflow_cap_is_sized_from_what_cuda_sees(tmp_path, nvml_stub, scenario, env, mib):  # noqa: F811
    data = two_a100_mig() if scenario == "mig" else h100()
    names = {"MIG_A": MIG_UUIDS[0], "GPU_H100": H100_UUID}
    env = {k: names.get(v, v) for k, v in env.items()}
    out = run_python(_VISIBLE, [json.dumps(env)], nvml_env(nvml_stub, data, tmp_path))
    assert out == mib
