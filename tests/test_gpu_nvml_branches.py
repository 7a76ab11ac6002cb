"""The driver-branch matrix: R535, R550, R570 stand-ins, each with its own nvidia-ml-py.

What each branch has comes from NVIDIA/go-nvml's copies of nvml.h (CUDA 12.2 = R535, 12.4 =
R550, 12.8 = R570): the versioned fabric call and its v2 struct from R550 on, the fabric state
an `unsigned char`, NVML_ERROR_ARGUMENT_VERSION_MISMATCH for a wrong struct version,
NVML_ERROR_GPU_NOT_FOUND from R550. nvidia-ml-py 12.535's fabric struct does not match
nvml.h (an 80-byte cluster UUID), which is why the agent declares its own.
"""

from __future__ import annotations

import pytest

from tests.fixtures_gpu import (  # noqa: F401 - fixtures
    A100_MIG_PROFILES,
    BRANCH_BINDINGS,
    REPO,
    collect,
    gpu_vm,
    h100,
    load_driver,
    nvml_bindings,
    nvml_env,
    nvml_stubs,
    run_python,
    two_a100_mig,
    validate_in_child,
)

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}

BRANCHES = tuple(BRANCH_BINDINGS)
FABRIC = {"state": 2, "status": 0}


def facts(tmp_path, stub, scenario, bindings=None) -> dict:
    return collect(tmp_path, stub, scenario, tmp_path, bindings)["nvml"]


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("own_bindings", [True, False], ids=["branch-bindings", "venv-bindings"])
def test_fabric_read_on_every_branch(tmp_path, nvml_stubs, nvml_bindings, branch, own_bindings):  # noqa: F811
    bindings = nvml_bindings[branch] if own_bindings else None
    gpu = facts(tmp_path, nvml_stubs[branch], h100(fabric=FABRIC), bindings)["gpus"][0]
    api = "nvmlDeviceGetGpuFabricInfo" if branch == 535 else "nvmlDeviceGetGpuFabricInfoV"
    assert gpu["fabric"] == {"state": "in_progress", "status": 0, "api": api}


@pytest.mark.parametrize("branch", BRANCHES)
def test_fabric_completed_with_error_status(tmp_path, nvml_stubs, branch):  # noqa: F811
    scenario = h100(fabric={"state": 3, "status": 999})
    gpu = facts(tmp_path, nvml_stubs[branch], scenario)["gpus"][0]
    assert (gpu["fabric"]["state"], gpu["fabric"]["status"]) == ("completed", 999)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("own_bindings", [True, False], ids=["branch-bindings", "venv-bindings"])
def test_mig_profile_on_every_branch(tmp_path, nvml_stubs, nvml_bindings, branch, own_bindings):  # noqa: F811
    bindings = nvml_bindings[branch] if own_bindings else None
    gpus = facts(tmp_path, nvml_stubs[branch], two_a100_mig(), bindings)["gpus"]
    assert [m["profile"] for m in gpus[0]["mig_devices"]] == list(A100_MIG_PROFILES)


_ATTRIBUTES = """
import json, pynvml
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
out = {}
for name, handle in (("gpu", gpu), ("mig", pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0))):
    try:
        a = pynvml.nvmlDeviceGetAttributes_v2(handle)
        out[name] = [a.gpuInstanceSliceCount, a.computeInstanceSliceCount, a.memorySizeMB]
    except pynvml.NVMLError as exc:
        out[name] = exc.value
print(json.dumps(out))
"""


@pytest.mark.parametrize("branch", BRANCHES)
def test_attributes_only_for_mig_handles(tmp_path, nvml_stubs, nvml_bindings, branch):  # noqa: F811
    """nvml.h: nvmlDeviceGetAttributes_v2 "currently only supports MIG device handles"."""
    env = nvml_env(nvml_stubs[branch], two_a100_mig(), tmp_path, nvml_bindings[branch])
    assert run_python(_ATTRIBUTES, [], env) == {"gpu": 3, "mig": [2, 2, 19968]}


