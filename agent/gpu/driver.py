"""The NVIDIA kernel module: loaded or not, its version, its device nodes.

`/proc/driver/nvidia/version` exists only while the module is loaded; its first line names the
version in two layouts (proprietary and open module), so the version is the first
`N.N(.N)` token after "Kernel Module", not a fixed column (gpu-stack.md section 4).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from agent.paths import Root

PROC_VERSION = "/proc/driver/nvidia/version"
SYS_MODULE = "/sys/module/nvidia"
_VERSION = re.compile(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s")
_DEVICE_NODE = re.compile(r"^nvidia(?:\d+|ctl|-uvm|-uvm-tools|-modeset)$")


@dataclass(frozen=True)
class DriverFacts:
    loaded: bool  # /proc/driver/nvidia/version or /sys/module/nvidia present
    version: str | None  # the kernel module's version
    open_module: bool  # the open GPU kernel module (vs. the proprietary one)
    device_nodes: tuple[str, ...]  # /dev/nvidia* names present

    @property
    def control_node(self) -> bool:
        return "nvidiactl" in self.device_nodes

    def to_dict(self) -> dict:
        return asdict(self)


def read_driver(root: Root) -> DriverFacts:
    """The kernel module as the running system shows it. Never raises."""
    first_line = _first_line(root, PROC_VERSION)
    version = None
    if first_line:
        match = _VERSION.search(first_line + " ")
        version = match.group(1) if match else None
    if version is None:
        version = _first_line(root, f"{SYS_MODULE}/version") or None
    sys_module = root.path(SYS_MODULE).is_dir()
    try:
        nodes = sorted(p.name for p in root.dev.iterdir() if _DEVICE_NODE.match(p.name))
    except OSError:
        nodes = []
    return DriverFacts(
        loaded=first_line is not None or sys_module,
        version=version,
        open_module=bool(first_line and "Open Kernel Module" in first_line),
        device_nodes=tuple(nodes),
    )


def _first_line(root: Root, path: str) -> str | None:
    try:
        with open(root.path(path)) as handle:
            return handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None
