"""GPU facts: PCI (sysfs), the kernel driver, NVML. Observe only; problems are values.

`collect_facts(root)` gathers all three and never raises for absent hardware or software;
`resolve_devices` maps FL_CUDA_VISIBLE_DEVICES onto the UUIDs NVML reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import Problem
from agent.gpu.driver import DriverFacts, driver_init_failure, read_driver
from agent.gpu.nvml import Fabric, MigDevice, NvmlFacts, NvmlGpu, read_nvml
from agent.gpu.pci import PciFacts, PciGpu, scan_pci
from agent.gpu.select import Selection, resolve_devices
from agent.paths import Root

__all__ = [
    "DriverFacts",
    "Fabric",
    "GpuFacts",
    "MigDevice",
    "NvmlFacts",
    "NvmlGpu",
    "PciFacts",
    "PciGpu",
    "Selection",
    "collect_facts",
    "driver_init_failure",
    "read_driver",
    "read_nvml",
    "resolve_devices",
    "scan_pci",
]


@dataclass(frozen=True)
class GpuFacts:
    pci: PciFacts
    driver: DriverFacts
    nvml: NvmlFacts

    @property
    def present(self) -> bool:
        """An NVIDIA GPU is on this VM's PCI bus (whatever its driver state)."""
        return bool(self.pci.gpus)

    @property
    def driver_init_failure(self) -> Problem | None:
        """RmInitAdapter failed for a GPU the nvidia driver still holds (see driver.py)."""
        return driver_init_failure(self.pci, self.nvml)

    def to_dict(self) -> dict:
        return {
            "pci": self.pci.to_dict(),
            "driver": self.driver.to_dict(),
            "nvml": self.nvml.to_dict(),
        }


def collect_facts(root: Root) -> GpuFacts:
    """PCI, driver and NVML facts of this machine (NVML is not under the root: it is the
    library the dynamic loader finds, which tests replace through LD_LIBRARY_PATH)."""
    return GpuFacts(scan_pci(root), read_driver(root), read_nvml())
