"""Running an external command: bounded in time, its whole process group killed on timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str  # stdout, with stderr interleaved unless asked apart
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.output.strip().splitlines()[-lines:])


Runner = Callable[..., RunResult]  # run_command's shape: (argv, *, timeout) -> RunResult


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    merge_stderr: bool = True,
) -> RunResult:
    """Run argv in its own process group; on timeout kill the whole group (apt spawns dpkg)."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        return RunResult(127, f"{argv[0]}: {exc.strerror}")
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = _drain(proc)
        return RunResult(124, f"{out}\ntimed out after {timeout:.0f}s", err or "")
    return RunResult(proc.returncode, out, err or "")


DRAIN_S = 2.0


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """What the killed group printed; a process that left the group (`setsid cmd &`) may hold
    the pipe open forever, so the read is bounded and the pipes are closed after it."""
    try:
        return proc.communicate(timeout=DRAIN_S)
    except subprocess.TimeoutExpired:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()
        return "", ""
