"""`fl-agent host-check` on fixture KVM host trees (/proc, /sys, /etc, OpenNebula's pci.conf)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent import cli
from agent.host import check_host, pciconf
from agent.host.passthrough import PASSTHROUGH_CHECKS
from agent.paths import Root

FRONTEND_CONF = "var/lib/one/remotes/etc/im/kvm-probes.d/pci.conf"
SYNCED_CONF = "var/tmp/one/etc/im/kvm-probes.d/pci.conf"
GOOD_CONF = """\
# OpenNebula PCI probe filter
:filter: '10de:*'   # all NVIDIA
:short_address: []
:device_name: []
:nvidia_vendors: ['10de']
"""
DEFAULT_CONF = ":filter: '0:0'\n:short_address: []\n:device_name: []\n"


NVIDIA, INTEL = "0x10de", "0x8086"
H100 = ("0000:e1:00.0", NVIDIA, "0x2330", "0x030200")
H100_AUDIO = ("0000:e1:00.1", NVIDIA, "0x22a3", "0x040300")  # HDMI audio: not a GPU
ROOT_PORT = ("0000:00:01.0", INTEL, "0x1901", "0x060400")


def dev(ident, driver: str | None, group: int | None = 1) -> tuple:
    return (*ident, driver, group)


@dataclass
class Host:
    """A KVM host as files: everything host-check reads."""

    cmdline: str = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt"
    cpu: str = "GenuineIntel"
    groups: int = 4
    vfio_loaded: bool = True
    # (address, vendor, device, class, driver or None, IOMMU group or None)
    devices: list[tuple] = field(
        default_factory=lambda: [
            dev(ROOT_PORT, "pcieport"),
            dev(H100, "vfio-pci"),
            dev(H100_AUDIO, "vfio-pci"),
        ]
    )
    udev: str | None = 'SUBSYSTEM=="vfio", GROUP="kvm", MODE="0666"\n'
    pci_conf: str | None = GOOD_CONF
    synced_conf: str | None = None
    kvm: bool = True
    interrupts: str = "  24:  0  IR-PCI-MSI 524288-edge  vfio-msix[0](0000:e1:00.0)\n"
    modprobe: str | None = "options vfio-pci ids=10de:2330\nsoftdep nvidia pre: vfio-pci\n"
    # GPU BAR1 (index 1) start; 0: the kernel could not place it
    bar1_start: int = 0x38000000000

    def build(self, base: Path) -> Root:
        _write(base / "proc/cmdline", self.cmdline + "\n")
        _write(base / "proc/cpuinfo", f"processor\t: 0\nvendor_id\t: {self.cpu}\n")
        groups = base / "sys/kernel/iommu_groups"
        groups.mkdir(parents=True)
        for n in range(self.groups):
            (groups / str(n) / "devices").mkdir(parents=True)
        if self.vfio_loaded:
            (base / "sys/module/vfio_pci/parameters").mkdir(parents=True)
        (base / "sys/bus/pci/devices").mkdir(parents=True)
        _device(base, ("0000:00:00.0", INTEL, "0x3e30", "0x060000", None, 0))
        for device in self.devices:
            _device(base, device)
        if self.udev is not None:
            _write(base / "etc/udev/rules.d/99-vfio.rules", self.udev)
        if self.pci_conf is not None:
            _write(base / FRONTEND_CONF, self.pci_conf)
        if self.synced_conf is not None:
            _write(base / SYNCED_CONF, self.synced_conf)
        if self.kvm:
            _write(base / "dev/kvm", "")
        _write(base / "proc/interrupts", "           CPU0\n" + self.interrupts)
        if self.modprobe is not None:
            _write(base / "etc/modprobe.d/vfio.conf", self.modprobe)
        for address, *_ in (d for d in self.devices if d[3].startswith("0x0302")):
            _write(base / "sys/bus/pci/devices" / address / "resource", _gpu_bars(self.bar1_start))
        return Root(base)


def _gpu_bars(bar1_start: int) -> str:
    """An H100's BARs as sysfs `resource` lists them: BAR0 16 MiB, BAR1 128 GiB and BAR3 32 MiB
    (the 64-bit ones take two slots); an unplaced BAR reads start 0."""

    def line(start: int, size: int, flags: int) -> str:
        end = start + size - 1 if start else size - 1
        return f"0x{start:016x} 0x{end:016x} 0x{flags:016x}"

    empty = "0x0000000000000000 0x0000000000000000 0x0000000000000000"
    lines = [
        line(0xE2000000, 16 * 2**20, 0x40200),
        line(bar1_start, 128 * 2**30, 0x14220C),
        empty,
        line(0x3A000000000, 32 * 2**20, 0x14220C),
        empty,
        empty,
    ]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _device(base: Path, device: tuple) -> None:
    """A sysfs PCI function; in its IOMMU group's devices/ when the group exists."""
    address, vendor, device_id, klass, driver, group = device
    entry = base / "sys/bus/pci/devices" / address
    entry.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("device", device_id), ("class", klass)):
        (entry / name).write_text(value + "\n")
    (entry / "numa_node").write_text("-1\n")
    if driver:
        target = base / "sys/bus/pci/drivers" / driver
        target.mkdir(parents=True, exist_ok=True)
        (entry / "driver").symlink_to(target)
    group_dir = base / "sys/kernel/iommu_groups" / str(group)
    if group is not None and group_dir.is_dir():
        (entry / "iommu_group").symlink_to(group_dir)
        (group_dir / "devices" / address).symlink_to(entry)


