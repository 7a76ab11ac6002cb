"""The GPU facts a boot publishes through OneGate, from the validation's inventory."""

from __future__ import annotations

from agent.gpu import GpuFacts
from agent.gpu.driver import DriverFacts
from agent.gpu.nvml import MigDevice, NvmlFacts, NvmlGpu
from agent.gpu.pci import PciFacts
from agent.onegate import is_plain
from agent.record import gpu_attributes

A = "GPU-a1000000-0000-4000-8000-000000000001"
B = "GPU-a1000000-0000-4000-8000-000000000002"
MIG = "MIG-0b1c2d3e-0000-5000-9000-00000000000a"


def facts() -> GpuFacts:
    gpus = (
        NvmlGpu(
            0,
            A,
            "NVIDIA A100-SXM4-80GB",
            "00000000:01:00.0",
            80 * 2**30,
            "8.0",
            True,
            False,
            (MigDevice(MIG, 1, 0, 10 * 2**30),),
        ),
        NvmlGpu(1, B, "NVIDIA A100-SXM4-80GB", "00000000:02:00.0", 80 * 2**30, "8.0", False),
    )
    nvml = NvmlFacts(True, driver_version="550.54.15", cuda_driver_version=12040, gpus=gpus)
    pci = PciFacts(True, (), (), True, (), None)
    return GpuFacts(pci, DriverFacts(True, "550.54.15", False, ()), nvml)


def test_gpu_facts_become_plain_attributes() -> None:
    attrs = gpu_attributes(facts(), "GPU", {"verdict": "PASSED"})
    assert attrs == {
        "FL_GPU_MODE": "GPU",
        "FL_VALIDATION": "PASSED",
        "FL_GPU_COUNT": "2",
        "FL_GPU_NAMES": "NVIDIA A100-SXM4-80GB;NVIDIA A100-SXM4-80GB",
        "FL_GPU_UUIDS": f"{A};{B}",
        "FL_GPU_MEMORY_MIB": "81920;81920",
        "FL_DRIVER_VERSION": "550.54.15",
        "FL_CUDA_VERSION": "12.4",
        "FL_MIG": "ENABLED;DISABLED",
    }
    assert all(is_plain(k, v) for k, v in attrs.items())


def test_selected_devices_are_counted_and_failures_name_the_stage() -> None:
    attrs = gpu_attributes(
        facts(), "CPU", {"verdict": "FAILED", "failed_stage": "toolkit", "selected": [MIG]}
    )
    assert attrs["FL_GPU_MODE"] == "CPU" and attrs["FL_GPU_COUNT"] == "1"
    assert attrs["FL_VALIDATION"] == "FAILED:toolkit"


def test_no_gpu_facts() -> None:
    assert gpu_attributes(None, "CPU", None) == {
        "FL_GPU_MODE": "CPU",
        "FL_VALIDATION": "CPU_ONLY",
        "FL_GPU_COUNT": "0",
    }
