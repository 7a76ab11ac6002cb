"""The NVLink fabric verdict for HGX systems (NVSwitch), honest about time and the fix.

CUDA fails with error 802 ("system not yet initialized") until each GPU's fabric registration
has completed with status success. The Fabric Manager does the registration; it refuses to run
unless its version equals the driver's exactly, and it needs the NVSwitches: with full
passthrough (the whole HGX board in one VM) they must be passed into the guest together with
the GPUs and nvidia-fabricmanager runs in the VM; in shared NVSwitch mode the switches stay with
the hypervisor's Fabric Manager service VM, and this VM only gets GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.errors import Problem
from agent.gpu.nvml import Fabric
from agent.gpu.waiting import Polled, poll

PENDING = ("not_started", "in_progress")


def fabric_fix(driver_version: str | None) -> str:
    """The fix line: start the Fabric Manager of exactly the driver's version, where it runs."""
    branch = (driver_version or "").split(".")[0] or "<branch>"
    exact = driver_version or "the driver's version"
    return (
        f"install and start the Fabric Manager of exactly the driver's version "
        f"(nvidia-fabricmanager-{branch} {exact}; it refuses to start on any other version): "
        "`systemctl enable --now nvidia-fabricmanager`; with full passthrough the NVSwitches "
        "must be passed into this VM together with the GPUs (the Fabric Manager runs here); in "
        "shared NVSwitch mode it runs in the host's Fabric Manager service VM instead, so check "
        "that one; then revalidate"
    )


@dataclass(frozen=True)
class FabricVerdict:
    status: str  # ok | fail | skip
    detail: str
    problem: Problem | None = None
    waited_s: float = 0.0


def wait_fabric(
    read: Callable[[], Mapping[str, Fabric | None]],
    timeout_s: float,
    **kwargs,
) -> Polled[dict[str, Fabric]]:
    """Re-read the fabric of the selected GPUs until none is pending, at most `timeout_s`."""

    def current() -> dict[str, Fabric]:
        return {u: f for u, f in read().items() if f is not None}

    return poll(
        current, lambda fs: any(f.state in PENDING for f in fs.values()), timeout_s, **kwargs
    )


def fabric_verdict(
    polled: Polled[dict[str, Fabric]] | None,
    nvswitches: tuple[str, ...],
    driver_version: str | None,
) -> FabricVerdict:
    """The stage's verdict from what was read (None: no GPU reported a fabric at all)."""
    fabrics = polled.value if polled else {}
    if not fabrics:
        if nvswitches:
            problem = Problem(
                "fabric_not_ready",
                "fabric",
                f"NVSwitch present ({', '.join(nvswitches)}) but the driver reports no fabric "
                "state for the selected GPUs: CUDA would fail with error 802",
                fabric_fix(driver_version),
            )
            return FabricVerdict("fail", problem.message, problem)
        return FabricVerdict("skip", "no NVLink fabric on the selected GPUs (no NVSwitch)")
    waited = polled.waited_s if polled else 0.0
    for uuid, fabric in fabrics.items():
        if fabric.state == "completed" and not fabric.ready:
            message = (
                f"GPU {uuid}: the NVLink fabric registration completed with error status "
                f"{fabric.status} (read after {waited:.1f}s): CUDA would fail with error 802"
            )
            return _failed(message, driver_version, waited)
        if fabric.state != "completed":
            message = (
                f"GPU {uuid}: the NVLink fabric is still {fabric.state} after {waited:.1f}s: "
                "CUDA would fail with error 802"
            )
            return _failed(message, driver_version, waited)
    detail = f"NVLink fabric completed on {len(fabrics)} GPU(s) (waited {waited:.1f}s)"
    return FabricVerdict("ok", detail, None, waited)


def _failed(message: str, driver_version: str | None, waited: float) -> FabricVerdict:
    problem = Problem("fabric_not_ready", "fabric", message, fabric_fix(driver_version))
    return FabricVerdict("fail", message, problem, waited)