def run(tmp_path: Path, host: Host):
    report = check_host(host.build(tmp_path))
    return report, {s.name: s for s in report.stages}


def test_a_good_host_passes(tmp_path):
    report, stages = run(tmp_path, Host())
    assert report.verdict == "PASSED", report.to_dict()
    assert list(stages) == [
        "iommu_cmdline",
        "iommu_groups",
        "vfio_module",
        "gpu_binding",
        "iommu_isolation",
        "udev_rule",
        "pci_filter",
        "kvm_device",
        "interrupt_remapping",
        "vfio_early_claim",
        "mmio_above_4g",
        "nvswitch_binding",
    ]
    assert all(s.status in ("ok", "skip") and s.hint == "" for s in report.stages)
    assert stages["gpu_binding"].detail == "0000:e1:00.0 (0x2330) vfio-pci, IOMMU group 1"
    assert stages["iommu_isolation"].detail.startswith("GPU IOMMU groups 1:")
    assert "4 IOMMU groups" in stages["iommu_groups"].detail


def test_iommu_off(tmp_path):
    report, stages = run(tmp_path, Host(cmdline="BOOT_IMAGE=/vmlinuz ro quiet", groups=0))
    assert report.verdict == "FAILED"
    assert stages["iommu_cmdline"].status == "fail"
    assert "intel_iommu=on iommu=pt" in stages["iommu_cmdline"].hint
    assert stages["iommu_groups"].status == "fail"
    assert "VT-d" in stages["iommu_groups"].hint


def test_iommu_switched_off_explicitly(tmp_path):
    _, stages = run(tmp_path, Host(cmdline="ro intel_iommu=on iommu=off"))
    assert stages["iommu_cmdline"].status == "fail"
    assert "iommu=off" in stages["iommu_cmdline"].detail


def test_intel_iommu_on_only_by_kernel_default_warns(tmp_path):
    report, stages = run(tmp_path, Host(cmdline="ro quiet"))
    assert stages["iommu_cmdline"].status == "warn"
    assert report.verdict == "PASSED_WITH_WARNINGS"


def test_amd_iommu_is_on_by_default(tmp_path):
    _, stages = run(tmp_path, Host(cmdline="ro quiet", cpu="AuthenticAMD"))
    assert stages["iommu_cmdline"].status == "ok"
    assert "AMD" in stages["iommu_cmdline"].detail


def test_gpu_bound_to_nvidia_instead_of_vfio(tmp_path):
    a100 = ("0000:41:00.0", NVIDIA, "0x20b5", "0x030200")
    devices = [dev(H100, "vfio-pci"), dev(a100, "nvidia", group=2)]
    report, stages = run(tmp_path, Host(devices=devices))
    assert report.verdict == "FAILED"
    binding = stages["gpu_binding"]
    assert binding.status == "fail"
    assert "0000:41:00.0 (0x20b5) nvidia" in binding.detail
    assert binding.hint == "driverctl set-override 0000:41:00.0 vfio-pci"


def test_unbound_gpu_warns(tmp_path):
    report, stages = run(tmp_path, Host(devices=[dev(H100, None)]))
    assert stages["gpu_binding"].status == "warn"
    assert "no driver" in stages["gpu_binding"].detail
    assert report.verdict == "PASSED_WITH_WARNINGS"


def test_no_gpus_fails(tmp_path):
    report, stages = run(tmp_path, Host(devices=[dev(ROOT_PORT, "pcieport")]))
    assert report.verdict == "FAILED"
    assert stages["gpu_binding"].status == "fail"
    assert "no NVIDIA GPU" in stages["gpu_binding"].detail


