"""Run every benchmark, then write bench/results/summary.{json,md} with the machine facts.

    python -m bench.run_all                 # all of them (about 20 minutes on 2 cores)
    python -m bench.run_all --only cli boot # some of them

Each benchmark runs in its own process (python -m bench.<name>), prints its ratios and writes
bench/results/<name>.json; the exit code is 0 only when every target is met.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import PYTHON, REPO, RESULTS, machine_facts

BENCHES = {
    "cli": (["-m", "bench.cli_startup"], ["cli_startup"]),
    "boot": (["-m", "bench.boot"], ["boot_converged", "boot_first", "boot_memory"]),
    "herd": (["-m", "bench.onegate_herd"], ["onegate_herd"]),
    "watch": (["-m", "bench.watch_budget"], ["watch_budget"]),
}
FUZZ = REPO / "bench" / "fuzz_context.sh"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=[*BENCHES, "fuzz"])
    args = parser.parse_args()
    chosen = args.only or [*BENCHES, "fuzz"]
    facts = machine_facts()
    for name, (argv, _) in BENCHES.items():
        if name in chosen:
            print(f"== {name}", flush=True)
            subprocess.run([PYTHON, *argv], cwd=REPO, check=False)
    fuzz_log = RESULTS / "fuzz_context.txt"
    if "fuzz" in chosen:
        print("== fuzz (bench/fuzz_context.sh)", flush=True)
        result = subprocess.run(["bash", str(FUZZ)], cwd=REPO, capture_output=True, text=True)
        fuzz_log.write_text(result.stdout + result.stderr + f"rc={result.returncode}\n")
    fuzz = None  # from this run or the last one
    if fuzz_log.exists():
        fuzz = fuzz_log.read_text().rstrip().endswith("rc=0")
        print("fuzz:", "passed" if fuzz else "FAILED", flush=True)
    results = {}
    for _, files in BENCHES.values():
        for stem in files:
            path = RESULTS / f"{stem}.json"
            if path.exists():
                results[stem] = json.loads(path.read_text())
    checks = [c for r in results.values() for c in r["checks"]]
    if fuzz is not None:
        checks.append(
            {
                "name": "context fuzzing, 2 x 100,000 inputs",
                "measured": "passed" if fuzz else "failed",
                "target": "no exception but AgentError",
                "passed": fuzz,
            }
        )
    summary = {"machine": facts, "checks": checks}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(markdown(facts, checks, results))
    print((RESULTS / "summary.md").read_text())
    return 0 if all(c["passed"] for c in checks) else 1


def markdown(facts: dict, checks: list[dict], results: dict) -> str:
    lines = ["# Benchmark results", "", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines += ["", "| check | measured | target | |", "|---|---|---|---|"]
    lines += [
        f"| {c['name']} | {c['measured']} | {c['target']} | {'met' if c['passed'] else 'MISSED'} |"
        for c in checks
    ]
    lines += ["", "Per benchmark: bench/results/<name>.json (every side's median, p10, p90)."]
    for stem, result in results.items():
        sides = result["data"].get("sides")
        if sides:
            lines += [
                "",
                f"## {stem}",
                "",
                "| side | median ms | p10 | p90 | runs |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {side} | {s['median_ms']} | {s['p10_ms']} | {s['p90_ms']} | {s['runs']} |"
                for side, s in sides.items()
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