_RAW = """
import ctypes, json, sys
import pynvml
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByIndex(0)
out = {}
for name in sys.argv[1:]:
    info = getattr(pynvml, name)()
    try:
        pynvml.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
        out[name] = int(info.state)
    except pynvml.NVMLError as exc:
        out[name] = f"error {exc.value}"
print(json.dumps(out))
"""


@pytest.mark.parametrize("branch", [550, 570])
def test_v_call_is_strict_about_the_struct_version(tmp_path, nvml_stubs, branch):  # noqa: F811
    env = nvml_env(nvml_stubs[branch], h100(fabric=FABRIC), tmp_path)
    argv = ["c_nvmlGpuFabricInfo_t", "c_nvmlGpuFabricInfo_v3_t", "c_nvmlGpuFabricInfo_v2_t"]
    out = run_python(_RAW, argv, env)
    assert out["c_nvmlGpuFabricInfo_t"] == "error 25"  # v1 struct: no version field
    assert out["c_nvmlGpuFabricInfo_v3_t"] == "error 25"  # newer than these branches know
    # the bindings' v2 struct is accepted, but its 4-byte state reads the padding too
    assert out["c_nvmlGpuFabricInfo_v2_t"] not in (2, "error 25")


_INIT = """
import json, pynvml
out = {}
try:
    pynvml.nvmlInit()
    out["init"] = "ok"
except pynvml.NVMLError as exc:
    out["init"] = exc.value
pynvml.nvmlInitWithFlags(pynvml.NVML_INIT_FLAG_NO_GPUS)
out["count_no_gpus_flag"] = pynvml.nvmlDeviceGetCount()
print(json.dumps(out))
"""


@pytest.mark.parametrize(("branch", "code"), [(535, 999), (550, 28), (570, 28)])
def test_init_fails_without_gpus_unless_asked(tmp_path, nvml_stubs, branch, code):  # noqa: F811
    out = run_python(_INIT, [], nvml_env(nvml_stubs[branch], {"devices": []}, tmp_path))
    assert out == {"init": code, "count_no_gpus_flag": 0}


def test_no_gpus_is_named(tmp_path, nvml_stubs):  # noqa: F811
    nvml = facts(tmp_path, nvml_stubs[570], {"devices": []})
    assert not nvml["available"] and nvml["problem"]["name"] == "nvml_no_gpus"


def test_irq_issue_has_cause_and_fix(tmp_path, nvml_stubs):  # noqa: F811
    nvml = facts(tmp_path, nvml_stubs[550], {"init": 11})
    problem = nvml["problem"]
    assert problem["name"] == "gpu_irq_issue"
    assert "interrupt remapping" in problem["fix"] and "MSI" in problem["message"]


def test_brand_is_read(tmp_path, nvml_stubs):  # noqa: F811
    assert facts(tmp_path, nvml_stubs[550], h100())["gpus"][0]["brand"] == 14


@pytest.mark.parametrize("branch", BRANCHES)
def test_fabric_stage_on_shared_nvswitch_vm_of_every_branch(
    tmp_path,
    nvml_stubs,  # noqa: F811
    nvml_bindings,  # noqa: F811
    branch,
):
    """Shared NVSwitch mode: the VM sees GPUs but no NVSwitch; a fabric that has not started
    must fail the stage on R535 too (it used to read as "not needed" there)."""
    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    env = {**NO_ENGINE, "PYTHONPATH": f"{nvml_bindings[branch]}:{REPO}"}
    report = validate_in_child(
        root,
        {"FL_GPU_ENABLED": "AUTO"},
        nvml_stubs[branch],
        h100(fabric={"state": 1, "status": 0}),
        tmp_path,
        env=env,
        names=["pci", "driver", "nvml", "fabric"],
        fabric_wait_s=0,
    )
    fabric = {s["name"]: s for s in report["stages"]}["fabric"]
    assert fabric["status"] == "fail" and "not_started" in fabric["detail"]
