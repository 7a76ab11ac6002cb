"""Static checks of the appliance files: units, the one-context hook, the Packer build, scripts.

The tools are the real ones from Debian (scripts/setup.sh installs them): systemd-analyze,
shellcheck and Packer 1.6.6. Booting the image is tests/test_appliance.py.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
HOOK = REPO / "context.d" / "net-90-fl-agent"
REPORT_READY = REPO / "context.d" / "net-99-report-ready"
PACKER = REPO / "packer"
SCRIPTS = sorted((PACKER / "scripts").glob("*.sh"))
ZERO_SHA256 = "sha256:" + "0" * 64

# one-context.service as the one-context package ships it (addon-context-linux
# src/usr/lib/systemd/system/one-context.service##systemd.one), reduced to its ordering.
ONE_CONTEXT_UNIT = """\
[Unit]
Description=OpenNebula contextualization script (stand-in)
After=multi-user.target
ConditionPathExists=!/var/run/one-context/context.sh.network

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
"""


def unit_settings(path: Path) -> dict[str, list[str]]:
    """`Key` -> every value it is given (systemd allows repeats), across sections."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def words(settings: dict[str, list[str]], key: str) -> set[str]:
    return {w for value in settings.get(key, []) for w in value.split()}


# --- units ---


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A root with the distribution's units, ours enabled, and one-context's unit enabled."""
    root = tmp_path_factory.mktemp("unit-root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in ("lib", "bin", "sbin"):
        (root / name).symlink_to(f"usr/{name}")
    (root / "usr/bin").mkdir(exist_ok=True)
    shutil.copy2("/bin/true", root / "usr/bin/true")
    nft = root / "usr/sbin/nft"
    nft.parent.mkdir(parents=True, exist_ok=True)
    nft.write_text("#!/bin/sh\n")
    nft.chmod(0o755)
    for name in ("fl-agent", "python"):
        agent = root / "opt/fl-agent/venv/bin" / name
        agent.parent.mkdir(parents=True, exist_ok=True)
        agent.write_text("#!/bin/sh\n")
        agent.chmod(0o755)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in UNITS.iterdir():
        if unit.is_dir():  # drop-in directories
            shutil.copytree(unit, system / unit.name)
        else:
            shutil.copy2(unit, system / unit.name)
    (system / "one-context.service").write_text(ONE_CONTEXT_UNIT)
    subprocess.run(
        [
            "systemctl",
            f"--root={root}",
            "enable",
            "one-context.service",
            "fl-agent.service",
            "fl-agent-revalidate.timer",
            "fl-agent-firewall.service",
            "fl-agent-onegate-resend.timer",
        ],
        check=True,
        capture_output=True,
    )
    return root


def test_units_verify_clean_with_one_context_enabled(unit_root):
    """No warning, no ordering cycle (one-context.service is After=multi-user.target)."""
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={unit_root}",
            "multi-user.target",
            "fl-agent.service",
            "fl-agent-revalidate.service",
            "fl-agent-revalidate.timer",
            "fl-agent-firewall.service",
            "fl-agent-onegate-resend.service",
            "fl-agent-onegate-resend.timer",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    system = unit_root / "etc/systemd/system"
    assert (system / "multi-user.target.wants/fl-agent.service").is_symlink()
    assert (system / "timers.target.wants/fl-agent-revalidate.timer").is_symlink()
    assert (system / "sysinit.target.wants/fl-agent-firewall.service").is_symlink()


def test_firewall_unit_loads_only_its_own_table_before_the_network():
    unit = unit_settings(UNITS / "fl-agent-firewall.service")
    assert unit["ExecStart"] == ["/usr/sbin/nft -f /etc/fl-agent/firewall.nft"]
    assert unit["ExecStop"] == ["/usr/sbin/nft delete table inet fl_agent"]  # not flush ruleset
    assert "network-pre.target" in words(unit, "Before") & words(unit, "Wants")
    assert unit["WantedBy"] == ["sysinit.target"]
    assert unit["ConditionPathExists"] == ["!/etc/fl-agent/firewall.disabled"]


def test_firewall_ruleset_parses_and_touches_only_its_table():
    """`nft -c` parses and checks the ruleset without committing anything."""
    ruleset = UNITS / "fl-agent-firewall.nft"
    result = subprocess.run(["nft", "-c", "-f", str(ruleset)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = ruleset.read_text()
    tables = set(re.findall(r"^(?:delete )?table (\w+ \w+)", text, re.MULTILINE))
    assert tables == {"inet fl_agent"}
    assert "flush ruleset" not in text


def test_boot_unit_runs_once_after_context_engine_and_network():
    from agent.cli import build_parser

    unit = unit_settings(UNITS / "fl-agent.service")
    after, wants = words(unit, "After"), words(unit, "Wants")
    for dependency in ("one-context.service", "docker.service", "network-online.target"):
        assert dependency in after and dependency in wants
    # Requires= would propagate the toolkit install's docker restart to the running boot.
    assert not unit.get("Requires") and not unit.get("BindsTo") and not unit.get("PartOf")
    assert unit["Type"] == ["oneshot"] and unit["RemainAfterExit"] == ["yes"]
    command = unit["ExecStart"][0].split()
    assert command[0] == "/opt/fl-agent/venv/bin/fl-agent" and len(unit["ExecStart"]) == 1
    args = build_parser().parse_args(command[1:])
    assert args.command == "boot" and not args.periodic and args.lock_wait > 0
    assert "3" in words(unit, "SuccessExitStatus")
    assert unit["TimeoutStartSec"] and unit["TimeoutStartSec"][0] not in ("0", "infinity")
    assert unit.get("Restart", ["no"]) == ["no"]
    assert unit["StandardOutput"] == ["journal"] and unit["StandardError"] == ["journal"]
    assert unit["WantedBy"] == ["multi-user.target"]


def test_revalidate_runs_the_idempotent_boot_after_the_boot_unit():
    from agent.cli import build_parser

    service = unit_settings(UNITS / "fl-agent-revalidate.service")
    timer = unit_settings(UNITS / "fl-agent-revalidate.timer")
    assert "fl-agent.service" in words(service, "After")
    command = service["ExecStart"][0].split()
    assert command[0] == "/opt/fl-agent/venv/bin/fl-agent"
    args = build_parser().parse_args(command[1:])
    assert args.command == "boot" and args.periodic and args.lock_wait > 0
    assert "3" in words(service, "SuccessExitStatus") and service["TimeoutStartSec"]
    assert timer["OnUnitActiveSec"] and timer["OnBootSec"]
    assert timer["WantedBy"] == ["timers.target"]


def test_resend_timer_flushes_the_queue_every_45_s_while_it_holds_a_report():
    from agent.onegate import queue_dir
    from agent.paths import Root

    service = unit_settings(UNITS / "fl-agent-onegate-resend.service")
    timer = unit_settings(UNITS / "fl-agent-onegate-resend.timer")
    assert service["ExecStart"] == ["/opt/fl-agent/venv/bin/python -m agent.onegate flush"]
    assert service["ConditionPathExistsGlob"] == [f"{queue_dir(Root())}/*.json"]
    assert "3" in words(service, "SuccessExitStatus") and service["TimeoutStartSec"]
    # the phase is the VM's boot time: no random delay that would change from tick to tick
    assert timer["OnBootSec"] == ["45s"] and timer["OnUnitInactiveSec"] == ["45s"]
    assert "RandomizedDelaySec" not in timer and timer["WantedBy"] == ["timers.target"]
    assert "fl-agent-onegate-resend.timer" in (REPO / "packer/scripts/40-agent.sh").read_text()


def test_watch_unit_verifies_clean_enabled(unit_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(unit_root, root, symlinks=True)
    subprocess.run(
        ["systemctl", f"--root={root}", "enable", "fl-agent-watch.service"],
        check=True,
        capture_output=True,
    )
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            f"--root={root}",
            "multi-user.target",
            "fl-agent-watch.service",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    assert (root / "etc/systemd/system/multi-user.target.wants/fl-agent-watch.service").is_symlink()


def test_watch_unit_is_long_running_and_always_restarted_after_the_boot_unit():
    """The `watch` subcommand lands with the watch loop: here the unit's own contract."""
    unit = unit_settings(UNITS / "fl-agent-watch.service")
    assert unit["Type"] == ["simple"] and unit["Restart"] == ["always"]
    assert unit["RestartSec"] and unit["RestartSec"][0] not in ("0", "0s")
    assert unit["StartLimitIntervalSec"] == ["0"]  # never stops restarting it
    assert {"fl-agent.service", "docker.service"} <= words(unit, "After")
    assert not unit.get("Requires") and not unit.get("BindsTo")  # an engine restart is no stop
    assert unit["ExecStart"] == ["/opt/fl-agent/venv/bin/fl-agent watch"]
    assert unit["TimeoutStopSec"] and unit["WantedBy"] == ["multi-user.target"]
    assert "RemainAfterExit" not in unit


