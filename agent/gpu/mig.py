"""MIG after a reboot: GPU and compute instances are gone until a MIG tool recreates them.

MIG mode survives a reboot, the instances do not (NVIDIA's MIG user guide; gpu-operator
issues). NVIDIA's mig-parted ships `nvidia-mig-parted` and `nvidia-mig-manager.service`, which
re-applies the configured layout at every boot. When a GPU is in MIG mode with no MIG device yet
and such a tool is installed, the agent waits (bounded) for the instances instead of failing
`mig_no_instances` and running on CPU; systemd/fl-agent.service.d orders it after the service.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.gpu.nvml import NvmlFacts
from agent.gpu.waiting import Polled, poll
from agent.paths import Root

MIG_WAIT_S = 120.0
MIG_TOOLS = (
    "/etc/systemd/system/nvidia-mig-manager.service",
    "/usr/lib/systemd/system/nvidia-mig-manager.service",
    "/lib/systemd/system/nvidia-mig-manager.service",
    "/usr/bin/nvidia-mig-parted",
    "/usr/local/bin/nvidia-mig-parted",
)


def mig_tool(root: Root) -> str | None:
    """The first MIG tool installed under the root (its path), or None."""
    return next((p for p in MIG_TOOLS if root.path(p).exists()), None)


def awaiting_instances(nvml: NvmlFacts) -> tuple[str, ...]:
    """UUIDs of GPUs in MIG mode that have no MIG device (yet)."""
    return tuple(g.uuid or f"GPU {g.index}" for g in nvml.gpus if g.mig_mode and not g.mig_devices)


def should_wait_for_mig(nvml: NvmlFacts, tool: str | None) -> bool:
    """Wait only when something will create the instances: a MIG tool is installed."""
    return tool is not None and bool(awaiting_instances(nvml))


def wait_for_mig(
    read: Callable[[], NvmlFacts], timeout_s: float = MIG_WAIT_S, **kwargs
) -> Polled[NvmlFacts]:
    """Re-read NVML until every MIG-mode GPU has instances, at most `timeout_s`."""
    return poll(read, lambda facts: bool(awaiting_instances(facts)), timeout_s, **kwargs)
