"""Stage driver: the NVIDIA kernel module, NVML's library, the device nodes.

NVML is read once, by observe (`agent.gpu.read_nvml`); this stage compares its driver version
with the kernel module's and reads why a GPU on the bus has no driver.
"""

from __future__ import annotations

from agent.errors import Problem
from agent.gpu.driver import DriverFacts
from agent.gpu.nvml import NvmlFacts
from agent.gpu.pci import PciFacts, PciGpu
from agent.outcome import StageStatus, problem
from agent.stages import Check
from agent.validation.wording import TEMPLATE_FIX


def check(pci: PciFacts, driver: DriverFacts, nvml: NvmlFacts) -> Check:
    if not driver.loaded:
        return _not_loaded(pci, nvml)
    if nvml.error == "LibRmVersionMismatch" and nvml.problem:
        return Check.failed(nvml.problem, f"kernel module {driver.version or '?'}")
    if nvml.driver_version and driver.version and nvml.driver_version != driver.version:
        return Check.failed(
            Problem(
                "gpu_driver_mismatch",
                "driver",
                f"the loaded kernel module is {driver.version} but the NVML library is "
                f"{nvml.driver_version} (the driver was updated without a reboot)",
                "reboot the VM; hold the NVIDIA packages so unattended upgrades cannot do this",
            )
        )
    detail = (
        f"nvidia {driver.version or 'unknown version'}"
        f"{' (open kernel module)' if driver.open_module else ''} loaded; "
        f"NVML {nvml.driver_version or 'unavailable'}; "
        f"device nodes: {', '.join(driver.device_nodes) or 'none'}"
    )
    unbound = [g for g in pci.gpus if g.driver is None]
    if unbound:
        return _init_failed(pci, unbound, detail)
    if not driver.control_node:
        return Check(
            StageStatus.WARN,
            f"{detail}; /dev/nvidiactl missing",
            "run `nvidia-modprobe -c 0 -u` or start nvidia-persistenced to create the nodes",
        )
    return Check(StageStatus.OK, detail)


def _not_loaded(pci: PciFacts, nvml: NvmlFacts) -> Check:
    if nvml.error == "LibraryNotFound" and nvml.problem:
        missing = Problem(
            nvml.problem.name,
            "driver",
            "no NVIDIA driver is installed: the kernel module is not loaded and "
            "libnvidia-ml.so.1 is missing",
            nvml.problem.fix,
        )
        return Check.failed(missing)
    detail = "/proc/driver/nvidia/version absent" + kernel_errors(pci)
    return Check.failed(problem("gpu_driver_not_loaded", "driver", detail))


def _init_failed(pci: PciFacts, unbound: list[PciGpu], detail: str) -> Check:
    addresses = ", ".join(g.address for g in unbound)
    hint = TEMPLATE_FIX if pci.uefi else "the VM boots with BIOS firmware: " + TEMPLATE_FIX
    problem = Problem(
        "gpu_driver_init_failed",
        addresses,
        f"the nvidia module is loaded but did not take GPU {addresses}" + kernel_errors(pci),
        hint,
    )
    if len(unbound) == len(pci.gpus):
        return Check.failed(problem, detail)
    return Check(StageStatus.WARN, f"{detail}; {problem.message}", hint)


def kernel_errors(pci: PciFacts) -> str:
    if not pci.kernel_errors:
        return ""
    return f"; kernel log ({pci.kernel_log}): " + " | ".join(pci.kernel_errors[-3:])