# --- the one-context hook ---


def test_hook_is_an_executable_network_stage_script_before_report_ready():
    assert HOOK.read_text().startswith("#!/bin/sh\n")
    assert HOOK.stat().st_mode & stat.S_IXUSR
    index = subprocess.run(
        ["git", "ls-files", "-s", str(HOOK.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert index.startswith("100755 ")
    # one-contextd sorts the network stage's scripts in byte order (LC_ALL=C).
    order = sorted([b"net-15-hostname", b"net-99-report-ready", HOOK.name.encode()])
    assert order.index(HOOK.name.encode()) == 1 and HOOK.name.startswith("net-")


@pytest.fixture
def fake_systemctl(tmp_path):
    """A `systemctl` that logs its arguments; `show` answers from a queue of states."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    states = tmp_path / "states"
    script = bin_dir / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>{log}\n'
        'if [ "$1" = show ]; then\n'
        f"  head -n1 {states}; sed -i 1d {states}\n"
        "fi\n"
    )
    script.chmod(0o755)

    def run(*args: str, states_queue: tuple[str, ...] = ("active",)) -> tuple[int, list[str]]:
        states.write_text("".join(f"{s}\n" for s in states_queue))
        log.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        result = subprocess.run([str(HOOK), *args], env=env, capture_output=True, timeout=30)
        return result.returncode, log.read_text().splitlines()

    return run


def test_hook_leaves_boot_to_the_unit_and_other_stages_alone(fake_systemctl):
    assert fake_systemctl("network", "") == (0, [])
    assert fake_systemctl("network") == (0, [])
    assert fake_systemctl("local", "reconfigure") == (0, [])


def test_hook_reruns_the_unit_on_reconfigure_after_a_boot_in_progress(fake_systemctl):
    rc, calls = fake_systemctl("network", "reconfigure", states_queue=("activating", "active"))
    assert rc == 0
    assert calls[-1] == "--no-block restart fl-agent.service"  # one-contextd is not held
    assert [c for c in calls if c.startswith("show")] == [
        "show --property=ActiveState --value fl-agent.service"
    ] * 2


def test_report_ready_replacement_leaves_ready_to_the_agent():
    """one-context's own script would say READY=YES before the agent has started anything."""
    assert REPORT_READY.stat().st_mode & stat.S_IXUSR
    env = {**os.environ, "REPORT_READY": "YES", "PATH": "/nonexistent"}
    result = subprocess.run(
        [str(REPORT_READY), "network", ""], env=env, capture_output=True, timeout=10
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_shell_scripts_are_shellcheck_clean():
    result = subprocess.run(
        ["shellcheck", "-x", str(HOOK), str(REPORT_READY), *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(s.stat().st_mode & stat.S_IXUSR for s in SCRIPTS)


# --- Packer ---


@pytest.fixture(scope="module")
def packer_copy(tmp_path_factory) -> Path:
    """The template for Packer 1.6.6: this directory without the `packer {}` plugins block."""
    copy = tmp_path_factory.mktemp("packer") / "packer"
    shutil.copytree(PACKER, copy, ignore=shutil.ignore_patterns(".stage", "output"))
    (copy / "plugins.pkr.hcl").unlink()
    return copy


def packer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["packer", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_packer_template_validates_with_both_sources(packer_copy):
    syntax = packer("validate", "-syntax-only", ".", cwd=packer_copy)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    # Full validation, except the SHA256SUMS download of the default checksum (no internet).
    full = packer("validate", "-var", f"ubuntu_image_checksum={ZERO_SHA256}", ".", cwd=packer_copy)
    assert full.returncode == 0, full.stdout + full.stderr
    for source in ("qemu.ubuntu", "docker.appliance"):
        only = packer(
            "validate",
            f"-only={source}",
            "-var",
            f"ubuntu_image_checksum={ZERO_SHA256}",
            ".",
            cwd=packer_copy,
        )
        assert only.returncode == 0, only.stdout + only.stderr


def test_packer_declares_its_plugins_for_current_packer():
    text = (PACKER / "plugins.pkr.hcl").read_text()
    assert re.search(r"packer\s*\{\s*(#.*\n\s*)*required_version", text)
    assert "required_plugins" in text
    assert 'source  = "github.com/hashicorp/qemu"' in text
    assert 'source  = "github.com/hashicorp/docker"' in text


def test_every_provisioning_script_runs_in_both_sources_in_order():
    build = (PACKER / "build.pkr.hcl").read_text()
    listed = re.findall(r'"\$\{path\.root\}/scripts/(\d\d-[\w-]+\.sh)"', build)
    present = [s.name for s in SCRIPTS if re.match(r"\d\d-", s.name)]
    assert listed == sorted(present)
    assert 'sources = ["source.qemu.ubuntu", "source.docker.appliance"]' in build


# nvidia-mig-manager.service as NVIDIA/mig-parted ships it (deployments/systemd), ordering only.
MIG_MANAGER_UNIT = """[Unit]
Description=Configure MIG on NVIDIA GPUs
DefaultDependencies=no
After=nvidia-persistenced.service nvidia-fabricmanager.service
Before=nvidia-gpu-reset.target

[Service]
Type=oneshot
ExecStart=/usr/bin/true

[Install]
WantedBy=multi-user.target
"""


def test_boot_unit_is_ordered_after_the_nvidia_boot_services():
    dropin = unit_settings(UNITS / "fl-agent.service.d" / "10-nvidia-order.conf")
    after = words(dropin, "After")
    assert {"nvidia-mig-manager.service", "nvidia-fabricmanager.service"} <= after
    assert not dropin.get("Wants") and not dropin.get("Requires")  # ordering only
    script = (REPO / "packer/scripts/40-agent.sh").read_text()
    assert "fl-agent.service.d" in script


def test_units_verify_clean_with_the_mig_manager_installed(unit_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(unit_root, root, symlinks=True)
    system = root / "etc/systemd/system"
    (system / "nvidia-mig-manager.service").write_text(MIG_MANAGER_UNIT)
    subprocess.run(
        ["systemctl", f"--root={root}", "enable", "nvidia-mig-manager.service"],
        check=True,
        capture_output=True,
    )
    assert (system / "fl-agent.service.d/10-nvidia-order.conf").is_file()
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "multi-user.target", "fl-agent.service"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
