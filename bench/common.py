"""What every benchmark shares: side-by-side timing, statistics, machine facts, results.

Commands are timed interleaved (A B C, A B C, ...; the order rotates each round), so a noisy
neighbour or a frequency change hits every side alike; the ratios compare medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PYTHON = str(REPO / ".venv" / "bin" / "python")
FL_AGENT = str(REPO / ".venv" / "bin" / "fl-agent")
STANDIN_IMAGE = "fl-agent-test/supernode-standin:ok"
PYCACHE = "/tmp/fl-agent-bench-pycache"


def bench_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every timed command: bytecode cached (outside the tree), as on an
    installed system (pip compiles at install), whatever PYTHONDONTWRITEBYTECODE says here."""
    out = {k: v for k, v in (env or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**out, "PYTHONPYCACHEPREFIX": PYCACHE}


@dataclass(frozen=True)
class Stats:
    median: float
    p10: float
    p90: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        ordered = sorted(samples)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return cls(statistics.median(ordered), pick(0.1), pick(0.9), len(ordered))

    def to_dict(self) -> dict:
        return {
            "median_ms": round(self.median * 1000, 2),
            "p10_ms": round(self.p10 * 1000, 2),
            "p90_ms": round(self.p90 * 1000, 2),
            "runs": self.runs,
        }


Step = Callable[[], None]


def interleaved(
    sides: Mapping[str, Step], runs: int, *, before: Mapping[str, Step] | None = None
) -> dict[str, Stats]:
    """Time each side `runs` times, interleaved, after one untimed warm-up round (bytecode,
    page cache); `before[name]` runs untimed before each run."""
    samples: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for name in names:
        if before and name in before:
            before[name]()
        sides[name]()
    for i in range(runs):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if before and name in before:
                before[name]()
            start = time.perf_counter()
            sides[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: Stats.of(values) for name, values in samples.items()}


def command(argv: list[str], env: Mapping[str, str] | None = None, ok=(0,)) -> Step:
    """A step that runs `argv` to completion (in `bench_env`) and checks its exit code."""
    clean = bench_env(env)

    def step() -> None:
        result = subprocess.run(argv, env=clean, capture_output=True, check=False)
        if result.returncode not in ok:
            raise RuntimeError(f"{argv} exited {result.returncode}: {result.stderr[-800:]!r}")

    return step


def machine_facts() -> dict[str, str]:
    """What the numbers depend on, written beside them."""

    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu,
        "cpu_cores": str(os.cpu_count()),
        "memory_gib": f"{mem_kib / 2**20:.1f}",
        "kernel": platform.release(),
        "docker_version": out("docker", "version", "--format", "{{.Server.Version}}"),
        "python_version": out(PYTHON, "--version").removeprefix("Python "),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


@dataclass
class Check:
    """One target: what was measured against what, and whether it holds."""

    name: str
    measured: str
    target: str
    passed: bool

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "measured": self.measured,
            "target": self.target,
            "passed": self.passed,
        }


def ratio_check(name: str, value: Stats, floor: Stats, limit: float) -> Check:
    ratio = value.median / floor.median
    return Check(name, f"{ratio:.2f}x", f"<= {limit}x", ratio <= limit)


def report(bench: str, data: dict, checks: list[Check]) -> dict:
    """Print the checks and write bench/results/<bench>.json; the result for run_all."""
    for check in checks:
        mark = "PASS" if check.passed else "MISS"
        print(f"[{mark}] {check.name}: {check.measured} (target {check.target})", flush=True)
    result = {
        "bench": bench,
        "machine": machine_facts(),
        "checks": [c.to_dict() for c in checks],
        "data": data,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{bench}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def exit_code(result: dict) -> int:
    return 0 if all(c["passed"] for c in result["checks"]) else 1


def main_guard(run: Callable[[], dict]) -> None:
    sys.exit(exit_code(run()))
