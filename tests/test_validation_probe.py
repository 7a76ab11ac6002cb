"""What the container and framework stages make of what they see (no engine needed)."""

from __future__ import annotations

import pytest

from agent import engine
from agent.gpu import probe
from agent.gpu.cuda import DriverProperties, check_image, toolkit_brand
from agent.validation import container, framework, nvml
from tests.test_gpu_cuda import LABELS

SMI_L = """GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-a1000000-0000-4000-8000-000000000001)
  MIG 3g.40gb     Device  0: (UUID: MIG-0b1c2d3e-0000-5000-9000-00000000000a)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5d3b1c2a-1111-4a2b-9c3d-0123456789ab)
"""


def test_listed_uuids_from_nvidia_smi_l():
    assert probe.listed_uuids(SMI_L) == (
        "GPU-a1000000-0000-4000-8000-000000000001",
        "MIG-0b1c2d3e-0000-5000-9000-00000000000a",
        "GPU-5d3b1c2a-1111-4a2b-9c3d-0123456789ab",
    )
    assert probe.listed_uuids("No devices found.") == ()


def test_device_request_all_or_ids_never_both():
    every = engine.device_request(None)
    assert (every["Count"], every["DeviceIDs"], every["Capabilities"]) == (-1, [], [["gpu"]])
    some = engine.device_request(("GPU-x", "MIG-y"))
    assert (some["Count"], some["DeviceIDs"]) == (0, ["GPU-x", "MIG-y"])


@pytest.mark.parametrize(
    "message,name",
    [
        ('could not select device driver "nvidia" with capabilities: [[gpu]]',
         "gpu_runtime_unavailable"),
        ("Error response from daemon: unknown or invalid runtime name: nvidia",
         "toolkit_not_configured"),
        ("OCI runtime create failed: ... nvidia-container-cli: initialization error: nvml error: "
         "driver not loaded: unknown", "gpu_driver_not_loaded"),
        ("nvidia-container-cli: initialization error: load library failed: libnvidia-ml.so.1: "
         "cannot open shared object file", "nvml_library_not_found"),
        ("nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please "
         "update your driver to a newer version", "cuda_requirement_unmet"),
        ("invoking the NVIDIA Container Runtime Hook directly (e.g. specifying the docker --gpus "
         "flag) is not supported", "toolkit_cdi_mode"),
        ("something else entirely", "container_gpu_failed"),
    ],
)  # fmt: skip
def test_engine_errors_are_classified(message, name):
    problem = engine.gpu_problem(message)
    assert problem.name == name and problem.fix


def test_torch_probe_line_is_found_among_noise():
    out = 'warning: foo\nFLAGENT-PROBE {"torch": "2.5.1", "cuda_build": "12.4"}\n'
    assert probe.parse_torch_probe(out) == {"torch": "2.5.1", "cuda_build": "12.4"}
    assert probe.parse_torch_probe("Traceback ...") is None


NGC_ENV = LABELS["cuda-12.8.1-ubuntu22.04"]["env"]  # the real image's labels
AVAILABLE = {"torch": "2.7.0", "cuda_build": "12.8", "available": True, "count": 1,
             "names": ["H100"]}  # fmt: skip


def driver(version="535.216.03", cuda="12.2"):
    return [DriverProperties(version, cuda, toolkit_brand(14), "9.0")]  # 14: H100's brand


def interpret(probe_data, driver_cuda=12040, env=(), gpus=None):
    requirement = check_image(list(env), gpus if gpus is not None else [])
    return framework.interpret(probe_data, driver_cuda, requirement, "")


def test_torch_with_cuda_passes():
    out = interpret(
        {"torch": "2.5.1", "cuda_build": "12.4", "available": True, "count": 1, "names": ["H100"]}
    )
    assert out.status == "ok" and "torch 2.5.1 (CUDA 12.4) sees 1 device(s): H100" in out.detail


def test_cpu_only_torch_fails():
    out = interpret({"torch": "2.5.1+cpu", "cuda_build": None, "available": False})
    assert out.status == "fail" and out.problem.name == "torch_cpu_build"


def test_torch_built_for_a_newer_cuda_major_fails():
    out = interpret({"torch": "2.9.0", "cuda_build": "13.0", "available": False}, 12040)
    assert out.problem.name == "cuda_driver_too_old"
    assert "13.0" in out.problem.message and "12.4" in out.problem.message


def test_torch_that_sees_no_gpu_fails_with_its_error():
    out = interpret(
        {"torch": "2.5.1", "cuda_build": "12.4", "available": False, "error": "RuntimeError: 802"}
    )
    assert out.problem.name == "framework_cuda_unavailable" and "802" in out.problem.message


@pytest.mark.parametrize("data", [None, {"torch": None, "import_error": "No module named torch"}])
def test_framework_not_checkable_is_a_warning_not_ok(data):
    assert interpret(data).status == "warn"


def test_image_requirement_beyond_the_driver():
    problem = framework.cuda_too_old("NVIDIA_REQUIRE_CUDA", (12, 8), 12040)
    assert problem.name == "cuda_driver_too_old" and "12.8" in problem.message


def test_ngc_image_on_r535_through_its_branch_clause_passes():
    """cuda>=12.8 is not met by R535's CUDA 12.2, but a brand/driver clause is (ORed)."""
    out = interpret(AVAILABLE, 12020, NGC_ENV, driver())
    assert out.status == "ok", out.detail
    assert "forward compatibility" in out.detail


def test_torch_that_runs_is_read_before_its_cuda_build():
    """torch built for CUDA 13 that runs a kernel (cuda-compat) is proof enough."""
    data = {**AVAILABLE, "torch": "2.9.0", "cuda_build": "13.0"}
    assert interpret(data, 12040).status == "ok"


def test_unmet_requirement_without_a_working_torch_fails_with_the_toolkit_text():
    out = interpret({"torch": None}, 12030, NGC_ENV, driver("545.29.06", "12.3"))  # no clause
    assert out.problem.name == "cuda_driver_too_old"
    assert "unsatisfied condition: cuda>=12.8" in out.problem.message


def test_disable_require_turns_the_check_off():
    env = [*NGC_ENV, "NVIDIA_DISABLE_REQUIRE=true"]
    assert interpret({"torch": None}, 12030, env, driver("545.29.06", "12.3")).status == "warn"


def compare(seen, selected=None):
    """The container stage's comparison, with what evaluate hands it for this inventory."""
    from agent.gpu import MigDevice, NvmlFacts, NvmlGpu, Selection

    facts = NvmlFacts(
        True,
        gpus=(
            NvmlGpu(0, GPU_A, mig_mode=True, mig_devices=(MigDevice(MIG_A, 1, 0, 1),)),
            NvmlGpu(1, GPU_H),
        ),
    )
    selection = Selection(selected)
    expected = nvml.expected_uuids(facts, selection)
    allowed = {g.uuid for g in nvml.targets(facts, selection)}
    return container.compare("image", seen, expected, allowed)


GPU_A, MIG_A, GPU_H = probe.listed_uuids(SMI_L)


def test_container_sees_what_nvml_sees():
    out = compare((GPU_A, MIG_A, GPU_H))
    assert out.status == "ok"


def test_container_sees_a_selected_mig_device_under_its_parent():
    out = compare((GPU_A, MIG_A), (MIG_A,))
    assert out.status == "ok"


@pytest.mark.parametrize("seen", [(), (GPU_A, MIG_A), (GPU_H, GPU_A)])
def test_container_gpu_mismatch(seen):
    out = compare(seen, (GPU_H,))
    assert out.status == "fail" and out.problem.name == "container_gpu_mismatch"
