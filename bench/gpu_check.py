"""Real-GPU check: the pci, driver, nvml and fabric stages and the inventory on this machine,
and NVML detection timed against `nvidia-smi --query-gpu` for the same facts.

    python bench/gpu_check.py --out bench/results/gpu-check [--runs 20] [--visible 0]

Needs only the agent installed (its own dependency, nvidia-ml-py, provides pynvml). Writes
`gpu_check.json` and `gpu_check.txt` under --out and prints the text. On a machine without an
NVIDIA GPU it still runs and says so. Exit 0 when the stages passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import log
from agent.config import build_config
from agent.gpu import read_nvml
from agent.paths import Root
from agent.validation import run_stages

STAGES = ("pci", "driver", "nvml", "fabric")
SMI_QUERY = "name,memory.total,driver_version,pci.bus_id,uuid"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each method")
    parser.add_argument("--visible", default="", help="FL_CUDA_VISIBLE_DEVICES to resolve")
    parser.add_argument("--fabric-wait", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--root", help="root prefix for system paths (default /; tests)")
    args = parser.parse_args(argv)
    log.configure("WARNING")

    result = {"host": platform.node(), "kernel": platform.release(), "at": _now()}
    result["stages"], result["inventory"], passed = _stages(args)
    result["nvml_timing"] = _time_nvml(args.runs)
    result["smi"] = _time_smi(args.runs)
    result["cross_check"] = _cross_check(result["inventory"], result["smi"].get("rows"))
    result["ratio_smi_over_nvml"] = _ratio(result["nvml_timing"], result["smi"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    text = _text(result)
    (args.out / "gpu_check.txt").write_text(text)
    sys.stdout.write(text)
    return 0 if passed else 1


def _stages(args) -> tuple[list[dict], dict, bool]:
    variables = {"FL_GPU_ENABLED": "YES"}
    if args.visible:
        variables["FL_CUDA_VISIBLE_DEVICES"] = args.visible
    config = build_config(variables).config
    if config is None:
        raise SystemExit(f"invalid --visible {args.visible!r}")
    run = run_stages(config, Root.from_env(args.root), STAGES, fabric_wait_s=args.fabric_wait)
    stages = [
        s.to_dict() | {"problem": s.problem.to_dict() if s.problem else None}
        for s in run.stages
        if s.name in STAGES
    ]
    inventory = run.facts.to_dict() | {"selected": run.selected}
    return stages, inventory, not any(s.status == "fail" for s in run.stages)


def _time_nvml(runs: int) -> dict:
    """read_nvml() end to end (init, every query, shutdown); the first run loads the library."""
    samples = []
    for _ in range(max(runs, 1) + 1):
        started = time.perf_counter()
        facts = read_nvml()
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "available": facts.available,
        "error": facts.error,
        "first_ms": round(samples[0], 3),
        "median_ms": round(statistics.median(samples[1:]), 3),
        "runs": len(samples) - 1,
    }


def _time_smi(runs: int) -> dict:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"available": False, "error": "nvidia-smi not found on PATH"}
    argv = [smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"]
    samples, proc = [], None
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        samples.append((time.perf_counter() - started) * 1000)
    if proc is None or proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip() if proc else ""
        return {"available": False, "error": f"exit {proc.returncode if proc else '?'}: {out}"}
    keys = SMI_QUERY.split(",")
    rows = [
        dict(zip(keys, (f.strip() for f in line.split(",")), strict=False))
        for line in proc.stdout.strip().splitlines()
    ]
    return {
        "available": True,
        "median_ms": round(statistics.median(samples), 3),
        "runs": len(samples),
        "rows": rows,
    }


def _cross_check(inventory: dict, rows: list[dict] | None) -> dict:
    """NVML's facts against nvidia-smi's for each GPU, keyed by UUID."""
    gpus = {g["uuid"]: g for g in inventory["nvml"]["gpus"] if g.get("uuid")}
    if rows is None:
        return {"compared": False, "reason": "nvidia-smi gave no rows"}
    differences = []
    for row in rows:
        gpu = gpus.get(row.get("uuid"))
        if gpu is None:
            differences.append(f"{row.get('uuid')}: listed by nvidia-smi, not by NVML")
            continue
        mib = str((gpu["memory_total"] or 0) // 2**20)
        bus_id = (gpu["pci_bus_id"] or "").lower()
        pairs = {
            "name": (gpu["name"], row.get("name")),
            "memory.total MiB": (mib, row.get("memory.total")),
            "driver_version": (inventory["nvml"]["driver_version"], row.get("driver_version")),
            "pci.bus_id": (bus_id, (row.get("pci.bus_id") or "").lower()),
        }
        differences += [
            f"{gpu['uuid']} {key}: NVML {a!r} vs nvidia-smi {b!r}"
            for key, (a, b) in pairs.items()
            if a != b
        ]
    if len(rows) != len(gpus):
        differences.append(f"NVML sees {len(gpus)} GPUs, nvidia-smi {len(rows)}")
    return {"compared": True, "equal": not differences, "differences": differences}


def _ratio(nvml: dict, smi: dict) -> float | None:
    if not (nvml.get("available") and smi.get("available") and nvml["median_ms"]):
        return None
    return round(smi["median_ms"] / nvml["median_ms"], 1)


def _text(result: dict) -> str:
    lines = [f"gpu_check on {result['host']} (kernel {result['kernel']}) at {result['at']}"]
    for stage in result["stages"]:
        head = f"[{stage['status'].upper():>4}] {stage['name']} ({stage['duration_ms']} ms)"
        lines.append(f"{head}: {stage['detail']}")
        if stage["hint"]:
            lines.append(f"       FIX: {stage['hint']}")
    nvml, smi = result["nvml_timing"], result["smi"]
    state = "ok" if nvml["available"] else nvml["error"]
    lines.append(
        f"NVML detection: {state}, first {nvml['first_ms']} ms, "
        f"median {nvml['median_ms']} ms over {nvml['runs']} runs"
    )
    if smi.get("available"):
        lines.append(
            f"nvidia-smi --query-gpu: median {smi['median_ms']} ms over {smi['runs']} runs"
        )
    else:
        lines.append(f"nvidia-smi: {smi['error']}")
    ratio = result["ratio_smi_over_nvml"]
    lines.append(f"nvidia-smi / NVML: {ratio}x" if ratio else "nvidia-smi / NVML: not comparable")
    check = result["cross_check"]
    if check["compared"]:
        lines.append("cross-check: same facts" if check["equal"] else "cross-check differences:")
        lines += [f"  {d}" for d in check["differences"]]
    else:
        lines.append(f"cross-check: not done ({check['reason']})")
    return "\n".join(lines) + "\n"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


if __name__ == "__main__":
    sys.exit(main())
