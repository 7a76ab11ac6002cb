"""Driver-init failures a passthrough VM shows only in the kernel log.

`RmInitAdapter failed` with the GPU still bound to nvidia and NVML answering Unknown Error for
its handle is `gpu_driver_init_failed` with the kernel line; the kernel 6.8 BAR wording counts.
"""

from __future__ import annotations

import pytest

from agent.gpu import scan_pci
from agent.gpu.driver import driver_init_failure
from agent.gpu.nvml import NvmlFacts, NvmlGpu, problem_for
from agent.paths import Root
from tests.fixtures_gpu import (  # noqa: F401 - fixtures
    gpu_vm,
    h100,
    kernel_log,
    load_driver,
    nvml_env,
    nvml_stub,
    run_python,
)

RM_LINE = "NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x26:0x56:1474)"


@pytest.mark.parametrize(
    "line",
    [
        "pci 0000:01:00.0: BAR 1: no space for [mem size 0x4000000000 64bit pref]",
        "pci 0000:01:00.0: BAR 1: failed to assign [mem size 0x4000000000 64bit pref]",
        "pci 0000:01:00.0: BAR 1 [mem size 0x4000000000 64bit pref]: can't assign; no space",
        "pci 0000:01:00.0: BAR 1 [mem size 0x4000000000 64bit pref]: failed to assign",
    ],
)
def test_bar_failures_of_every_kernel_are_kept(tmp_path, line):
    kernel_log(tmp_path, "usb 1-1: new high-speed USB device", line)
    (kept,) = scan_pci(Root(tmp_path)).kernel_errors
    assert kept.endswith(line)


def _unknown_handle() -> NvmlFacts:
    gpu = NvmlGpu(0, None, problem=problem_for(999, "Unknown Error", "GPU 0"))
    return NvmlFacts(True, None, None, "550.54.15", 12040, (gpu,))


def test_rm_init_failure_with_the_gpu_still_bound(tmp_path):
    root = load_driver(gpu_vm(tmp_path, "nvidia"))
    kernel_log(root, "nvidia-nvlink: Nvlink Core is being initialized", RM_LINE)
    problem = driver_init_failure(scan_pci(Root(root)), _unknown_handle())
    assert problem.name == "gpu_driver_init_failed" and problem.subject == "GPU 0000:01:00.0"
    assert RM_LINE in problem.message and "64-bit MMIO" in problem.fix


def test_not_named_without_the_kernel_line_or_when_unbound(tmp_path):
    root = load_driver(gpu_vm(tmp_path / "a", "nvidia"))
    assert driver_init_failure(scan_pci(Root(root)), _unknown_handle()) is None
    unbound = gpu_vm(tmp_path / "b", "vfio-pci")
    kernel_log(unbound, RM_LINE)
    assert driver_init_failure(scan_pci(Root(unbound)), _unknown_handle()) is None


def test_other_gpus_line_does_not_blame_this_one(tmp_path):
    root = load_driver(gpu_vm(tmp_path, "nvidia"))
    kernel_log(root, RM_LINE.replace("0000:01:00.0", "0000:41:00.0"))
    assert driver_init_failure(scan_pci(Root(root)), _unknown_handle()) is None


_FACTS = """
import json, sys
from agent.gpu import collect_facts
from agent.paths import Root
facts = collect_facts(Root.from_env(sys.argv[1]))
problem = facts.driver_init_failure
print(json.dumps({"gpu_problem": facts.nvml.gpus[0].problem.name,
                  "named": problem.name if problem else None}))
"""


def test_through_the_real_bindings(tmp_path, nvml_stub):  # noqa: F811
    root = load_driver(gpu_vm(tmp_path / "root", "nvidia"))
    kernel_log(root, RM_LINE)
    env = nvml_env(nvml_stub, h100(handle_error=999), tmp_path)
    out = run_python(_FACTS, [str(root)], env)
    assert out == {"gpu_problem": "nvml_unknown_error", "named": "gpu_driver_init_failed"}
