"""Train the reference ClientApp's model on the GPU, with and without a memory fraction, and on
the CPU: device chosen, throughput GPU against CPU, peak memory against the fraction.

    python bench/gpu_train.py [--fraction 0.25] [--samples 65536] [--out bench/results/X.json]

Runs on a CPU-only machine too: it then reports the CPU figures and why no GPU was used. The
device choice and the cap go through agent.clientapp exactly as in the ClientApp, so the
environment the agent sets (FL_GPU_MODE, CUDA_VISIBLE_DEVICES) applies here as well.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "examples" / "app")]

import torch  # noqa: E402
from fl_demo.task import load_partition, make_model, train  # noqa: E402

from agent.clientapp import apply_memory_limit, select_device  # noqa: E402

MIB = 2**20


def run(device: str, args: argparse.Namespace) -> dict:
    data = load_partition(0, args.samples)
    model = make_model()
    kwargs = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05}
    train(
        model,
        data.x_train[: args.batch_size * 4],
        data.y_train[: args.batch_size * 4],
        device=device,
        epochs=1,
        batch_size=args.batch_size,
        lr=0.05,
    )  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    result = train(model, data.x_train, data.y_train, device=device, **kwargs)
    row = {"device": device, "samples_per_s": round(result.samples_per_s), "loss": result.loss}
    if device.startswith("cuda"):
        row["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / MIB, 1)
    return row


def cap_holds(device: str, fraction: float) -> bool:
    """Whether allocating past the fraction fails, as the caching allocator cap promises."""
    total = torch.cuda.get_device_properties(device).total_memory
    try:
        block = torch.empty(
            int(total * min(fraction + 0.1, 0.95)), dtype=torch.uint8, device=device
        )
    except torch.OutOfMemoryError:
        return True
    del block
    torch.cuda.empty_cache()
    return False


def gpu_runs(choice, args: argparse.Namespace) -> dict:
    device = choice.torch_device
    total_mib = torch.cuda.get_device_properties(device).total_memory / MIB
    whole = run(device, args)
    limit = apply_memory_limit(choice, {"FL_GPU_MEMORY_FRACTION": str(args.fraction)})
    capped = run(device, args)
    capped["cap_mib"] = round(args.fraction * total_mib, 1)
    capped["cap_enforced_on_oversized_allocation"] = cap_holds(device, args.fraction)
    capped["memory_limit"] = limit.detail
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {
        "total_mib": round(total_mib),
        "whole_gpu": whole,
        "fraction": args.fraction,
        "with_fraction": capped,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--samples", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()

    choice = select_device()
    report = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "host": platform.node(),
        "device_chosen": choice.torch_device,
        "device_name": choice.name,
        "reason": choice.reason,
        "cpu": run("cpu", args),
    }
    if choice.is_gpu:
        report["gpu"] = gpu_runs(choice, args)
        report["speedup_gpu_vs_cpu"] = round(
            report["gpu"]["whole_gpu"]["samples_per_s"] / max(report["cpu"]["samples_per_s"], 1), 1
        )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
