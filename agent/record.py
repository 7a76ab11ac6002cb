"""The boot record: what one boot read, decided and did, frozen.

`to_dict` is its JSON shape, the one the state file holds, `fl-agent status` and the appliance
report read, and `fl-agent boot --json` prints. `gpu_attributes` turns the validation's GPU
inventory into the FL_GPU_* facts OneGate carries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import Problem
from agent.outcome import BootState, ExitCode, Mode, Verdict, exit_code

if TYPE_CHECKING:
    from agent.gpu import GpuFacts


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class BootRecord:
    state: BootState
    started_at: str
    finished_at: str = ""
    invalid_config: bool = False
    dry_run: bool = False
    mode: Mode = Mode.NONE
    context_source: str | None = None
    flower_version: str | None = None
    problems: tuple[Problem, ...] = ()
    timings_ms: tuple[tuple[str, float], ...] = ()
    last_reported_state: BootState | None = None
    # each part's own JSON (the plan, the validation, discovery, the container)
    plan: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    discovery: dict[str, Any] | None = None
    container: dict[str, Any] | None = None
    superlink: dict[str, Any] | None = None  # FL_ROLE=superlink: agent/superlink_boot.py
    companion: dict[str, Any] | None = None  # FL_ISOLATION=process: the SuperNode's converge
    agent_version: str = field(default=__version__)

    @property
    def exit_code(self) -> ExitCode:
        return exit_code(self.state, invalid_config=self.invalid_config)

    def with_problem(self, problem: Problem) -> BootRecord:
        return replace(self, problems=(*self.problems, problem))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agent_version": self.agent_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "state": str(self.state),
            "invalid_config": self.invalid_config,
            "mode": str(self.mode),
            "context_source": self.context_source,
            "flower_version": self.flower_version,
            "problems": [p.to_dict() for p in self.problems],
            "timings_ms": dict(self.timings_ms),
            "last_reported_state": str(self.last_reported_state or "") or None,
        }
        if self.dry_run:
            data["dry_run"] = True
        for name in ("plan", "validation", "discovery", "container", "companion", "superlink"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data


def gpu_attributes(
    gpu_facts: GpuFacts | None, mode: Mode | str | None, validation: dict | None
) -> dict[str, str]:
    """The FL_GPU_* facts OneGate carries, from the validation's GPU inventory.

    Lists are joined with ';' (a comma would force base64 through OneGate's escaping).
    """
    verdict = (validation or {}).get("verdict", str(Verdict.CPU_ONLY))
    failed = (validation or {}).get("failed_stage")
    attrs = {
        "FL_GPU_MODE": str(Mode.GPU if mode == Mode.GPU else Mode.CPU),
        "FL_VALIDATION": f"FAILED:{failed}" if verdict == Verdict.FAILED and failed else verdict,
        "FL_GPU_COUNT": "0",
    }
    nvml = gpu_facts.nvml if gpu_facts is not None else None
    gpus = [g for g in (nvml.gpus if nvml else ()) if g.uuid]
    if not gpus or nvml is None:
        return attrs
    cuda = nvml.cuda_driver_version
    selected = (validation or {}).get("selected")
    attrs.update(
        FL_GPU_COUNT=str(len(selected) if selected else len(gpus)),
        FL_GPU_NAMES=";".join(g.name or "unknown" for g in gpus),
        FL_GPU_UUIDS=";".join(g.uuid or "" for g in gpus),
        FL_GPU_MEMORY_MIB=";".join(str((g.memory_total or 0) // 2**20) for g in gpus),
        FL_DRIVER_VERSION=nvml.driver_version or "",
        FL_CUDA_VERSION=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else "",
        FL_MIG=";".join(_mig_label(g) for g in gpus),
    )
    return {k: v for k, v in attrs.items() if v != ""}


def _mig_label(gpu) -> str:
    if gpu.mig_mode is None:
        return "UNSUPPORTED"
    return "ENABLED" if gpu.mig_mode else "DISABLED"
