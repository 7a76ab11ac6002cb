"""The NVIDIA kernel module: loaded or not, its version, its device nodes.

`/proc/driver/nvidia/version` exists only while the module is loaded; its first line names the
version in two layouts (proprietary and open module), so the version is the first
`N.N(.N)` token after "Kernel Module", not a fixed column (tests/fixtures_gpu.py has both
lines).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from agent.errors import Problem
from agent.gpu.nvml import NvmlFacts
from agent.gpu.pci import PciFacts
from agent.paths import Root

PROC_VERSION = "/proc/driver/nvidia/version"
SYS_MODULE = "/sys/module/nvidia"
_VERSION = re.compile(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s")
_DEVICE_NODE = re.compile(r"^nvidia(?:\d+|ctl|-uvm|-uvm-tools|-modeset)$")
_RM_INIT = re.compile(r"RmInitAdapter failed|rm_init_adapter failed")
_ADDRESS = re.compile(r"\b([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\b")
DRIVER_INIT_FIX = (
    "the driver could not bring the GPU up inside this VM: check the VM template (UEFI "
    "firmware, q35 machine, 64-bit MMIO above 4G large enough for the GPU's BARs: "
    "`fl-agent host-check` on the host), the host's interrupt remapping, and the full kernel "
    "log (NVRM lines, Xid); a GPU left in a bad state needs a host-side reset or host reboot"
)


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


def driver_init_failure(pci: PciFacts, nvml: NvmlFacts) -> Problem | None:
    """`RmInitAdapter failed` while the GPU stays bound to nvidia and NVML says Unknown Error.

    The nvidia module binds the PCI device at probe time and initialises it at first use; when
    that fails the binding stays, so sysfs looks healthy and NVML only answers Unknown Error
    for the handle. The kernel line is the only real cause an operator can act on.
    """
    lines = [line for line in pci.kernel_errors if _RM_INIT.search(line)]
    unknown = nvml.problem is not None and nvml.problem.name == "nvml_unknown_error"
    unknown = unknown or any(
        g.problem and g.problem.name == "nvml_unknown_error" for g in nvml.gpus
    )
    bound = [g.address for g in pci.gpus if g.driver == "nvidia"]
    if not (lines and unknown and bound):
        return None
    for address in bound:
        named = [line for line in lines if address.lower() in line.lower()]
        if named or not any(_ADDRESS.search(line) for line in lines):
            line = (named or lines)[-1]
            return Problem(
                "gpu_driver_init_failed",
                f"GPU {address}",
                f"the nvidia driver is bound to GPU {address} but failed to initialise it "
                f"(NVML: Unknown Error); kernel log ({pci.kernel_log}): {line}",
                DRIVER_INIT_FIX,
            )
    return None
