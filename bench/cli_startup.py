"""`fl-agent --help` and `fl-agent status` against `python3 -c pass` (the venv's python).

Target: median <= 3x. `status` reads a real state file (a RUNNING record) under a tmp root.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import FL_AGENT, PYTHON, command, interleaved, main_guard, ratio_check, report

RECORD = {
    "agent_version": "0.1.0",
    "state": "RUNNING",
    "mode": "CPU",
    "finished_at": "2026-01-01T00:00:00Z",
    "container": {"action": "unchanged", "container_id": "0" * 64, "log_tail": []},
    "problems": [],
    "timings_ms": {"total": 200.0},
}


def run(runs: int = 200) -> dict:
    from agent.paths import Root
    from agent.state import write_state

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        assert write_state(Root(root), RECORD) is None
        stats = interleaved(
            {
                "python -c pass": command([PYTHON, "-c", "pass"]),
                "fl-agent --help": command([FL_AGENT, "--help"]),
                "fl-agent status": command([FL_AGENT, "--root", str(root), "status"]),
            },
            runs,
        )
    floor = stats["python -c pass"]
    checks = [
        ratio_check("fl-agent --help vs python -c pass", stats["fl-agent --help"], floor, 3.0),
        ratio_check("fl-agent status vs python -c pass", stats["fl-agent status"], floor, 3.0),
    ]
    return report("cli_startup", {"sides": {k: v.to_dict() for k, v in stats.items()}}, checks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    main_guard(lambda: run(parser.parse_args().runs))
