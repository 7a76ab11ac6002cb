"""FL_CUDA_VISIBLE_DEVICES against the GPUs NVML sees: every entry becomes a UUID.

Indices are NVML's (what `nvidia-smi` shows), which CUDA's numbering may not follow, so they are
resolved to UUIDs here and only UUIDs travel on (to the container's device request and its
CUDA_VISIBLE_DEVICES). The NVIDIA toolkit accepts `GPU-<uuid>` and, since driver 470,
`MIG-<uuid>`; the legacy `MIG-GPU-<uuid>/<gi>/<ci>` form is translated to the latter.

A CUDA process enumerates one MIG device only, however many the container is given (NVIDIA's
MIG user guide, CUDA 11 and 12): several MIG devices for one SuperNode leave all but the first
idle unless each ClientApp process is pinned to its own (CUDA_VISIBLE_DEVICES=MIG-<uuid>).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.config import DeviceSelector
from agent.errors import Problem
from agent.gpu.nvml import NvmlFacts, NvmlGpu

SUBJECT = "FL_CUDA_VISIBLE_DEVICES"
_LEGACY_MIG = re.compile(r"^MIG-(GPU-[0-9a-fA-F-]+)/(\d+)/(\d+)$")


@dataclass(frozen=True)
class Selection:
    uuids: tuple[str, ...] | None  # None: all GPUs (the config asked for all)
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()  # the selection works, but not as one might expect

    @property
    def ok(self) -> bool:
        return not self.problems


def resolve_devices(selectors: tuple[DeviceSelector, ...] | None, nvml: NvmlFacts) -> Selection:
    """Resolve the configured selectors to GPU/MIG UUIDs; each bad entry is a Problem naming it."""
    if selectors is None:
        every_mig = [m.uuid for g in nvml.gpus for m in g.mig_devices]
        return Selection(None, (), _one_mig_per_process(every_mig))
    gpus = [g for g in nvml.gpus if g.uuid]
    uuids: list[str] = []
    problems: list[Problem] = []
    for selector in selectors:
        uuid, problem = _resolve(selector, gpus)
        if problem:
            problems.append(problem)
        elif uuid not in uuids:
            uuids.append(uuid)
    if not problems:
        problems.extend(_unhonourable(uuids, gpus))
    return Selection(tuple(uuids), tuple(problems), _one_mig_per_process(uuids))


def _one_mig_per_process(uuids: list[str]) -> tuple[Problem, ...]:
    migs = [u for u in uuids if u.startswith("MIG-")]
    if len(migs) < 2:
        return ()
    return (
        Problem(
            "mig_one_device_per_process",
            SUBJECT,
            f"{len(migs)} MIG devices selected ({', '.join(migs)}) for one SuperNode, but a "
            f"CUDA process sees only one MIG device: its ClientApps would all use {migs[0]} "
            "and leave the others idle",
            "select one MIG device per SuperNode (one VM or node per MIG device), or pin each "
            "ClientApp process to its own device with CUDA_VISIBLE_DEVICES=MIG-<uuid>",
        ),
    )


def _resolve(selector: DeviceSelector, gpus: list[NvmlGpu]) -> tuple[str, Problem | None]:
    entry = selector.value
    if selector.kind == "index":
        index = int(entry)
        match = next((g for g in gpus if g.index == index), None)
        if match is None:
            return "", _bad(entry, f"GPU index {index} is out of range: NVML sees {_count(gpus)}")
        return match.uuid or "", None
    if selector.kind == "gpu_uuid":
        if any(g.uuid and g.uuid.lower() == entry.lower() for g in gpus):
            return next(g.uuid for g in gpus if g.uuid and g.uuid.lower() == entry.lower()), None
        return "", _bad(entry, f"no GPU with UUID {entry}: NVML sees {_uuids(gpus)}")
    return _resolve_mig(entry, gpus)


def _resolve_mig(entry: str, gpus: list[NvmlGpu]) -> tuple[str, Problem | None]:
    legacy = _LEGACY_MIG.match(entry)
    for gpu in gpus:
        for mig in gpu.mig_devices:
            if mig.uuid.lower() == entry.lower():
                return mig.uuid, None
            if (
                legacy
                and gpu.uuid
                and gpu.uuid.lower() == legacy.group(1).lower()
                and (mig.gpu_instance_id, mig.compute_instance_id)
                == (int(legacy.group(2)), int(legacy.group(3)))
            ):
                return mig.uuid, None
    if not any(g.mig_mode for g in gpus):
        return "", _bad(
            entry,
            f"MIG device {entry} selected but MIG mode is off on every GPU",
            "enable MIG and create the instances (nvidia-smi -mig 1; nvidia-smi mig -cgi ... -C), "
            "or select full GPUs by index or GPU-<uuid>",
        )
    known = [m.uuid for g in gpus for m in g.mig_devices] or ["none"]
    return "", _bad(entry, f"no MIG device {entry}: the MIG devices are {', '.join(known)}")


def _unhonourable(uuids: list[str], gpus: list[NvmlGpu]) -> list[Problem]:
    """Combinations the toolkit cannot give a container as asked."""
    migs = [u for u in uuids if u.startswith("MIG-")]
    full = [u for u in uuids if u.startswith("GPU-")]
    problems = []
    if migs and full:
        problems.append(
            _bad(
                ",".join(uuids),
                f"MIG devices ({', '.join(migs)}) mixed with full GPUs ({', '.join(full)})",
                "select either MIG devices or full GPUs, not both",
            )
        )
    for gpu in gpus:
        parent_migs = {m.uuid for m in gpu.mig_devices}
        if gpu.uuid in full and gpu.mig_mode:
            detail = "it has no MIG devices" if not parent_migs else "select its MIG devices"
            problems.append(
                _bad(
                    gpu.uuid or "",
                    f"GPU {gpu.index} ({gpu.uuid}) is in MIG mode: CUDA cannot use it whole; "
                    + detail,
                    "select its MIG-<uuid> devices (nvidia-smi -L), or disable MIG on it",
                )
            )
    return problems


def _bad(entry: str, message: str, fix: str = "") -> Problem:
    return Problem(
        "gpu_selection_invalid",
        SUBJECT,
        f"entry {entry!r}: {message}",
        fix or "use indices, GPU-<uuid> or MIG-<uuid> values from `nvidia-smi -L`, or all",
    )


def _count(gpus: list[NvmlGpu]) -> str:
    n = len(gpus)
    return f"{n} GPU{'s' if n != 1 else ''}" + (f" (0..{n - 1})" if n else "")


def _uuids(gpus: list[NvmlGpu]) -> str:
    return ", ".join(g.uuid or "?" for g in gpus) or "none"
