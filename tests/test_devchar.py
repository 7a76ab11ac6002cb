"""The /dev/char links of the NVIDIA device nodes, the udev rule that keeps them, and the NVIDIA
packages held in the image. Device nodes are real char devices made with mknod under a fixture
root (the tests run as root); nvidia-ctk is a stand-in script that logs its arguments."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.devchar import ensure_dev_char_links, planned_links
from agent.paths import Root
from tests.fixtures_gpu import REPO, add_pci_function

PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
195 nvidia-frontend
234 nvidia-caps
509 nvidia-uvm

Block devices:
195 not-a-char-device
"""
EXPECTED = {
    "195:0": "/dev/nvidia0",
    "195:1": "/dev/nvidia1",
    "195:254": "/dev/nvidia-modeset",
    "195:255": "/dev/nvidiactl",
    "234:1": "/dev/nvidia-caps/nvidia-cap1",
    "509:0": "/dev/nvidia-uvm",
    "509:1": "/dev/nvidia-uvm-tools",
}


def node(root: Path, name: str, major: int, minor: int) -> None:
    path = root / "dev" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))


def two_gpu_vm(root: Path) -> Path:
    """Two GPUs on the bus, the driver loaded; nvidia-modeset and nvidia-uvm-tools not yet made."""
    (root / "proc").mkdir(parents=True)
    (root / "proc/devices").write_text(PROC_DEVICES)
    add_pci_function(root, "0000:01:00.0", driver="nvidia")
    add_pci_function(root, "0000:02:00.0", driver="nvidia")
    for name, major, minor in (
        ("nvidia0", 195, 0),
        ("nvidia1", 195, 1),
        ("nvidiactl", 195, 255),
        ("nvidia-uvm", 509, 0),
        ("nvidia-caps/nvidia-cap1", 234, 1),
        ("nvidia-nvswitch0", 237, 0),  # excluded, as nvidia-ctk does
    ):
        node(root, name, major, minor)
    (root / "dev/nvidia-stray").write_text("")  # not a char device: ignored
    return root


def links(root: Path) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in (root / "dev/char").iterdir()}


def test_planned_links_are_nvidia_ctks_create_all_set_plus_existing_nodes(tmp_path):
    planned = planned_links(Root(two_gpu_vm(tmp_path)))
    assert {link.name: link.target for link in planned} == EXPECTED


def test_links_are_created_without_the_toolkit_and_kept_once_there(tmp_path):
    root = two_gpu_vm(tmp_path)
    (root / "dev/char").mkdir()
    (root / "dev/char/195:255").symlink_to("../nvidiactl")  # udev or nvidia-ctk made it
    result = ensure_dev_char_links(Root(root), None)
    assert result.via == "agent" and result.problem is None
    assert set(result.created) == set(EXPECTED) - {"195:255"}
    assert links(root) == {**EXPECTED, "195:255": "../nvidiactl"}
    assert set(result.present) == set(EXPECTED)
    again = ensure_dev_char_links(Root(root), None)
    assert again.created == () and set(again.present) == set(EXPECTED)


def test_no_driver_no_links(tmp_path):
    add_pci_function(tmp_path, "0000:01:00.0")
    result = ensure_dev_char_links(Root(tmp_path), None)
    assert (result.created, result.present, result.problem) == ((), (), None)
    assert not (tmp_path / "dev/char").exists()


def fake_ctk(root: Path, body: str) -> str:
    ctk = root / "usr/bin/nvidia-ctk"
    ctk.parent.mkdir(parents=True, exist_ok=True)
    ctk.write_text(f'#!/bin/sh\necho "$@" >>"{root}/ctk.log"\n{body}\n')
    ctk.chmod(0o755)
    return "/usr/bin/nvidia-ctk"


def test_nvidia_ctk_runs_first_and_the_agent_adds_what_it_left(tmp_path):
    root = two_gpu_vm(tmp_path)
    ctk = fake_ctk(
        root, f'mkdir -p "{root}/dev/char" && ln -s /dev/nvidia0 "{root}/dev/char/195:0"'
    )
    result = ensure_dev_char_links(Root(root), ctk)
    assert (root / "ctk.log").read_text().split() == [
        "system",
        "create-dev-char-symlinks",
        "--create-all",
        f"--dev-char-path={root}/dev/char",
    ]
    assert result.via == "nvidia-ctk" and "195:0" not in result.created
    assert links(root) == EXPECTED


