"""`/dev/char/MAJOR:MINOR` symlinks for the NVIDIA device nodes, as the GPU Operator makes them.

Why: with the systemd cgroup driver, systemd re-applies a container's device rules on any
`systemctl daemon-reload`, naming each device by its /dev/char link; the NVIDIA device nodes
have none (udev does not create them), so a running GPU container loses its GPUs and NVML says
"Unknown Error" (NVIDIA's notice, nvidia-container-toolkit issue 48; docs/gpu-health.md).

What: the set `nvidia-ctk system create-dev-char-symlinks --create-all` makes (NVIDIA/
nvidia-container-toolkit cmd/nvidia-ctk/system/create-dev-char-symlinks): the control nodes
(nvidiactl 255, nvidia-modeset 254 on the `nvidia`/`nvidia-frontend` major; nvidia-uvm 0 and
nvidia-uvm-tools 1 on the `nvidia-uvm` major, from /proc/devices), one /dev/nvidiaN per GPU on
the PCI bus, and the char devices that exist as /dev/nvidia* and /dev/nvidia-caps/nvidia-*
(nvidia-fs, nvidia-nvswitch and nvidia-nvlink excluded, as nvidia-ctk does). The nodes need
not exist yet: the links may dangle until the driver creates them. An existing entry is left
as it is, as nvidia-ctk does.

nvidia-ctk runs first when the toolkit is installed; the agent's own pass then adds whatever is
still missing (and is the whole job where the toolkit is not installed, or its command fails).
`fl-agent dev-char-links` runs this at boot and from the udev rule (udev/) that makes the links
again whenever the nvidia driver binds, as NVIDIA's workaround does.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.errors import Problem
from agent.gpu.pci import scan_pci
from agent.paths import Root
from agent.toolkit import STEP_TIMEOUT_S, Runner, run_command

DEV_CHAR = "/dev/char"
GPU_MAJORS = ("nvidia", "nvidia-frontend")
UVM_MAJOR = "nvidia-uvm"
CONTROL_MINORS = ((GPU_MAJORS, "nvidia-modeset", 254), (GPU_MAJORS, "nvidiactl", 255))
UVM_MINORS = (("nvidia-uvm", 0), ("nvidia-uvm-tools", 1))
BLOCKED = ("nvidia-fs", "nvidia-nvswitch", "nvidia-nvlink")


@dataclass(frozen=True)
class Link:
    name: str  # MAJOR:MINOR
    target: str  # the device node's system path


@dataclass(frozen=True)
class DevCharResult:
    via: str  # nvidia-ctk (it ran and succeeded) | agent
    created: tuple[str, ...]  # links the agent's pass added
    present: tuple[str, ...]  # every planned link that exists now
    ctk_output: str | None = None  # nvidia-ctk's last lines when it failed
    problem: Problem | None = None


def planned_links(root: Root) -> tuple[Link, ...]:
    """Every /dev/char link the NVIDIA devices of this machine need, by name."""
    majors = _char_majors(root.proc / "devices")
    links = {link.name: link for link in _possible(root, majors)}
    links.update((link.name, link) for link in _existing(root))
    return tuple(links[name] for name in sorted(links, key=_order))


def ensure_dev_char_links(
    root: Root, ctk_path: str | None, runner: Runner = run_command
) -> DevCharResult:
    """Create the missing links: through nvidia-ctk when `ctk_path` is given, then our own pass.

    ctk_path: nvidia-ctk as toolkit.detect found it (a system path), or None.
    """
    via, failed = "agent", None
    if ctk_path:
        result = runner(
            [
                str(root.path(ctk_path)),
                "system",
                "create-dev-char-symlinks",
                "--create-all",
                f"--dev-char-path={root.path(DEV_CHAR)}",
            ],
            timeout=STEP_TIMEOUT_S,
        )
        via, failed = ("nvidia-ctk", None) if result.ok else ("agent", result.tail())
    created, problem = _create(root, planned_links(root))
    present = tuple(
        link.name for link in planned_links(root) if os.path.lexists(_link_path(root, link))
    )
    return DevCharResult(via, created, present, failed, problem)


def _create(root: Root, links: tuple[Link, ...]) -> tuple[tuple[str, ...], Problem | None]:
    created = []
    try:
        if links:
            root.path(DEV_CHAR).mkdir(mode=0o755, parents=True, exist_ok=True)
        for link in links:
            path = _link_path(root, link)
            if not os.path.lexists(path):
                path.symlink_to(link.target)
                created.append(link.name)
    except OSError as exc:
        problem = Problem(
            "dev_char_links_failed",
            DEV_CHAR,
            f"cannot create the NVIDIA /dev/char links: {exc.strerror} ({exc.filename})",
            "run the agent as root; a GPU container may lose its GPUs on `systemctl "
            "daemon-reload` until the links exist",
        )
        return tuple(created), problem
    return tuple(created), None


def _link_path(root: Root, link: Link) -> Path:
    return root.path(DEV_CHAR) / link.name


def _char_majors(devices: Path) -> dict[str, int]:
    """/proc/devices' character section: driver name -> major."""
    majors: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in devices.read_text().splitlines():
            if line.startswith("Block devices"):
                break
            number, _, name = line.strip().partition(" ")
            if number.isdigit():
                majors.setdefault(name.strip(), int(number))
    return majors


def _possible(root: Root, majors: dict[str, int]) -> list[Link]:
    """nvidia-ctk's --create-all set; nothing without the nvidia driver's major."""
    gpu = next((majors[n] for n in GPU_MAJORS if n in majors), None)
    if gpu is None:
        return []
    links = [Link(f"{gpu}:{minor}", f"/dev/{node}") for _, node, minor in CONTROL_MINORS]
    if UVM_MAJOR in majors:
        links += [Link(f"{majors[UVM_MAJOR]}:{m}", f"/dev/{node}") for node, m in UVM_MINORS]
    count = len(scan_pci(root).gpus)
    return links + [Link(f"{gpu}:{i}", f"/dev/nvidia{i}") for i in range(count)]


def _existing(root: Root) -> list[Link]:
    """The NVIDIA char devices that exist under /dev now."""
    found = []
    for pattern in ("nvidia*", "nvidia-caps/nvidia-*"):
        for node in sorted(root.dev.glob(pattern)):
            if node.name.startswith(BLOCKED):
                continue
            with contextlib.suppress(OSError):
                info = node.lstat()
                if stat.S_ISCHR(info.st_mode):
                    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
                    found.append(Link(f"{major}:{minor}", f"/{node.relative_to(root.prefix)}"))
    return found


def _order(name: str) -> tuple[int, int]:
    major, _, minor = name.partition(":")
    return int(major), int(minor)
