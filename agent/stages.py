"""Named stages: one result type, one timed runner and the marker files (validate, host-check).

A stage is a function that returns a `Check` (status, detail, the fix as `hint`, and the
problem behind a failure). `run_stage` times it and turns a crash into a failed stage, so one
broken check never takes the command down. Like the NVIDIA GPU Operator's validator, a stage
that passed leaves a marker file `<stage>-ready` for others to read; `write_markers` writes the
markers of the stages that passed and removes the others, so no consumer reads a stale "ready".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.atomicfile import write_atomic
from agent.errors import Problem
from agent.outcome import StageStatus, problem


@dataclass(frozen=True)
class Check:
    """What one stage found."""

    status: StageStatus
    detail: str
    hint: str = ""
    problem: Problem | None = None

    @classmethod
    def failed(cls, cause: Problem, context: str = "") -> Check:
        """A failed stage: the problem's message first, then what the stage saw."""
        detail = f"{cause.message}; {context}" if context else cause.message
        return cls(StageStatus.FAIL, detail, cause.fix, cause)


@dataclass(frozen=True)
class StageResult:
    name: str
    status: StageStatus
    detail: str
    hint: str = ""
    duration_ms: float = 0.0
    problem: Problem | None = None
    ran: bool = True  # False: skipped without running (an earlier failure, not requested)

    @property
    def passed(self) -> bool:
        """It ran and did not fail (a stage may itself say `skip`: not needed here)."""
        return self.ran and self.status != StageStatus.FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "hint": self.hint,
            "duration_ms": self.duration_ms,
        }


def skipped(name: str, why: str) -> StageResult:
    return StageResult(name, StageStatus.SKIP, why, ran=False)


def run_stage(name: str, stage: Callable[..., Check], *args: Any) -> StageResult:
    """Run one stage, timed; a crash is a failed stage, never an exception."""
    started = time.monotonic()
    try:
        check = stage(*args)
    except Exception as exc:
        from agent import log

        log.get("stages").exception("stage crashed", stage=name)
        check = Check.failed(problem("validation_error", name, f"the {name} stage: {exc!r}"))
    duration = round((time.monotonic() - started) * 1000, 1)
    return StageResult(name, check.status, check.detail, check.hint, duration, check.problem)


def marker_path(directory: Path, stage: str) -> Path:
    return directory / f"{stage}-ready"


def write_markers(directory: Path, results: Iterable[StageResult]) -> None:
    """A marker for every stage that passed; none for the others (removed when left over)."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for result in results:
        path = marker_path(directory, result.name)
        if result.passed:
            write_atomic(path, json.dumps({**result.to_dict(), "at": at}) + "\n")
        else:
            path.unlink(missing_ok=True)
