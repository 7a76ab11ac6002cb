"""Stage toolkit: the NVIDIA Container Toolkit installed, its hook registered by dockerd (on
dockerd's PATH when it started: `agent.toolkit_modes.gpus_path`), and a mode the hook serves.

It reads the toolkit's facts (`agent.toolkit.detect`, taken by observe) or, after the one
repair a boot makes, the install's result (`agent.toolkit.ensure`, run by apply).
"""

from __future__ import annotations

from agent.errors import Problem
from agent.outcome import StageStatus
from agent.stages import Check
from agent.toolkit import ToolkitFacts, ToolkitResult

_NOT_READY = Problem(
    "toolkit_not_ready",
    "nvidia-container-toolkit",
    "the toolkit is not ready",
    "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker",
)
_REPAIR_FIX = "; `fl-agent validate --repair` installs it as boot does"


def check(facts: ToolkitFacts, repaired: ToolkitResult | None = None) -> Check:
    if repaired is not None:
        facts, problem, action = repaired.facts, repaired.problem, repaired.action
    else:
        problem, action = (facts.problems[0] if facts.problems else None), "detected, no repair"
    if problem is not None or not facts.ready:
        problem = problem or _NOT_READY
        if repaired is None:
            problem = Problem(
                problem.name, problem.subject, problem.message, problem.fix + _REPAIR_FIX
            )
        return Check.failed(problem, action)
    hook = facts.resolved_mode("hook")
    detail = (
        f"{action}: nvidia-ctk at {facts.ctk_path}, hook at {facts.hook_path} (on dockerd's PATH "
        f"since before it started), runtime mode {facts.mode}, --gpus hook mode {hook.mode} "
        f"({hook.reason}), engine runtimes: {', '.join(facts.engine_runtimes) or 'not asked'}"
    )
    return Check(StageStatus.OK, detail)
