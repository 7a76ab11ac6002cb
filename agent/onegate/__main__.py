"""`python -m agent.onegate flush`: re-send the queued OneGate report, then exit.

Run by fl-agent-onegate-resend.timer every 45 s at the VM's own phase (its boot time) while a
report waits: the unit's ConditionPathExistsGlob skips the run when the queue is empty. Reads
only the OneGate variables of the context (endpoint, VMID, token): FL_* values play no part.
Exit 0: nothing waits any more; 3: a report still waits (the next tick tries again); 1: no
context or no usable OneGate settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent import log
from agent.errors import AgentError
from agent.paths import Root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.onegate", description=__doc__)
    parser.add_argument("command", choices=["flush"])
    parser.add_argument("--root", help="root prefix (default $FL_AGENT_ROOT or /)")
    parser.add_argument("--context-file", type=Path)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds (default 20)")
    args = parser.parse_args(argv)
    log.configure("INFO")
    root = Root.from_env(args.root)
    from agent.onegate.reporter import Reporter, queue_dir

    if not any(queue_dir(root).glob("*.json")):
        return 0
    from agent.context import load_context

    try:
        context = load_context(root, args.context_file)
    except AgentError as exc:
        log.get("onegate").error("onegate_resend_no_context", problem=str(exc.first))
        return 1
    reporter = Reporter.from_context(context, root, total_timeout_s=args.timeout)
    if not reporter.enabled:
        return 1
    reporter.flush()
    return 3 if reporter.pending() else 0


if __name__ == "__main__":
    raise SystemExit(main())
