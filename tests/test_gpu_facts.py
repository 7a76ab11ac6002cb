"""GPU facts: PCI from fixture sysfs trees, the driver from fixture /proc, NVML from the stand-in
library loaded by the real pynvml (in child processes, one per scenario)."""

from __future__ import annotations

import subprocess

import pytest

from agent.gpu import read_driver, scan_pci
from agent.paths import Root
from tests.fixtures_gpu import (
    A100_MIG_PROFILES,
    A100_UUIDS,
    DRIVER,
    GIB,
    H100_UUID,
    MIG_UUIDS,
    OPEN_VERSION_LINE,
    add_pci_function,
    collect,
    cpu_only_vm,
    failing_init,
    gpu_vm,
    h100,
    kernel_log,
    load_driver,
    nvml_env,
    nvml_stub,  # noqa: F401  (a fixture)
    run_python,
    two_a100_mig,
)

# --- PCI ---


def test_cpu_only_vm_has_no_nvidia_gpu(tmp_path):
    facts = scan_pci(Root(cpu_only_vm(tmp_path)))
    assert facts.readable and facts.gpus == () and facts.uefi


def test_gpu_fields_from_sysfs(tmp_path):
    gpu_vm(tmp_path, "nvidia")
    (gpu,) = scan_pci(Root(tmp_path)).gpus
    assert (gpu.address, gpu.device_id, gpu.class_code) == ("0000:01:00.0", "0x2330", "0x030200")
    assert gpu.driver == "nvidia" and gpu.numa_node == 0
    assert [b.size for b in gpu.bars[:2]] == [16 * 2**20, 128 * GIB]
    assert gpu.bars[2].size == 0


@pytest.mark.parametrize("driver", ["vfio-pci", "nouveau", None])
def test_bound_driver_is_reported(tmp_path, driver):
    gpu_vm(tmp_path, driver)
    assert scan_pci(Root(tmp_path)).gpus[0].driver == driver


def test_only_gpu_functions_count(tmp_path):
    """VFs, the HDMI audio function and NVSwitch bridges are not GPUs."""
    add_pci_function(tmp_path, "0000:01:00.0", klass="0x030000", driver="nvidia")
    add_pci_function(tmp_path, "0000:01:00.1", klass="0x040300")
    add_pci_function(tmp_path, "0000:02:00.4", virtual_function=True)
    add_pci_function(tmp_path, "0000:05:00.0", klass="0x068000", device="0x22a3")
    facts = scan_pci(Root(tmp_path))
    assert [g.address for g in facts.gpus] == ["0000:01:00.0"]
    assert facts.nvswitches == ("0000:05:00.0",)
    assert not facts.uefi


def test_unreadable_sysfs(tmp_path):
    facts = scan_pci(Root(tmp_path))
    assert not facts.readable and facts.gpus == ()


def test_kernel_log_driver_init_errors(tmp_path):
    kernel_log(
        tmp_path,
        "NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x22:0x56:742)",
        "usb 1-1: new high-speed USB device",
        "pci 0000:01:00.0: BAR 1: no space for [mem size 0x2000000000 64bit pref]",
    )
    facts = scan_pci(Root(tmp_path))
    assert facts.kernel_log == "/var/log/kern.log"
    assert len(facts.kernel_errors) == 2 and "RmInitAdapter" in facts.kernel_errors[0]


# --- driver ---


def test_driver_not_loaded(tmp_path):
    facts = read_driver(Root(tmp_path))
    assert not facts.loaded and facts.version is None and facts.device_nodes == ()


@pytest.mark.parametrize("line,open_module", [(None, False), (OPEN_VERSION_LINE, True)])
def test_driver_version_from_proc(tmp_path, line, open_module):
    load_driver(tmp_path, line=line, nodes=2)
    facts = read_driver(Root(tmp_path))
    assert facts.loaded and facts.version == DRIVER and facts.open_module is open_module
    assert facts.device_nodes == ("nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl")


# --- NVML through the stand-in ---


def test_nvml_library_absent(tmp_path):
    if subprocess.run(["sh", "-c", "ldconfig -p | grep -q libnvidia-ml.so.1"]).returncode == 0:
        pytest.skip("this machine has a real NVML library")
    nvml = collect(tmp_path, None, None, tmp_path)["nvml"]
    assert not nvml["available"] and nvml["error"] == "LibraryNotFound"
    assert nvml["problem"]["name"] == "nvml_library_not_found"
    assert "install the NVIDIA driver" in nvml["problem"]["fix"]


@pytest.mark.parametrize(
    "code,error,name,fix",
    [
        (9, "DriverNotLoaded", "gpu_driver_not_loaded", "modprobe nvidia"),
        (18, "LibRmVersionMismatch", "gpu_driver_mismatch", "reboot"),
        (4, "NoPermission", "nvml_no_permission", "root"),
        (999, "Unknown", "nvml_unknown_error", "kernel log"),
    ],
)
def test_nvml_init_errors_have_cause_and_fix(tmp_path, nvml_stub, code, error, name, fix):  # noqa: F811
    nvml = collect(tmp_path, nvml_stub, failing_init(code), tmp_path)["nvml"]
    assert not nvml["available"] and nvml["error"] == error
    assert nvml["problem"]["name"] == name and fix in nvml["problem"]["fix"]