def test_pci_conf_without_nvidia(tmp_path):
    report, stages = run(tmp_path, Host(pci_conf=DEFAULT_CONF))
    assert report.verdict == "FAILED"
    assert stages["pci_filter"].status == "fail"
    assert "0:0" in stages["pci_filter"].detail and "10de:*" in stages["pci_filter"].hint


def test_pci_conf_missing_or_stale_copy_warns(tmp_path):
    _, stages = run(tmp_path / "a", Host(pci_conf=None))
    assert stages["pci_filter"].status == "warn"
    _, stages = run(tmp_path / "b", Host(synced_conf=DEFAULT_CONF))
    assert stages["pci_filter"].status == "warn"
    assert (
        "var/tmp/one" in stages["pci_filter"].detail and "onehost sync" in stages["pci_filter"].hint
    )


def test_missing_vfio_module_and_udev_rule_warn(tmp_path):
    udev = '# SUBSYSTEM=="vfio", GROUP="kvm"\n'
    report, stages = run(tmp_path, Host(vfio_loaded=False, udev=udev))
    assert (
        stages["vfio_module"].status == "warn" and "modprobe vfio-pci" in stages["vfio_module"].hint
    )
    assert stages["udev_rule"].status == "warn" and "99-vfio.rules" in stages["udev_rule"].hint
    assert report.verdict == "PASSED_WITH_WARNINGS"


@pytest.mark.parametrize(
    ("text", "expected", "nvidia"),
    [
        (GOOD_CONF, ["10de:*"], True),
        (DEFAULT_CONF, ["0:0"], False),
        (":filter: '8086::0c03,10de:2330'\n", ["8086::0c03", "10de:2330"], True),
        (":filter: ['8086:*', \"10DE:*\"]\n", ["8086:*", "10DE:*"], True),
        (
            ":filter:\n  - '8086:*'\n  - '0x10de:*'  # NVIDIA\n:device_name: []\n",
            ["8086:*", "0x10de:*"],
            True,
        ),
        (":filter: '*:*'\n", ["*:*"], True),
        ("# :filter: '10de:*'\n:filter: '1002:*'\n", ["1002:*"], False),
        (":short_address: ['10de']\n", [], False),
    ],
)
def test_pci_conf_shapes(text, expected, nvidia):
    filters = pciconf.filters(pciconf.parse(text))
    assert filters == expected
    assert any(pciconf.matches_vendor(f) for f in filters) is nvidia


