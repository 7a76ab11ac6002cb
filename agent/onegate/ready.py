"""Whether the node may say READY=YES, as the one-context package decides it.

one-context's net-99-report-ready (one-apps context-linux, the same at v6.10.0 and v7.0.0):
nothing unless REPORT_READY=YES; then, when READY_SCRIPT_PATH is set, that file is run (a path
that does not exist means no READY at all); else, when READY_SCRIPT is set, it is run by
`eval` in a subshell, base64-decoded first when it looks like base64; READY=YES only when the
script exits 0, three tries ten seconds apart. The appliance's replacement net-99 defers READY
to the agent, so the agent does the same, with one difference: an absent REPORT_READY keeps the
appliance's READY (its own templates set REPORT_READY=YES); any value but YES turns it off.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.command import RunResult, run_command
from agent.errors import Problem
from agent.paths import Root

_BASE64 = re.compile(r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ReadyPolicy:
    report: bool = True
    script_path: str | None = None
    script: bytes | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    tries: int = 3
    wait_s: float = 10.0
    timeout_s: float = 120.0

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> ReadyPolicy:
        raw = variables.get("REPORT_READY", "").strip()
        script = variables.get("READY_SCRIPT", "")
        return cls(
            report=raw == "" or raw.upper() == "YES",
            script_path=variables.get("READY_SCRIPT_PATH") or None,
            script=_decoded(script) if script else None,
            env={k: v for k, v in variables.items() if _NAME.fullmatch(k) and "\0" not in v},
        )

    def check(
        self,
        root: Root,
        run: Callable[..., RunResult] = run_command,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Problem | None:
        """None when READY=YES may be reported now; else why not."""
        if not self.report:
            return Problem("ready_not_requested", "REPORT_READY", "REPORT_READY is not YES")
        if self.script_path:
            path = root.path(self.script_path)
            if not path.exists():
                return Problem(
                    "ready_script_missing",
                    "READY_SCRIPT_PATH",
                    f"{self.script_path} does not exist: READY=YES is never reported",
                    "install the script in the image or fix READY_SCRIPT_PATH",
                )
            argv: list[str | bytes] = [str(path)]
        elif self.script is not None:
            argv = ["/bin/bash", "-c", self.script]
        else:
            return None
        outcome = ""
        for attempt in range(self.tries):
            if attempt:
                sleep(self.wait_s)
            outcome = self._run(argv, run)
            if not outcome:
                return None
        subject = "READY_SCRIPT_PATH" if self.script_path else "READY_SCRIPT"
        return Problem(
            "ready_script_failed",
            subject,
            f"{outcome} ({self.tries} tries): READY=YES not reported",
            "see the journal; the next boot or re-convergence runs it again",
        )

    def _run(self, argv: list, run: Callable[..., RunResult]) -> str:
        """'' when the script succeeded; else what happened (agent/command.py's runner: 124
        and a "timed out" line when it did not end in time, 127 when it could not start)."""
        result = run(argv, timeout=self.timeout_s, env={**os.environ, **self.env})
        if result.ok:
            return ""
        return f"exit status {result.returncode}: {result.tail(2)}"


def _decoded(script: str) -> bytes:
    """READY_SCRIPT as net-99 runs it: base64-decoded when the whole value looks like base64
    (a plain command that happens to look like it is decoded too, as there)."""
    if _BASE64.fullmatch(script):
        try:
            return base64.b64decode(script, validate=True)
        except binascii.Error:
            pass
    return script.encode()
