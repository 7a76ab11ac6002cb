"""Stage fabric: the NVLink fabric of HGX/NVSwitch systems (CUDA fails with 802 until ready).

The one stage that observes while it runs: a registration in progress is re-read through
`agent.gpu.nvml.read_fabric`, up to the wait budget (`agent.gpu.fabric.wait_fabric`); the
verdict and its fix come from `agent.gpu.fabric`, with the time really waited.
"""

from __future__ import annotations

from agent.gpu import NvmlGpu
from agent.gpu.fabric import fabric_verdict, wait_fabric
from agent.outcome import StageStatus
from agent.stages import Check

WAIT_S = 60.0
POLL_S = 1.0


def check(
    targets: list[NvmlGpu],
    nvswitches: tuple[str, ...],
    wait_s: float,
    driver_version: str | None,
) -> Check:
    from agent.gpu.nvml import read_fabric

    uuids = tuple(g.uuid or "" for g in targets if g.fabric is not None)
    polled = wait_fabric(lambda: read_fabric(uuids), wait_s, interval_s=POLL_S) if uuids else None
    verdict = fabric_verdict(polled, nvswitches, driver_version)
    if verdict.problem is not None:
        return Check.failed(verdict.problem)
    return Check(StageStatus(verdict.status), verdict.detail)
