"""NVIDIA GPUs on the PCI bus, read from sysfs, plus what the guest can see of its passthrough.

Works without any NVIDIA software: it is how the agent tells "no GPU in this VM" apart from
"a GPU the driver cannot drive". Rules after NVIDIA/go-nvlib's `pkg/nvpci`:
vendor 0x10de, class 0x0300xx (VGA) or 0x0302xx (3D controller), SR-IOV virtual functions
(a `physfn` link) skipped. NVSwitch bridges (class 0x0680xx) are counted apart: they mark an
HGX system whose NVLink fabric must be ready before CUDA works.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.paths import Root

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")
NVSWITCH_CLASS = "0x0680"
BAR_COUNT = 6  # standard BARs 0..5; the `resource` file lists them first
_MEM_64 = 0x00100000  # IORESOURCE_MEM_64 in the flags column of `resource`

# BAR failures: before 6.8 "BAR 1: no space for [mem size ...]" / "BAR 1: failed to assign";
# from 6.8 "BAR 1 [mem size 0x4000000000 64bit pref]: can't assign; no space".
# Kernel log files read for driver-init errors, under the root. /dev/kmsg needs privileges and
# is a stream; rsyslog's kern.log and the boot-time dmesg capture are plain files.
KERNEL_LOGS = ("/var/log/kern.log", "/var/log/dmesg")
KERNEL_LOG_TAIL = 2 * 1024 * 1024  # bytes read from the end of each file
KERNEL_LOG_MAX_LINES = 20
_KERNEL_ERRORS = re.compile(
    r"RmInitAdapter failed|rm_init_adapter failed|NVRM: .*probe routine failed|"
    r"fallen off the bus|BAR \d+(?: \[[^\]]*\])?: (?:no space|failed to assign|can't assign)|"
    r"Key was rejected by service|"
    r"NVRM: Xid|NVRM: .*PCI I/O region .* is invalid",
)


@dataclass(frozen=True)
class Bar:
    index: int
    size: int  # bytes; 0 when the BAR is unassigned
    start: int = 0  # bus address; 0 for a sized BAR the kernel could not place
    is_64bit: bool = False  # a 64-bit memory BAR (it can live above 4 GiB)


@dataclass(frozen=True)
class PciGpu:
    """One NVIDIA GPU function."""

    address: str  # 0000:01:00.0
    device_id: str  # 0x2330
    class_code: str  # 0x030200
    driver: str | None  # nvidia | vfio-pci | nouveau | ... | None (unbound)
    numa_node: int | None  # None when the kernel says -1 (typical inside a VM)
    bars: tuple[Bar, ...]
    iommu_group: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PciFacts:
    """What sysfs says, plus the guest-side passthrough diagnostics."""

    readable: bool  # False: no /sys/bus/pci/devices under the root
    gpus: tuple[PciGpu, ...]
    nvswitches: tuple[str, ...]  # addresses of NVSwitch bridges
    uefi: bool  # /sys/firmware/efi exists: the VM booted with UEFI firmware
    kernel_errors: tuple[str, ...]  # NVIDIA driver-init lines from the kernel log
    kernel_log: str | None  # which file they came from; None when none was readable

    def to_dict(self) -> dict:
        return {
            "readable": self.readable,
            "gpus": [g.to_dict() for g in self.gpus],
            "nvswitches": list(self.nvswitches),
            "uefi": self.uefi,
            "kernel_errors": list(self.kernel_errors),
            "kernel_log": self.kernel_log,
        }


def scan_pci(root: Root) -> PciFacts:
    """Read the NVIDIA functions and the passthrough diagnostics. Never raises."""
    base = root.sys / "bus/pci/devices"
    gpus: list[PciGpu] = []
    switches: list[str] = []
    try:
        entries = sorted(base.iterdir())
        readable = True
    except OSError:
        entries, readable = [], False
    for entry in entries:
        if _read(entry / "vendor") != NVIDIA_VENDOR or (entry / "physfn").exists():
            continue
        class_code = _read(entry / "class") or ""
        if class_code.startswith(GPU_CLASSES):
            gpus.append(_gpu(entry, class_code))
        elif class_code.startswith(NVSWITCH_CLASS):
            switches.append(entry.name)
    log_name, errors = kernel_errors(root)
    return PciFacts(
        readable=readable,
        gpus=tuple(gpus),
        nvswitches=tuple(switches),
        uefi=(root.sys / "firmware/efi").is_dir(),
        kernel_errors=errors,
        kernel_log=log_name,
    )


def kernel_errors(root: Root) -> tuple[str | None, tuple[str, ...]]:
    """NVIDIA-related error lines from the first readable kernel log (the last few only)."""
    for name in KERNEL_LOGS:
        try:
            with open(root.path(name), "rb") as handle:
                handle.seek(0, 2)
                handle.seek(max(0, handle.tell() - KERNEL_LOG_TAIL))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        hits = [line.strip() for line in text.splitlines() if _KERNEL_ERRORS.search(line)]
        return name, tuple(hits[-KERNEL_LOG_MAX_LINES:])
    return None, ()


def _gpu(entry: Path, class_code: str) -> PciGpu:
    driver_link = entry / "driver"
    driver = driver_link.resolve().name if driver_link.exists() else None
    numa = _read(entry / "numa_node")
    group = entry / "iommu_group"
    return PciGpu(
        address=entry.name,
        device_id=_read(entry / "device") or "",
        class_code=class_code,
        driver=driver,
        numa_node=int(numa) if numa and numa.lstrip("-").isdigit() and int(numa) >= 0 else None,
        bars=_bars(entry / "resource"),
        iommu_group=group.resolve().name if group.exists() else None,
    )


def _bars(resource: Path) -> tuple[Bar, ...]:
    """BAR sizes from the `resource` file: one `start end flags` line per region (hex)."""
    text = _read(resource)
    if not text:
        return ()
    bars = []
    for index, line in enumerate(text.splitlines()[:BAR_COUNT]):
        try:
            start, end, flags = (int(v, 16) for v in line.split())
        except ValueError:
            continue
        size = end - start + 1 if end > start else 0
        bars.append(Bar(index, size, start, bool(flags & _MEM_64)))
    return tuple(bars)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
