"""Host checks for what GPU passthrough needs beyond the IOMMU: each `(root) -> (status, detail,
hint)`, the shape agent/host/checks.py runs.

- interrupt remapping: VFIO refuses to assign a device without it ("No interrupt remapping
  support. Use the module param allow_unsafe_interrupts ...", vfio_iommu_type1); the GPU's MSI
  interrupts would otherwise not reach the guest (NVML error 11 in the VM);
- NVSwitch binding: an HGX board's NVSwitches go to the VM with its GPUs (full passthrough) or
  to the Fabric Manager service VM (shared NVSwitch mode); left to the host's nvidia driver the
  guests' fabric never completes (CUDA error 802);
- /dev/kvm: no KVM, no VM;
- vfio claims the GPU early: bound now is not enough, after a reboot nvidia or nouveau takes the
  GPU first unless vfio-pci is told to (vfio-pci.ids, a modprobe softdep, the initramfs, a
  driverctl override);
- 64-bit MMIO above 4G: an H100/H200's BAR1 is 64-128 GiB and must be placed above 4 GiB
  (firmware "Above 4G decoding"); the kernel says "can't assign; no space" otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.gpu.pci import PciGpu, kernel_errors, scan_pci
from agent.paths import Root

Result = tuple[str, str, str]
FOUR_GIB = 4 * 2**30
LARGE_BAR = 2**30  # BARs this big only fit above 4 GiB
UNSAFE_INTERRUPTS = "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"
HOST_KERNEL_LOGS = ("/var/log/kern.log", "/var/log/dmesg")
_IR_OFF = re.compile(r"(?:^|\s)(?:intremap=off|nointremap|intremap=no_x2apic_optout)(?:\s|$)")
_IR_ON_LOG = re.compile(r"Enabled IRQ remapping|Interrupt remapping enabled", re.IGNORECASE)
_VFIO_NO_IR = re.compile(r"No interrupt remapping support")
_SOFTDEP = re.compile(r"^\s*softdep\s+(nvidia|nouveau|nvidiafb|drm)\S*\s+pre:.*\bvfio[-_]pci\b")
_VFIO_IDS = re.compile(r"\bvfio[-_]pci\.ids=(\S+)|^\s*options\s+vfio[-_]pci\s+.*\bids=(\S+)")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _log_lines(root: Root, pattern: re.Pattern[str]) -> list[str]:
    hits: list[str] = []
    for name in HOST_KERNEL_LOGS:
        hits += [
            line.strip()
            for line in (_read(root.path(name)) or "").splitlines()
            if pattern.search(line)
        ]
    return hits


def interrupt_remapping(root: Root) -> Result:
    fix = (
        "enable interrupt remapping: VT-d/AMD-Vi with interrupt remapping in the firmware, no "
        "intremap=off on the kernel command line (x2APIC needs it too); "
        "allow_unsafe_interrupts=1 is only a workaround that lets a guest forge interrupts"
    )
    cmdline = _read(root.proc / "cmdline") or ""
    if _IR_OFF.search(cmdline):
        return (
            "fail",
            f"interrupt remapping switched off: {_IR_OFF.search(cmdline).group(0).strip()}",
            fix,
        )
    refused = _log_lines(root, _VFIO_NO_IR)
    unsafe = (_read(root.path(UNSAFE_INTERRUPTS)) or "").strip() in ("Y", "1")
    if refused and not unsafe:
        return "fail", f"VFIO refuses device assignment: {refused[-1]}", fix
    interrupts = _read(root.proc / "interrupts") or ""
    if re.search(r"\bIR-(?:PCI-MSI|IO-APIC)", interrupts) or _log_lines(root, _IR_ON_LOG):
        return "ok", "interrupt remapping is active (IR-* interrupt domains)", ""
    if unsafe:
        return (
            "warn",
            "vfio_iommu_type1 allow_unsafe_interrupts=Y: passthrough works without interrupt "
            "remapping, but a guest can inject interrupts into the host",
            fix,
        )
    return "warn", "could not confirm interrupt remapping (no IR-* domain in /proc/interrupts)", fix


def nvswitch_binding(root: Root) -> Result:
    pci = scan_pci(root)
    if not pci.nvswitches:
        return "skip", "no NVSwitch on this host (not an HGX board): no NVLink fabric", ""
    drivers = {a: _driver(root.sys / "bus/pci/devices" / a) for a in pci.nvswitches}
    shown = "; ".join(f"{a} {d or 'no driver'}" for a, d in drivers.items())
    fix = (
        "full passthrough: bind the NVSwitches to vfio-pci and give them to the VM together with "
        "all GPUs of the board (the VM runs nvidia-fabricmanager); shared NVSwitch mode: give "
        "them to the Fabric Manager service VM; `driverctl set-override <address> vfio-pci`"
    )
    values = set(drivers.values())
    if values == {"vfio-pci"}:
        return (
            "ok",
            f"NVSwitches on vfio-pci ({shown}): full passthrough or shared NVSwitch mode "
            "(the VM or the service VM that gets them runs the Fabric Manager)",
            "",
        )
    if "nvidia" in values:
        return (
            "fail",
            f"NVSwitches held by the host's nvidia driver ({shown}): the fabric of GPUs passed "
            "to VMs never completes (CUDA error 802) unless this host runs the Fabric Manager "
            "for vGPU",
            fix,
        )
    return "warn", f"NVSwitches not all bound to vfio-pci ({shown})", fix


def kvm_device(root: Root) -> Result:
    if root.path("/dev/kvm").exists():
        return "ok", "/dev/kvm present", ""
    vendor = "kvm_amd" if "AuthenticAMD" in (_read(root.proc / "cpuinfo") or "") else "kvm_intel"
    loaded = (root.sys / "module" / vendor).is_dir()
    why = f"{vendor} is loaded" if loaded else f"{vendor} is not loaded"
    return (
        "fail",
        f"no /dev/kvm ({why}): VMs cannot run with hardware virtualisation",
        f"enable VT-x/AMD-V in the firmware, then `modprobe {vendor}`",
    )


def vfio_early_claim(root: Root) -> Result:
    gpus = scan_pci(root).gpus
    if not gpus:
        return "skip", "no NVIDIA GPU on this host", ""
    ways = _early_claims(root, gpus)
    fix = (
        "make vfio-pci claim the GPUs at boot before nvidia/nouveau: "
        "`driverctl set-override <address> vfio-pci`, or `options vfio-pci ids=10de:<device>` "
        "plus `softdep nvidia pre: vfio-pci` (and nouveau) in /etc/modprobe.d/vfio.conf and "
        "vfio-pci in /etc/initramfs-tools/modules, then `update-initramfs -u`"
    )
    if ways:
        return "ok", "vfio-pci claims the GPUs early: " + "; ".join(ways), ""
    return (
        "warn",
        "nothing makes vfio-pci claim the GPUs at boot (no vfio-pci.ids, modprobe softdep, "
        "initramfs entry or driverctl override): after a reboot nvidia or nouveau may take them",
        fix,
    )


def _early_claims(root: Root, gpus: tuple[PciGpu, ...]) -> list[str]:
    ways = []
    ids = {f"10de:{g.device_id.removeprefix('0x')}".lower() for g in gpus}
    texts = [("/proc/cmdline", _read(root.proc / "cmdline") or "")]
    texts += [(_shown(root, p), _read(p) or "") for p in _files(root, "/etc/modprobe.d", "*.conf")]
    for name, text in texts:
        for line in text.splitlines():
            match = _VFIO_IDS.search(line)
            claimed = (
                {i.lower() for i in (match.group(1) or match.group(2)).split(",")}
                if match
                else set()
            )
            if claimed & ids:
                ways.append(f"{name}: vfio-pci ids {','.join(sorted(claimed & ids))}")
            if _SOFTDEP.search(line):
                ways.append(f"{name}: {line.strip()}")
    initramfs = [("/etc/initramfs-tools/modules", _read(root.path("/etc/initramfs-tools/modules")))]
    initramfs += [(_shown(root, p), _read(p)) for p in _files(root, "/etc/dracut.conf.d", "*.conf")]
    for name, text in initramfs:
        if text and any(
            "vfio" in line and not line.lstrip().startswith("#") for line in text.splitlines()
        ):
            ways.append(f"{name}: vfio-pci in the initramfs")
    overrides = {p.name for p in _files(root, "/etc/driverctl.d", "*")}
    for gpu in gpus:
        if f"pci-{gpu.address}" in overrides:
            ways.append(f"driverctl override for {gpu.address}")
    return ways


def mmio_above_4g(root: Root) -> Result:
    fix = (
        'enable "Above 4G decoding" (and Resizable BAR support) in the host firmware; give '
        "the VM a 64-bit PCI hole large enough for the GPUs' BARs (q35 + UEFI firmware)"
    )
    gpus = scan_pci(root).gpus
    if not gpus:
        return "skip", "no NVIDIA GPU on this host", ""
    _, lines = kernel_errors(root)
    bar_errors = [x for x in lines if "BAR" in x and any(g.address in x for g in gpus)]
    problems, placed = list(bar_errors), []
    for gpu in gpus:
        for bar in gpu.bars:
            if bar.is_64bit and bar.size >= LARGE_BAR:
                if bar.start == 0:
                    problems.append(f"{gpu.address} BAR {bar.index} ({_gib(bar.size)}) unassigned")
                elif bar.start >= FOUR_GIB:
                    placed.append(
                        f"{gpu.address} BAR {bar.index} {_gib(bar.size)} at {bar.start:#x}"
                    )
    if problems:
        return "fail", "; ".join(problems), fix
    if placed:
        return "ok", "large BARs above 4 GiB: " + "; ".join(placed), ""
    return "warn", "no large 64-bit GPU BAR found in sysfs to confirm the MMIO layout", fix


def _shown(root: Root, path: Path) -> str:
    return "/" + str(path.relative_to(root.prefix))


def _gib(size: int) -> str:
    return f"{size / 2**30:g} GiB"


def _driver(device: Path) -> str | None:
    link = device / "driver"
    return link.resolve().name if link.exists() else None


def _files(root: Root, directory: str, pattern: str) -> list[Path]:
    try:
        return sorted(p for p in root.path(directory).glob(pattern) if p.is_file())
    except OSError:
        return []


PASSTHROUGH_CHECKS = (
    kvm_device,
    interrupt_remapping,
    vfio_early_claim,
    mmio_above_4g,
    nvswitch_binding,
)
