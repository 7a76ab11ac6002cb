"""Real-GPU check of the watch's observations: health counters, the NVML events each GPU
registers, events seen while waiting, the summary OneGate would get, and the /dev/char links.

    python bench/gpu_health.py --out bench/results/gpu-health [--wait 10] [--reads 20]

Read-only: it creates no link and touches no container. Writes `gpu_health.json` under --out
and prints it. Exit 0 when NVML answered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.devchar import planned_links
from agent.gpu.health import NvmlEvents, read_health, summarise
from agent.paths import Root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for events")
    parser.add_argument("--reads", type=int, default=20, help="timed health reads")
    args = parser.parse_args(argv)
    facts, took = read_health(), []
    for _ in range(args.reads):
        start = time.perf_counter()
        read_health()
        took.append((time.perf_counter() - start) * 1000)
    report = {
        "facts": asdict(facts),
        "read_ms_median": round(statistics.median(took), 2) if took else None,
        **(_events(args.wait) if facts.available else {"events": [], "registered": {}}),
    }
    uuids = [g.uuid for g in facts.gpus if g.uuid]
    health = summarise(facts, [], uuids)
    report["summary"] = health.attributes()
    links = planned_links(Root())
    report["dev_char"] = {
        link.name: (link.target, Root().path(f"/dev/char/{link.name}").is_symlink())
        for link in links
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (args.out / "gpu_health.json").write_text(text + "\n")
    print(text)
    return 0 if facts.available else 1


def _events(wait_s: float) -> dict:
    seen = []
    with NvmlEvents() as events:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not events.lost:
            event = events.wait(int(min(1.0, max(deadline - time.monotonic(), 0.0)) * 1000))
            if event:
                seen.append({**asdict(event), "action": event.action})
        registered = events.registered
    return {"events": seen, "registered": registered, "lost": events.lost}


if __name__ == "__main__":
    sys.exit(main())