def test_cli_json_and_exit_codes(tmp_path, capsys):
    good = Host().build(tmp_path / "good")
    assert cli.main(["--root", str(good.prefix), "host-check", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "PASSED"
    assert set(data["stages"][0]) == {"name", "status", "detail", "hint", "duration_ms"}

    bad = Host(devices=[dev(H100, "nouveau")]).build(tmp_path / "bad")
    assert cli.main(["--root", str(bad.prefix), "host-check"]) == 1
    text = capsys.readouterr().out
    assert (
        "[FAIL] gpu_binding" in text and "FIX: driverctl set-override 0000:e1:00.0 vfio-pci" in text
    )
    assert text.rstrip().endswith("FAILED")


def test_audio_function_left_to_the_host_blocks_the_group(tmp_path):
    devices = [dev(ROOT_PORT, "pcieport"), dev(H100, "vfio-pci"), dev(H100_AUDIO, "snd_hda_intel")]
    report, stages = run(tmp_path, Host(devices=devices))
    assert report.verdict == "FAILED"
    assert stages["gpu_binding"].status == "ok"  # the GPU itself is fine
    isolation = stages["iommu_isolation"]
    assert isolation.status == "fail"
    assert isolation.detail == "group 1: 0000:e1:00.1 bound to snd_hda_intel"
    assert isolation.hint.startswith("driverctl set-override 0000:e1:00.1 vfio-pci")


def test_a_shared_group_without_acs_fails(tmp_path):
    nic = ("0000:e2:00.0", INTEL, "0x1533", "0x020000")
    devices = [dev(H100, "vfio-pci"), dev(H100_AUDIO, "vfio-pci"), dev(nic, "igb")]
    _, stages = run(tmp_path, Host(devices=devices))
    assert stages["iommu_isolation"].status == "fail"
    assert "0000:e2:00.0 bound to igb" in stages["iommu_isolation"].detail


# --- passthrough prerequisites (agent/host/passthrough.py) ---

CHECK = {c.__name__: c for c in PASSTHROUGH_CHECKS}


def test_large_bar_placement(tmp_path):
    _, stages = run(tmp_path / "ok", Host())
    assert stages["mmio_above_4g"].status == "ok"
    assert "0000:e1:00.0 BAR 1 128 GiB at 0x38000000000" in stages["mmio_above_4g"].detail
    _, stages = run(tmp_path / "bad", Host(bar1_start=0))
    assert stages["mmio_above_4g"].status == "fail"
    assert "BAR 1 (128 GiB) unassigned" in stages["mmio_above_4g"].detail
    assert "Above 4G decoding" in stages["mmio_above_4g"].hint


def test_kernel_68_bar_line_fails_the_mmio_check(tmp_path):
    host = Host()
    root = host.build(tmp_path)
    line = "pci 0000:e1:00.0: BAR 1 [mem size 0x2000000000 64bit pref]: can't assign; no space"
    _write(tmp_path / "var/log/kern.log", f"Nov 30 10:00:00 host kernel: {line}\n")
    status, detail, _ = CHECK["mmio_above_4g"](root)
    assert status == "fail" and line in detail


def test_no_kvm(tmp_path):
    report, stages = run(tmp_path, Host(kvm=False))
    assert report.verdict == "FAILED" and stages["kvm_device"].status == "fail"
    assert "kvm_intel is not loaded" in stages["kvm_device"].detail


@pytest.mark.parametrize(
    ("host", "status", "needle"),
    [
        (Host(), "ok", "IR-* interrupt domains"),
        (Host(cmdline="ro intel_iommu=on iommu=pt intremap=off"), "fail", "intremap=off"),
        (Host(interrupts="  24:  0  PCI-MSI 524288-edge  xhci\n"), "warn", "could not confirm"),
    ],
)
def test_interrupt_remapping(tmp_path, host, status, needle):
    _, stages = run(tmp_path, host)
    assert stages["interrupt_remapping"].status == status
    assert needle in stages["interrupt_remapping"].detail


def test_vfio_refusal_in_the_log_fails(tmp_path):
    host = Host(interrupts="")
    root = host.build(tmp_path)
    _write(
        tmp_path / "var/log/kern.log",
        "kernel: vfio_iommu_type1_attach_group: No interrupt remapping support.  Use the module "
        'param "allow_unsafe_interrupts" to enable VFIO IOMMU support on this platform\n',
    )
    (tmp_path / "sys/module/vfio_iommu_type1/parameters").mkdir(parents=True)
    _write(tmp_path / "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "N\n")
    check = CHECK["interrupt_remapping"]
    status, detail, hint = check(root)
    assert status == "fail" and "No interrupt remapping support" in detail
    assert "allow_unsafe_interrupts=1 is only a workaround" in hint
    _write(tmp_path / "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n")
    assert check(root)[0] == "warn"


@pytest.mark.parametrize(
    ("modprobe", "extra", "status"),
    [
        ("options vfio-pci ids=10de:2330\n", {}, "ok"),
        ("softdep nouveau pre: vfio-pci\n", {}, "ok"),
        (None, {"etc/initramfs-tools/modules": "vfio\nvfio_pci\n"}, "ok"),
        (None, {"etc/driverctl.d/pci-0000:e1:00.0": "vfio-pci\n"}, "ok"),
        ("options vfio-pci ids=10de:1db6\n", {}, "warn"),  # another GPU's id
        (None, {}, "warn"),
    ],
)
def test_vfio_claims_the_gpu_early(tmp_path, modprobe, extra, status):
    host = Host(modprobe=modprobe)
    root = host.build(tmp_path)
    for name, text in extra.items():
        _write(tmp_path / name, text)
    check = CHECK["vfio_early_claim"]
    assert check(root)[0] == status


NVSWITCH = ("0000:05:00.0", NVIDIA, "0x22a3", "0x068000")


@pytest.mark.parametrize(
    ("driver", "status"), [("vfio-pci", "ok"), ("nvidia", "fail"), (None, "warn")]
)
def test_nvswitch_binding(tmp_path, driver, status):
    devices = [dev(ROOT_PORT, "pcieport"), dev(H100, "vfio-pci"), dev(NVSWITCH, driver, 2)]
    _, stages = run(tmp_path, Host(devices=devices))
    assert stages["nvswitch_binding"].status == status
    assert stages["nvswitch_binding"].detail.startswith("NVSwitch") or status == "warn"


def test_no_nvswitch_is_skipped(tmp_path):
    _, stages = run(tmp_path, Host())
    assert stages["nvswitch_binding"].status == "skip"
