"""Stage nvml: the GPUs NVML reports, the selection (FL_CUDA_VISIBLE_DEVICES), MIG."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import Problem
from agent.gpu import NvmlFacts, NvmlGpu, Selection
from agent.gpu.pci import PciFacts
from agent.outcome import StageStatus
from agent.stages import Check
from agent.validation.wording import TEMPLATE_FIX, plural, size


@dataclass(frozen=True)
class MigWait:
    """NVML was re-read for MIG instances that the MIG tool recreates after a reboot."""

    tool: str
    waited_s: float


def targets(nvml: NvmlFacts, selection: Selection) -> list[NvmlGpu]:
    """The GPUs the container will get: the selected ones, or every readable one."""
    gpus = [g for g in nvml.gpus if g.uuid and not g.problem]
    if selection.uuids is None:
        return gpus
    chosen = set(selection.uuids)
    return [g for g in gpus if g.uuid in chosen or chosen & {m.uuid for m in g.mig_devices}]


def expected_uuids(nvml: NvmlFacts, selection: Selection) -> tuple[str, ...]:
    """What `nvidia-smi -L` in the container must list."""
    if selection.uuids is not None:
        return selection.uuids
    out: list[str] = []
    for gpu in targets(nvml, selection):
        out.append(gpu.uuid or "")
        out.extend(m.uuid for m in gpu.mig_devices)
    return tuple(out)


def check(
    nvml: NvmlFacts,
    pci: PciFacts,
    selection: Selection,
    init_failure: Problem | None = None,
    mig_wait: MigWait | None = None,
) -> Check:
    """`init_failure`: RmInitAdapter in the kernel log, named instead of NVML's Unknown Error."""
    if nvml.problem:
        return Check.failed(init_failure or nvml.problem)
    lost = [g for g in nvml.gpus if g.problem]
    usable = [g for g in nvml.gpus if g.uuid and not g.problem]
    if not usable:
        if lost and lost[0].problem:
            return Check.failed(init_failure or lost[0].problem)
        return Check.failed(
            Problem(
                "gpu_not_visible",
                "nvml",
                "NVML sees no GPU although the configuration asks for one",
                "check the kernel log for NVRM errors; " + TEMPLATE_FIX,
            )
        )
    detail = _inventory(nvml, selection)
    if not selection.ok:
        more = "; ".join(p.message for p in selection.problems[1:])
        return Check.failed(selection.problems[0], detail + (f"; also: {more}" if more else ""))
    return _warnings(nvml, pci, selection, detail, lost, mig_wait)


def _warnings(
    nvml: NvmlFacts,
    pci: PciFacts,
    selection: Selection,
    detail: str,
    lost: list[NvmlGpu],
    mig_wait: MigWait | None,
) -> Check:
    chosen = targets(nvml, selection)
    empty_mig = [g for g in chosen if g.mig_mode and not g.mig_devices]
    if empty_mig and len(empty_mig) == len(chosen):
        waited = (
            f" (waited {mig_wait.waited_s:.0f}s for {mig_wait.tool} to create them)"
            if mig_wait
            else ""
        )
        return Check.failed(
            Problem(
                "mig_no_instances",
                empty_mig[0].uuid or "",
                f"MIG mode is on for {', '.join(g.uuid or '' for g in empty_mig)} but no MIG "
                f"device exists{waited}: CUDA sees nothing there",
                "create the instances (`nvidia-smi mig -cgi <profiles> -C`; they do not survive "
                "a reboot) or disable MIG (`nvidia-smi -mig 0`)",
            ),
            detail,
        )
    warnings = [(f"GPU {g.index}: {g.problem.message}", g.problem.fix) for g in lost if g.problem]
    warnings += [(p.message, p.fix) for p in selection.warnings]
    warnings += [
        (f"GPU {g.index} has MIG on but no MIG device", "create MIG instances or disable MIG")
        for g in empty_mig
    ]
    warnings += [
        (f"GPU {g.index} has a MIG mode change pending", "reset the GPU or reboot the VM")
        for g in chosen
        if g.mig_pending is not None and g.mig_pending != g.mig_mode
    ]
    bound = [g for g in pci.gpus if g.driver == "nvidia"]
    if len(bound) > len(nvml.gpus):
        seen = f"NVML sees {len(nvml.gpus)} of {len(bound)} GPUs bound to nvidia"
        warnings.append((seen, "read the kernel log for NVRM errors"))
    if warnings:
        texts, hints = zip(*warnings, strict=True)
        hint = "; ".join(dict.fromkeys(hints))
        return Check(StageStatus.WARN, f"{detail}; {'; '.join(texts)}", hint)
    return Check(StageStatus.OK, detail)


def _inventory(nvml: NvmlFacts, selection: Selection) -> str:
    gpus = "; ".join(_gpu_line(g) for g in nvml.gpus)
    chosen = "all" if selection.uuids is None else ", ".join(selection.uuids) or "none"
    return (
        f"driver {nvml.driver_version}, CUDA {nvml.cuda_version or '?'}; "
        f"{plural(len(nvml.gpus), 'GPU')}: {gpus}; selected: {chosen}"
    )


def _gpu_line(gpu: NvmlGpu) -> str:
    if gpu.problem:
        return f"{gpu.index} unreadable ({gpu.problem.name})"
    text = (
        f"{gpu.index} {gpu.name} {gpu.uuid} at {gpu.pci_bus_id}, {size(gpu.memory_total or 0)}, "
        f"cc {gpu.compute_capability or '?'}"
    )
    if gpu.mig_mode:
        text += f", MIG on [{', '.join(m.uuid for m in gpu.mig_devices) or 'no devices'}]"
    return text
