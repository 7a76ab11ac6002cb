"""Does the SuperNode container still reach its GPUs? Parse its `nvidia-smi -L`, pick the repair.

A GPU container can lose its devices while it runs: with the systemd cgroup driver a `systemctl
daemon-reload` re-applies the container's device rules without the GPUs the NVIDIA hook added,
and NVML inside says "Failed to initialize NVML: Unknown Error" (nvidia-container-toolkit issues
48 and 251, nvidia-docker 1730). The host still sees the GPUs.

Repair ladder (docs/gpu-health.md has the evidence): `restart` first: the engine builds the
container's OCI spec anew at every start, so the NVIDIA prestart hook runs again in a new
cgroup, and the container keeps its id and its log; `recreate` (remove, create from the same
spec) when the restart did not bring the GPUs back, which also drops anything left in the
container's writable layer; then nothing more: the loss is reported. No repair at all when the
host itself no longer lists a GPU the container was given: that is a GPU loss, which the
re-convergence handles, not the container.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

COMMAND = ("nvidia-smi", "-L")
UNKNOWN_ERROR = "Failed to initialize NVML: Unknown Error"
OK, LOST, UNCHECKED = "ok", "lost_access", "unchecked"
RESTART, RECREATE = "restart", "recreate"
LADDER = (RESTART, RECREATE)
_UUID = re.compile(r"\(UUID: ((?:GPU|MIG)-[0-9A-Fa-f-]+)\)")


@dataclass(frozen=True)
class GpuAccess:
    state: str  # ok | lost_access | unchecked (the check itself could not run)
    expected: tuple[str, ...]  # the GPU/MIG UUIDs the container was given
    reason: str | None = None  # unknown_error | missing_uuids (lost); the output (unchecked)
    missing: tuple[str, ...] = ()


def check_access(exit_code: int, output: str, expected: Sequence[str]) -> GpuAccess:
    """The container's GPU access from `nvidia-smi -L` run inside it (exit code, output)."""
    wanted = tuple(expected)
    if UNKNOWN_ERROR in output:
        return GpuAccess(LOST, wanted, "unknown_error", wanted)
    listed = set(_UUID.findall(output))
    if exit_code != 0 and not listed:
        return GpuAccess(UNCHECKED, wanted, " ".join(output.split())[:200] or f"exit {exit_code}")
    missing = tuple(u for u in wanted if u not in listed)
    if missing:
        return GpuAccess(LOST, wanted, "missing_uuids", missing)
    return GpuAccess(OK, wanted)


def repair_for(access: GpuAccess, host_uuids: Collection[str], tried: Sequence[str]) -> str | None:
    """The next repair for a container that lost its GPUs, or None (nothing to do, or give up).

    tried: the repairs already made for this loss, in order (reset once access is back).
    """
    if access.state != LOST or any(u not in host_uuids for u in access.missing):
        return None
    return LADDER[len(tried)] if len(tried) < len(LADDER) else None
