"""Stage fabric: the NVLink fabric of HGX/NVSwitch systems (CUDA fails with 802 until ready).

The one stage that observes while it runs: a registration in progress is polled, up to the
wait budget, through `agent.gpu.nvml.read_fabric`.
"""

from __future__ import annotations

import time

from agent.errors import Problem
from agent.gpu import Fabric, NvmlGpu
from agent.outcome import StageStatus
from agent.stages import Check
from agent.validation.wording import plural

WAIT_S = 60.0
POLL_S = 1.0


def check(targets: list[NvmlGpu], nvswitches: tuple[str, ...], wait_s: float) -> Check:
    fabrics = {g.uuid or "": g.fabric for g in targets if g.fabric is not None}
    if not fabrics:
        if nvswitches:
            return Check(
                StageStatus.WARN,
                f"NVSwitch present ({', '.join(nvswitches)}) but the driver reports no fabric "
                "state",
                "make sure nvidia-fabricmanager runs (systemctl enable --now "
                "nvidia-fabricmanager); CUDA fails with error 802 until the fabric is ready",
            )
        return Check(
            StageStatus.SKIP, "no NVLink fabric on the selected GPUs (no NVSwitch): not needed"
        )
    fabrics = _wait(fabrics, wait_s)
    broken = {u: f for u, f in fabrics.items() if f.state == "completed" and not f.ready}
    pending = {u: f for u, f in fabrics.items() if f.state != "completed"}
    if broken or pending:
        uuid, fabric = next(iter({**broken, **pending}.items()))
        return Check.failed(
            Problem(
                "fabric_not_ready",
                uuid,
                f"the NVLink fabric is {fabric.state} (status {fabric.status}) after "
                f"{wait_s:.0f}s: CUDA would fail with error 802",
                "start the Fabric Manager (`systemctl enable --now nvidia-fabricmanager`, or "
                "OpenNebula's Fabric Manager service VM for passthrough HGX), then revalidate",
            )
        )
    return Check(StageStatus.OK, f"NVLink fabric completed on {plural(len(fabrics), 'GPU')}")


def _wait(fabrics: dict[str, Fabric], wait_s: float) -> dict[str, Fabric]:
    """Poll while registration is in progress, up to the wait budget."""
    from agent.gpu.nvml import read_fabric

    deadline = time.monotonic() + wait_s
    while any(f.state in ("not_started", "in_progress") for f in fabrics.values()):
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
        fresh = read_fabric(tuple(fabrics))
        fabrics = {u: f for u, f in fresh.items() if f is not None}
    return fabrics
