"""The KVM host's GPU passthrough prerequisites, checked over the Root (seed: validate-host-gpu.sh).

Each check is a function `(root) -> (status, detail, hint)`; `check_host` runs them through the
stage runner the validation uses (agent/stages.py: name, status ok|warn|fail|skip, detail,
hint = the FIX line, duration_ms). The verdict: FAILED when any check fails,
PASSED_WITH_WARNINGS when any warns, else PASSED. Decisions beyond the seed script:
- no NVIDIA GPU on the host fails: there is nothing to pass through;
- a pci.conf whose filter leaves NVIDIA (10de) out fails: OpenNebula will not offer the GPUs;
  no pci.conf under the root warns (the file lives on the front-end; hosts get a synced copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.gpu.pci import PciGpu, scan_pci
from agent.host import pciconf
from agent.host.passthrough import PASSTHROUGH_CHECKS
from agent.outcome import StageStatus
from agent.paths import Root
from agent.stages import Check, StageResult, run_stage

# pci.conf on the front-end, then the copy `onehost sync` leaves on each host.
PCI_CONF_PATHS = (
    "/var/lib/one/remotes/etc/im/kvm-probes.d/pci.conf",
    "/var/tmp/one/etc/im/kvm-probes.d/pci.conf",
)
UDEV_RULES_DIR = "/etc/udev/rules.d"
UDEV_RULE = 'SUBSYSTEM=="vfio", GROUP="kvm", MODE="0666"'
STATUS_ORDER = {"ok": 0, "skip": 0, "warn": 1, "fail": 2}
BRIDGE_CLASS = "0x0604"  # PCI bridges may stay with the host inside a passed-through group
VFIO_SAFE_DRIVERS = (None, "vfio-pci", "pci-stub")


HostCheck = Callable[[Root], tuple[str, str, str]]


@dataclass(frozen=True)
class HostReport:
    stages: tuple[StageResult, ...]

    @property
    def verdict(self) -> str:
        worst = max((STATUS_ORDER[s.status] for s in self.stages), default=0)
        return ("PASSED", "PASSED_WITH_WARNINGS", "FAILED")[worst]

    @property
    def ok(self) -> bool:
        return self.verdict != "FAILED"

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "stages": [s.to_dict() for s in self.stages]}


def check_host(root: Root) -> HostReport:
    """Run every check, in the order an operator fixes them."""
    checks: tuple[HostCheck, ...] = (
        iommu_cmdline,
        iommu_groups,
        vfio_module,
        gpu_binding,
        iommu_isolation,
        udev_rule,
        pci_filter,
        *PASSTHROUGH_CHECKS,
    )
    return HostReport(tuple(run_stage(check.__name__, _as_stage, check, root) for check in checks))


def _as_stage(check: HostCheck, root: Root) -> Check:
    status, detail, hint = check(root)
    return Check(StageStatus(status), detail, hint)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _cpu_vendor(root: Root) -> str | None:
    for line in (_read(root.proc / "cpuinfo") or "").splitlines():
        if line.startswith("vendor_id"):
            return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(line.split(":")[-1].strip())
    return None


def iommu_cmdline(root: Root) -> tuple[str, str, str]:
    """intel_iommu=on / amd_iommu=on (AMD's IOMMU is on by default) and iommu=pt."""
    cmdline = _read(root.proc / "cmdline")
    if cmdline is None:
        return "fail", "/proc/cmdline is not readable", "run host-check on the KVM host itself"
    args = set(cmdline.split())
    vendor = _cpu_vendor(root)
    flag = "amd_iommu=on" if vendor == "amd" else "intel_iommu=on"
    fix = (
        f"add '{flag} iommu=pt' to GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, "
        "then update-grub && reboot"
    )
    off = sorted(args & {"intel_iommu=off", "amd_iommu=off", "iommu=off"})
    if off:
        return "fail", f"IOMMU switched off on the kernel command line: {' '.join(off)}", fix
    requested = sorted(args & {"intel_iommu=on", "amd_iommu=on"})
    passthrough = "iommu=pt" in args
    if requested or vendor == "amd":
        how = " ".join(requested) if requested else "AMD CPU: the IOMMU is on by default"
        if passthrough:
            return "ok", f"{how}; iommu=pt", ""
        return "ok", f"{how}; iommu=pt not set (DMA translated for host devices too)", ""
    if iommu_groups(root)[0] == "ok":
        return (
            "warn",
            "intel_iommu=on is not on the kernel command line; the IOMMU is on only by this "
            "kernel's default, which a kernel update can change",
            fix,
        )
    return "fail", "intel_iommu=on is not on the kernel command line", fix


def iommu_groups(root: Root) -> tuple[str, str, str]:
    base = root.sys / "kernel/iommu_groups"
    try:
        groups = [g for g in base.iterdir() if g.name.isdigit()]
    except OSError:
        groups = []
    if groups:
        return "ok", f"{len(groups)} IOMMU groups", ""
    return (
        "fail",
        "no IOMMU groups in /sys/kernel/iommu_groups: the IOMMU is off",
        "enable Intel VT-d / AMD-Vi (IOMMU) in the firmware setup, and the kernel flag above",
    )


def vfio_module(root: Root) -> tuple[str, str, str]:
    if (root.sys / "module/vfio_pci").is_dir():
        return "ok", "vfio-pci is loaded", ""
    return (
        "warn",
        "vfio-pci is not loaded",
        "echo vfio-pci > /etc/modules-load.d/vfio-pci.conf && modprobe vfio-pci",
    )


def gpu_binding(root: Root) -> tuple[str, str, str]:
    """Every NVIDIA GPU must be bound to vfio-pci: not nvidia, not nouveau."""
    pci = scan_pci(root)
    if not pci.gpus:
        where = "" if pci.readable else " (/sys/bus/pci/devices not readable)"
        return (
            "fail",
            f"no NVIDIA GPU (vendor 10de, VGA/3D class) on this host{where}",
            "install the GPU, or run host-check on the KVM host that has it",
        )
    parts, fixes, worst = [], [], "ok"
    for gpu in pci.gpus:
        status = _binding_status(gpu)
        worst = max(worst, status, key=STATUS_ORDER.__getitem__)
        group = f", IOMMU group {gpu.iommu_group}" if gpu.iommu_group else ""
        parts.append(f"{gpu.address} ({gpu.device_id}) {gpu.driver or 'no driver'}{group}")
        if status != "ok":
            fixes.append(f"driverctl set-override {gpu.address} vfio-pci")
    return worst, "; ".join(parts), " && ".join(fixes)


def _binding_status(gpu: PciGpu) -> str:
    if gpu.driver == "vfio-pci":
        return "ok"
    return "warn" if gpu.driver is None else "fail"


def iommu_isolation(root: Root) -> tuple[str, str, str]:
    """vfio takes a whole IOMMU group: every other endpoint in a GPU's group must be on vfio too.

    Otherwise QEMU stops with "group N is not viable". The usual culprit is the GPU's own HDMI
    audio function left to snd_hda_intel; next, a board without ACS sharing the group.
    """
    gpus = [g for g in scan_pci(root).gpus if g.iommu_group is not None]
    if not gpus:
        return "skip", "no NVIDIA GPU in an IOMMU group", ""
    blockers: list[tuple[str, str, str]] = []
    for group in sorted({g.iommu_group for g in gpus}):
        members = root.sys / "kernel/iommu_groups" / group / "devices"
        for member in sorted(members.iterdir()) if members.is_dir() else ():
            driver = _driver(member)
            is_bridge = (_read(member / "class") or "").startswith(BRIDGE_CLASS)
            if driver not in VFIO_SAFE_DRIVERS and not is_bridge:
                blockers.append((group, member.name, driver))
    if not blockers:
        groups = ", ".join(sorted({g.iommu_group for g in gpus}))
        return "ok", f"GPU IOMMU groups {groups}: every endpoint is free for vfio", ""
    detail = "; ".join(f"group {g}: {a} bound to {d}" for g, a, d in blockers)
    fix = " && ".join(f"driverctl set-override {a} vfio-pci" for _, a, _ in blockers)
    return "fail", detail, fix + " (or move the GPU to a slot with its own IOMMU group)"


def _driver(device: Path) -> str | None:
    link = device / "driver"
    return link.resolve().name if link.exists() else None


def udev_rule(root: Root) -> tuple[str, str, str]:
    fix = f"echo '{UDEV_RULE}' > /etc/udev/rules.d/99-vfio.rules && udevadm control --reload"
    directory = root.path(UDEV_RULES_DIR)
    try:
        rules = sorted(directory.glob("*.rules"))
    except OSError:
        rules = []
    for rule in rules:
        for line in (_read(rule) or "").splitlines():
            if 'SUBSYSTEM=="vfio"' in line.replace(" ", "") and not line.lstrip().startswith("#"):
                return "ok", f"{UDEV_RULES_DIR}/{rule.name}: {line.strip()}", ""
    return "warn", f'no SUBSYSTEM=="vfio" rule in {UDEV_RULES_DIR}', fix


def pci_filter(root: Root) -> tuple[str, str, str]:
    """OpenNebula's probe must list NVIDIA devices, or no VM template can get the GPU."""
    fix = (
        f"set :filter: '10de:*' in {PCI_CONF_PATHS[0]} on the front-end, then onehost sync -f "
        "and onehost forceupdate <host>"
    )
    found = [(p, _read(root.path(p))) for p in PCI_CONF_PATHS]
    found = [(p, text) for p, text in found if text is not None]
    if not found:
        return "warn", f"no pci.conf under {' or '.join(PCI_CONF_PATHS)}", fix
    verdicts = []
    for path, text in found:
        wanted = pciconf.filters(pciconf.parse(text))
        nvidia = [f for f in wanted if pciconf.matches_vendor(f)]
        verdicts.append((path, wanted, nvidia))
    path, wanted, nvidia = verdicts[0]
    shown = ", ".join(wanted) or "none"
    if not nvidia:
        return "fail", f"{path}: :filter: ({shown}) leaves NVIDIA (10de) out", fix
    stale = [p for p, _, n in verdicts[1:] if not n]
    if stale:
        return "warn", f"{path} lists {', '.join(nvidia)} but {stale[0]} does not", fix
    return "ok", f"{path}: :filter: {shown}", ""
