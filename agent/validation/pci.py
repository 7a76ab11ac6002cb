"""Stage pci: the NVIDIA GPUs on the VM's PCI bus, their drivers, BARs and the firmware."""

from __future__ import annotations

from agent.errors import Problem
from agent.gpu.pci import PciFacts, PciGpu
from agent.outcome import StageStatus
from agent.stages import Check
from agent.validation.wording import TEMPLATE_FIX, plural, size

_VFIO_FIX = (
    "inside the VM the GPU must be bound to the nvidia driver: remove the vfio-pci binding "
    "(`driverctl unset-override {addr}`, vfio-pci ids in /etc/modprobe.d and the initramfs), "
    "install the NVIDIA driver and reboot; vfio-pci belongs on the KVM host, not in the guest"
)
_NOUVEAU_FIX = (
    "blacklist nouveau (/etc/modprobe.d/blacklist-nouveau.conf: `blacklist nouveau` and "
    "`options nouveau modeset=0`), `update-initramfs -u`, install the NVIDIA driver, reboot"
)


def no_gpu(pci: PciFacts, gpu_enabled: str) -> bool:
    """AUTO and no NVIDIA GPU on the bus: CPU mode, not a failure."""
    return pci.readable and not pci.gpus and gpu_enabled == "AUTO"


def check(pci: PciFacts, gpu_enabled: str) -> Check:
    if not pci.readable:
        return Check.failed(
            Problem(
                "pci_unreadable",
                "/sys/bus/pci/devices",
                "the PCI devices cannot be listed (sysfs not mounted?)",
                "mount sysfs on /sys",
            )
        )
    if not pci.gpus:
        return _no_gpu(pci, gpu_enabled)
    wrong = [g for g in pci.gpus if g.driver not in ("nvidia", None)]
    detail = f"{plural(len(pci.gpus), 'NVIDIA GPU')}: " + "; ".join(_line(g) for g in pci.gpus)
    detail += f"; firmware {'UEFI' if pci.uefi else 'BIOS (not UEFI)'}"
    if wrong and len(wrong) == len(pci.gpus):
        return Check.failed(binding_problem(wrong[0]), detail)
    unassigned = [g.address for g in pci.gpus if any(b.size == 0 for b in g.bars[:2])]
    if wrong or unassigned:
        why = [f"{g.address} bound to {g.driver}" for g in wrong]
        why += [f"{a}: BAR0/BAR1 unassigned (MMIO space)" for a in unassigned]
        hint = binding_problem(wrong[0]).fix if wrong else TEMPLATE_FIX
        return Check(StageStatus.WARN, f"{detail}; {', '.join(why)}", hint)
    return Check(StageStatus.OK, detail)


def _no_gpu(pci: PciFacts, gpu_enabled: str) -> Check:
    where = "no NVIDIA GPU (vendor 10de, class 0300/0302) on the PCI bus"
    if pci.nvswitches:
        where += f" (only NVSwitch bridges: {', '.join(pci.nvswitches)})"
    if gpu_enabled == "AUTO":
        return Check(StageStatus.OK, f"{where}: CPU mode (FL_GPU_ENABLED=AUTO)")
    return Check.failed(
        Problem(
            "gpu_not_found",
            "FL_GPU_ENABLED",
            f"FL_GPU_ENABLED=YES but {where}",
            "attach the GPU in the VM template (PCI=[SHORT_ADDRESS=...]) on a host whose "
            "pci.conf filter includes 10de and whose GPU is bound to vfio-pci; or set "
            "FL_GPU_ENABLED=AUTO to run on CPU",
        )
    )


def binding_problem(gpu: PciGpu) -> Problem:
    if gpu.driver == "nouveau":
        return Problem(
            "gpu_nouveau_bound",
            gpu.address,
            f"GPU {gpu.address} is driven by nouveau, which CUDA cannot use",
            _NOUVEAU_FIX,
        )
    if gpu.driver and "vfio" in gpu.driver:
        return Problem(
            "gpu_bound_to_vfio",
            gpu.address,
            f"GPU {gpu.address} is bound to {gpu.driver} inside the VM",
            _VFIO_FIX.format(addr=gpu.address),
        )
    return Problem(
        "gpu_wrong_driver",
        gpu.address,
        f"GPU {gpu.address} is bound to {gpu.driver}, not nvidia",
        f"unbind it from {gpu.driver} and install the NVIDIA driver",
    )


def _line(gpu: PciGpu) -> str:
    bars = ", ".join(f"BAR{b.index} {size(b.size)}" for b in gpu.bars if b.index in (0, 1, 3))
    numa = gpu.numa_node if gpu.numa_node is not None else "none"
    text = f"{gpu.address} [10de:{gpu.device_id[2:]}] driver {gpu.driver or 'none'}, NUMA {numa}"
    return f"{text}, {bars}" if bars else text