def test_one_h100(tmp_path, nvml_stub):  # noqa: F811
    nvml = collect(tmp_path, nvml_stub, h100(), tmp_path)["nvml"]
    assert nvml["available"] and nvml["problem"] is None
    assert (nvml["driver_version"], nvml["cuda_driver_version"], nvml["cuda_version"]) == (
        DRIVER,
        12040,
        "12.4",
    )
    (gpu,) = nvml["gpus"]
    assert gpu["uuid"] == H100_UUID and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["pci_bus_id"] == "00000000:01:00.0" and gpu["memory_total"] == 80 * GIB
    assert gpu["compute_capability"] == "9.0" and gpu["mig_mode"] is False
    assert gpu["fabric"] is None and gpu["mig_devices"] == []


def test_two_a100_with_mig_devices(tmp_path, nvml_stub):  # noqa: F811
    gpus = collect(tmp_path, nvml_stub, two_a100_mig(), tmp_path)["nvml"]["gpus"]
    assert [g["uuid"] for g in gpus] == list(A100_UUIDS)
    assert all(g["mig_mode"] and g["mig_pending"] for g in gpus)
    migs = gpus[0]["mig_devices"]
    assert [m["uuid"] for m in migs] == list(MIG_UUIDS)
    assert [(m["gpu_instance_id"], m["compute_instance_id"]) for m in migs] == [(1, 0), (2, 0)]
    assert [m["profile"] for m in migs] == list(A100_MIG_PROFILES)
    assert gpus[1]["mig_devices"] == []


def _mig_attributes(**attributes) -> dict:
    """two_a100_mig with the first MIG device's attributes replaced (None: removed)."""
    scenario = two_a100_mig()
    mig = scenario["devices"][0]["mig_devices"][0]
    mig.update(attributes)
    for key in [k for k, v in attributes.items() if v is None]:
        del mig[key]
    return scenario


@pytest.mark.parametrize(
    "attributes",
    [
        {"gi_slices": None},  # the driver answers NOT_SUPPORTED
        {"memory_mb": 0},
        {"memory_mb": None},
        {"memory_mb": 2**62},  # more than the GPU has
        {"gi_slices": 0, "ci_slices": 0},
        {"ci_slices": 3},  # more than its GPU instance
        {"gi_slices": 2**31},
    ],
)
def test_mig_attributes_no_device_has_give_no_profile(tmp_path, nvml_stub, attributes):  # noqa: F811
    gpus = collect(tmp_path, nvml_stub, _mig_attributes(**attributes), tmp_path)["nvml"]["gpus"]
    assert [m["profile"] for m in gpus[0]["mig_devices"]] == [None, A100_MIG_PROFILES[1]]
    assert gpus[0]["problem"] is None


def test_no_parent_memory_gives_no_profile(tmp_path, nvml_stub):  # noqa: F811
    scenario = two_a100_mig()
    scenario["devices"][0]["memory_total"] = 0
    migs = collect(tmp_path, nvml_stub, scenario, tmp_path)["nvml"]["gpus"][0]["mig_devices"]
    assert [m["profile"] for m in migs] == [None, None] and len(migs) == 2


_OLD_BINDINGS = """
import json, sys
import pynvml
del pynvml.nvmlDeviceGetAttributes_v2  # nvidia-ml-py from before the call
from agent.gpu import collect_facts
from agent.paths import Root
print(json.dumps(collect_facts(Root.from_env(sys.argv[1])).to_dict()))
"""


def test_bindings_without_the_call_give_no_profile(tmp_path, nvml_stub):  # noqa: F811
    env = nvml_env(nvml_stub, two_a100_mig(), tmp_path)
    gpus = run_python(_OLD_BINDINGS, [str(tmp_path)], env)["nvml"]["gpus"]
    assert [m["uuid"] for m in gpus[0]["mig_devices"]] == list(MIG_UUIDS)
    assert [m["profile"] for m in gpus[0]["mig_devices"]] == [None, None]


def test_lost_gpu_is_a_per_device_problem(tmp_path, nvml_stub):  # noqa: F811
    scenario = h100(error=15)
    nvml = collect(tmp_path, nvml_stub, scenario, tmp_path)["nvml"]
    (gpu,) = nvml["gpus"]
    assert nvml["available"] and gpu["problem"]["name"] == "gpu_lost"
    assert gpu["problem"]["subject"] == "GPU 0"


def test_fabric_state(tmp_path, nvml_stub):  # noqa: F811
    scenario = h100(fabric={"state": 2, "status": 0})
    gpu = collect(tmp_path, nvml_stub, scenario, tmp_path)["nvml"]["gpus"][0]
    assert gpu["fabric"] == {
        "state": "in_progress",
        "status": 0,
        "api": "nvmlDeviceGetGpuFabricInfoV",
    }


def test_collect_facts_combines_the_three(tmp_path, nvml_stub):  # noqa: F811
    load_driver(gpu_vm(tmp_path, "nvidia"))
    facts = collect(tmp_path, nvml_stub, h100(), tmp_path)
    assert facts["pci"]["gpus"][0]["driver"] == "nvidia"
    assert facts["driver"]["version"] == facts["nvml"]["driver_version"] == DRIVER
