"""What a periodic re-convergence observes in place of the staged validation.

The staged validation (probe containers, a torch CUDA check, the toolkit repair) runs at boot
and on reconfigure only: on GPUs busy training, a probe can fail for a transient reason (a full
card, EXCLUSIVE_PROCESS, a fabric blip) and its verdict would swap the GPU container for a CPU
one mid-round. After boot the mode stays the one the last boot established (its state file);
only a confirmed loss of the GPUs the container was given changes it:

- the watch's record (watch.json, `gpu_loss.confirmed`: NVML said lost or gone on 3 consecutive
  ticks, docs/gpu-health.md), of this VM boot only (a reboot resets the GPUs);
- NVML on the host, read once here (never a probe container, never a CUDA context): a given GPU
  that NVML no longer lists (gone), or NVML_ERROR_GPU_IS_LOST (fallen off the bus). Neither is
  transient: a passthrough GPU comes back only with a VM reboot. An NVML that does not answer
  at all counts neither way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.errors import Problem
from agent.gpu.health import HealthFacts
from agent.outcome import READY, BootState, Mode
from agent.paths import Root
from agent.plan import Established
from agent.state import read_json_object

WATCH_STATE_FILE = "watch.json"  # agent/watch.py's state, under the state directory


def established(
    root: Root, record: dict[str, Any] | None, read_health: Callable[[], HealthFacts]
) -> Established | None:
    """The mode the last boot left running, with any loss since; None when nothing runs (no
    record, a FAILED one): nothing is in use then, and the validation may run."""
    record = record or {}
    if record.get("state") not in {str(s) for s in READY}:
        return None
    mode = record.get("mode")
    if mode == Mode.CPU:
        degraded = record["state"] == BootState.DEGRADED
        return Established(Mode.CPU, problem=_first_problem(record) if degraded else None)
    if mode != Mode.GPU:
        return None
    plan = record.get("plan")
    spec = (plan.get("spec") if isinstance(plan, dict) else None) or {}
    uuids = tuple(spec.get("gpu_device_ids") or ())
    expected = uuids or inventory(record)
    lost = watch_confirmed_loss(root) or host_loss(read_health(), expected)
    return Established(Mode.GPU, uuids, not uuids, lost=lost)


def inventory(record: dict[str, Any]) -> tuple[str, ...]:
    """Every GPU the boot's validation saw (a container given all of them)."""
    validation = record.get("validation") or {}
    gpus = ((validation.get("facts") or {}).get("nvml") or {}).get("gpus") or ()
    return tuple(g["uuid"] for g in gpus if g.get("uuid"))


def _first_problem(record: dict) -> Problem | None:
    """The first problem of a recorded DEGRADED boot, as the record keeps it (None when the
    record holds none in that shape)."""
    problems = record.get("problems")
    first = problems[0] if isinstance(problems, list) and problems else None
    try:
        return Problem(**first) if isinstance(first, dict) else None
    except TypeError:
        return None


def host_loss(facts: HealthFacts, expected: tuple[str, ...]) -> tuple[str, ...]:
    """The expected GPUs NVML reports gone or lost now (all of them when one is lost: NVML
    may not name a lost GPU); empty when NVML did not answer."""
    if not facts.available or facts.problem or not expected:
        return ()
    listed = {g.uuid for g in facts.gpus if not g.lost}
    missing = tuple(u for u in expected if u not in listed)
    if missing:
        return missing
    return expected if any(g.lost for g in facts.gpus) else ()


def watch_confirmed_loss(root: Root) -> tuple[str, ...]:
    """The GPUs whose loss the watch confirmed during this VM boot (empty: none)."""
    state = read_json_object(root.state_dir / WATCH_STATE_FILE)
    if state is None or state.get("boot_id", "") != boot_id(root):
        return ()
    loss = state.get("gpu_loss") or {}
    return tuple(loss.get("uuids") or ()) if loss.get("confirmed") else ()


def boot_id(root: Root) -> str:
    """The kernel's boot id, as the watch records it ("" when unreadable)."""
    try:
        return (root.proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