def test_a_failing_nvidia_ctk_is_reported_and_the_agent_does_the_job(tmp_path):
    root = two_gpu_vm(tmp_path)
    ctk = fake_ctk(root, "echo 'missing required device major nvidia-uvm' >&2; exit 1")
    result = ensure_dev_char_links(Root(root), ctk)
    assert result.via == "agent" and "missing required device major" in result.ctk_output
    assert links(root) == EXPECTED


def test_a_read_only_dev_is_a_problem_not_a_traceback(tmp_path):
    root = two_gpu_vm(tmp_path)
    (root / "dev/char").write_text("")  # not a directory
    result = ensure_dev_char_links(Root(root), None)
    assert result.problem.name == "dev_char_links_failed" and result.created == ()


def test_the_command_line(tmp_path):
    root = two_gpu_vm(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "FL_AGENT_ROOT": str(root)}
    argv = [sys.executable, "-m", "agent", "dev-char-links", "--json"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["present"]) == set(EXPECTED)


# --- the udev rule and the image ---

RULES = REPO / "udev" / "71-fl-agent-dev-char.rules"


def rule_lines() -> list[str]:
    return [
        line for line in RULES.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def test_udev_rule_runs_the_agent_when_the_driver_binds_and_uvm_loads():
    from agent.cli import build_parser

    lines = rule_lines()
    assert any('DEVPATH=="/bus/pci/drivers/nvidia"' in line for line in lines)  # NVIDIA's
    assert any('SUBSYSTEM=="module", KERNEL=="nvidia_uvm"' in line for line in lines)
    for line in lines:
        assert line.startswith('ACTION=="add", ')
        (command,) = re.findall(r'RUN\+="([^"]+)"', line)
        argv = command.split()
        assert argv[0] == "/opt/fl-agent/venv/bin/fl-agent"
        assert build_parser().parse_args(argv[1:]).command == "dev-char-links"


def test_image_installs_the_rule():
    install = (REPO / "packer/scripts/40-agent.sh").read_text()
    assert '/usr/lib/udev/rules.d "$FL_STAGE"/udev/*.rules' in install
    assert 'cp -r "$REPO/udev" "$STAGE/udev"' in (REPO / "packer/scripts/stage.sh").read_text()


@pytest.fixture
def package_tools(tmp_path) -> Path:
    """dpkg-query answering from a list, apt-mark and apt-get logging their arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        "dpkg-query": f'cat "{tmp_path}/installed"',
        "apt-mark": f'echo "$@" >>"{tmp_path}/apt-mark.log"',
        "apt-get": f'echo "$@" >>"{tmp_path}/apt-get.log"',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run_nvidia_script(tmp: Path, installed: str, drivers: str) -> subprocess.CompletedProcess:
    (tmp / "installed").write_text(installed)
    env = {
        **os.environ,
        "PATH": f"{tmp}/bin:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "FL_AGENT_PYTHON": sys.executable,
        "FL_NVIDIA_TOOLKIT": "none",
        "FL_NVIDIA_DRIVER_PACKAGES": drivers,
    }
    script = REPO / "packer/scripts/50-nvidia.sh"
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)


def test_image_holds_every_installed_nvidia_package(package_tools):
    installed = (
        "ii  adduser\n"
        "ii  nvidia-driver-550-server\n"
        "ii  libnvidia-compute-550-server\n"
        "ii  linux-modules-nvidia-550-server-generic\n"
        "ii  nvidia-container-toolkit\n"
        "ii  libnvidia-container1\n"
        "ii  cuda-drivers-550\n"
        "rc  nvidia-driver-535\n"
    )
    proc = run_nvidia_script(package_tools, installed, "nvidia-driver-550-server")
    assert proc.returncode == 0, proc.stderr
    assert (
        "install -y -q --no-install-recommends nvidia-driver-550-server"
        in (package_tools / "apt-get.log").read_text()
    )
    assert (package_tools / "apt-mark.log").read_text().split() == [
        "hold",
        "nvidia-driver-550-server",
        "libnvidia-compute-550-server",
        "linux-modules-nvidia-550-server-generic",
        "nvidia-container-toolkit",
        "libnvidia-container1",
        "cuda-drivers-550",
    ]


def test_cpu_image_holds_nothing(package_tools):
    proc = run_nvidia_script(package_tools, "ii  adduser\nrc  nvidia-driver-535\n", "")
    assert proc.returncode == 0, proc.stderr
    assert not (package_tools / "apt-mark.log").exists()
