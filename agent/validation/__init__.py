"""Staged GPU validation, after the NVIDIA GPU Operator's validator: one module per stage.

Stages run in order: pci, driver, nvml, fabric, toolkit, container, framework. Each one judges
what `observe` read (and the container and framework stages start probe containers) and reports
`ok`, `warn`, `fail` or `skip` with a detail, a fix hint and its duration; after a failure every
later stage is `skip` naming the stage that failed.

Verdicts: FL_GPU_ENABLED=NO -> CPU_ONLY (every stage skipped); AUTO without an NVIDIA GPU on
the PCI bus -> CPU_ONLY; a GPU whose path fails -> FAILED (mode CPU); YES without a GPU ->
FAILED; every stage passed -> PASSED (mode GPU).

`evaluate` changes nothing. The markers (`stages.write_markers`) and validation.json are
written by `write` only, which `validate` (the command) and the boot's apply call. The one
repair is the toolkit's install (`agent.toolkit.ensure`); the validation then resumes from the
toolkit stage (`resume`), keeping the results of the stages before it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from agent import log
from agent.atomicfile import write_atomic
from agent.config import Config
from agent.errors import Problem
from agent.gpu import GpuFacts, Selection, collect_facts, read_nvml, resolve_devices
from agent.gpu.mig import MIG_WAIT_S, mig_tool, should_wait_for_mig, wait_for_mig
from agent.outcome import Mode, StageStatus, Verdict
from agent.paths import Root
from agent.plan import GpuVerdict, ImageFacts
from agent.stages import Check, StageResult, run_stage, skipped, write_markers
from agent.toolkit import ToolkitFacts, ToolkitResult
from agent.validation import container, driver, fabric, framework, nvml, pci, toolkit

STAGES = ("pci", "driver", "nvml", "fabric", "toolkit", "container", "framework")
REPORT_FILE = "validation.json"
FABRIC_WAIT_S = fabric.WAIT_S


@dataclass(frozen=True)
class Observed:
    """What the stages judge: the GPU facts, the toolkit's (None without a GPU), the image's."""

    gpu: GpuFacts | None  # None: not read
    toolkit: ToolkitFacts | None
    image: ImageFacts
    mig_wait: nvml.MigWait | None = None  # how long NVML was re-read for MIG instances


def observe(
    config: Config,
    root: Root,
    engine,
    image: ImageFacts | None = None,
    *,
    mig_wait_s: float = MIG_WAIT_S,
) -> Observed:
    """Read everything the stages judge (the image's facts when not given); changes nothing.

    MIG instances do not survive a reboot: when a MIG tool is installed that recreates them,
    NVML is re-read (at most `mig_wait_s`) until every MIG-mode GPU has its instances.
    """
    facts = collect_facts(root)
    tool = mig_tool(root)
    mig_wait = None
    if should_wait_for_mig(facts.nvml, tool):
        polled = wait_for_mig(read_nvml, mig_wait_s)
        facts = replace(facts, nvml=polled.value)
        mig_wait = nvml.MigWait(tool or "", polled.waited_s)
    toolkit_facts = None
    if facts.present:
        from agent import toolkit as nvidia_toolkit

        toolkit_facts = nvidia_toolkit.detect(root, engine)
    image_facts = image or _image_facts(engine, config.supernode_image)
    return Observed(facts, toolkit_facts, image_facts, mig_wait)


def _image_facts(engine, reference: str) -> ImageFacts:
    """The image's facts from the engine; absent when there is no engine to ask."""
    from agent.engine import EngineError

    if engine is None:
        return ImageFacts(reference, False)
    try:
        return engine.image(reference)
    except EngineError:
        return ImageFacts(reference, False)


@dataclass(frozen=True)
class ValidationReport:
    verdict: Verdict
    mode: Mode  # GPU | CPU
    requested: str  # FL_GPU_ENABLED: YES | NO | AUTO
    stages: tuple[StageResult, ...]
    facts: GpuFacts | None
    selected: tuple[str, ...] | None  # UUIDs handed to the container; None: all
    failed_stage: str | None = None
    problem: Problem | None = None  # the first failure; its name is the FL_ERROR class
    toolkit: dict[str, Any] | None = None  # the toolkit's facts or its install's result

    @property
    def as_requested(self) -> bool:
        """The verdict is what the configuration asks for (the CLI's exit 0)."""
        present = self.facts is not None and self.facts.present
        if self.requested == "NO" or (self.requested == "AUTO" and not present):
            return self.verdict == Verdict.CPU_ONLY
        return self.verdict == Verdict.PASSED

    @property
    def gpu(self) -> GpuVerdict:
        """What the plan needs of it."""
        selected = self.selected or ()
        return GpuVerdict(
            self.verdict,
            selected,
            self.selected is None,
            self.problem,
            self.failed_stage,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "mode": str(self.mode),
            "stages": [s.to_dict() for s in self.stages],
            "requested": self.requested,
            "failed_stage": self.failed_stage,
            "problem": self.problem.to_dict() if self.problem else None,
            "selected": list(self.selected) if self.selected is not None else None,
            "facts": self.facts.to_dict() if self.facts else None,
            "toolkit": self.toolkit,
        }


def evaluate(
    config: Config,
    observed: Observed,
    engine,
    *,
    fabric_wait_s: float = FABRIC_WAIT_S,
    names: tuple[str, ...] = STAGES,
    earlier: tuple[StageResult, ...] = (),
    repaired: ToolkitResult | None = None,
) -> ValidationReport:
    """Judge the observed facts stage by stage (the stages in `earlier` are kept as they are)."""
    facts = observed.gpu
    if not config.wants_gpu or facts is None:
        results = tuple(skipped(n, "FL_GPU_ENABLED=NO: CPU mode") for n in STAGES)
        return _report(config, observed, results, None, False, Selection(None), repaired)
    selection = _selection(config, facts)
    checks = _checks(config, observed, engine, selection, fabric_wait_s, repaired)
    no_gpu = pci.no_gpu(facts.pci, config.gpu_enabled)
    results = list(earlier)
    failed = next((r for r in earlier if r.status == StageStatus.FAIL), None)
    logger = log.get("validation")
    for name in STAGES[len(earlier) :]:
        why = _skip_reason(name, failed, no_gpu, names)
        if why is not None:
            results.append(skipped(name, why))
            continue
        result = run_stage(name, checks[name])
        results.append(result)
        logger.info("stage", stage=name, status=str(result.status), detail=result.detail[:200])
        if result.status == StageStatus.FAIL:
            failed = result
    return _report(config, observed, tuple(results), failed, no_gpu, selection, repaired)


def resume(
    config: Config,
    report: ValidationReport,
    observed: Observed,
    engine,
    stage: str,
    *,
    repaired: ToolkitResult | None = None,
    fabric_wait_s: float = FABRIC_WAIT_S,
) -> ValidationReport:
    """Validate again from `stage` on (after the toolkit install or the image pull)."""
    earlier = report.stages[: STAGES.index(stage)]
    return evaluate(
        config, observed, engine, fabric_wait_s=fabric_wait_s, earlier=earlier, repaired=repaired
    )


def _selection(config: Config, facts: GpuFacts) -> Selection:
    if facts.nvml.problem or not any(g.uuid and not g.problem for g in facts.nvml.gpus):
        return Selection(None)
    return resolve_devices(config.cuda_visible_devices, facts.nvml)


def _checks(
    config: Config,
    observed: Observed,
    engine,
    selection: Selection,
    fabric_wait_s: float,
    repaired: ToolkitResult | None,
) -> dict[str, Callable[[], Check]]:
    facts = observed.gpu
    assert facts is not None
    chosen = nvml.targets(facts.nvml, selection)
    expected = nvml.expected_uuids(facts.nvml, selection)
    allowed = {g.uuid or "" for g in chosen}
    return {
        "pci": lambda: pci.check(facts.pci, config.gpu_enabled),
        "driver": lambda: driver.check(facts.pci, facts.driver, facts.nvml),
        "nvml": lambda: nvml.check(
            facts.nvml, facts.pci, selection, facts.driver_init_failure, observed.mig_wait
        ),
        "fabric": lambda: fabric.check(
            chosen, facts.pci.nvswitches, fabric_wait_s, facts.nvml.driver_version
        ),
        "toolkit": lambda: toolkit.check(observed.toolkit or ToolkitFacts(), repaired),
        "container": lambda: container.check(
            engine, observed.image, selection.uuids, expected, allowed
        ),
        "framework": lambda: framework.check(
            engine, observed.image, facts.nvml, chosen, selection.uuids, _hook_mode(observed)
        ),
    }


def _hook_mode(observed: Observed) -> str:
    """The toolkit mode that serves Docker's --gpus (the hook's); legacy when not read."""
    return (observed.toolkit or ToolkitFacts()).resolved_mode("hook").mode


def _skip_reason(
    name: str, failed: StageResult | None, no_gpu: bool, names: tuple[str, ...]
) -> str | None:
    if failed is not None:
        return f"stage {failed.name} failed"
    if no_gpu and name != "pci":
        return "no NVIDIA GPU in this VM: CPU mode"
    return None if name in names else "not requested"


def _report(
    config: Config,
    observed: Observed,
    stages: tuple[StageResult, ...],
    failed: StageResult | None,
    no_gpu: bool,
    selection: Selection,
    repaired: ToolkitResult | None,
) -> ValidationReport:
    if not config.wants_gpu or (no_gpu and failed is None):
        verdict, mode = Verdict.CPU_ONLY, Mode.CPU
    elif failed is not None:
        verdict, mode = Verdict.FAILED, Mode.CPU
    else:
        verdict, mode = Verdict.PASSED, Mode.GPU
    if repaired is not None:
        toolkit_data = repaired.to_dict()
    else:
        toolkit_data = observed.toolkit.to_dict() if observed.toolkit else None
    return ValidationReport(
        verdict=verdict,
        mode=mode,
        requested=config.gpu_enabled,
        stages=stages,
        facts=observed.gpu,
        selected=selection.uuids if verdict == Verdict.PASSED else None,
        failed_stage=failed.name if failed else None,
        problem=failed.problem if failed else None,
        toolkit=toolkit_data,
    )


def write(root: Root, report: ValidationReport) -> None:
    """The markers of the stages that passed (the others removed) and validation.json."""
    try:
        write_markers(root.validations_dir, report.stages)
        write_atomic(root.run_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as exc:
        log.get("validation").error("validation report not written", error=str(exc))


# --- the commands: `fl-agent validate` and the stages on their own (bench/gpu_check.py)


def validate(
    config: Config,
    root: Root,
    *,
    engine=None,
    repair: bool = False,
    fabric_wait_s: float = FABRIC_WAIT_S,
    mig_wait_s: float = MIG_WAIT_S,
) -> ValidationReport:
    """Observe, evaluate, repair the toolkit when asked and it is what fails, then write."""
    engine = engine or _engine()
    observed = observe(config, root, engine, mig_wait_s=mig_wait_s)
    report = evaluate(config, observed, engine, fabric_wait_s=fabric_wait_s)
    if repair and report.failed_stage == "toolkit":
        report = repair_toolkit(config, root, report, observed, engine, fabric_wait_s)
    write(root, report)
    return report


def repair_toolkit(
    config: Config,
    root: Root,
    report: ValidationReport,
    observed: Observed,
    engine,
    fabric_wait_s: float = FABRIC_WAIT_S,
) -> ValidationReport:
    """Install the toolkit (it honours FL_TOOLKIT_INSTALL=NEVER) and validate from its stage."""
    from agent import toolkit as nvidia_toolkit

    result = nvidia_toolkit.ensure(config, root, gpu_present=True, engine=engine)
    return resume(
        config, report, observed, engine, "toolkit", repaired=result, fabric_wait_s=fabric_wait_s
    )


@dataclass(frozen=True)
class StageRun:
    """Some stages on their own (no markers, no report, no verdict): `bench/gpu_check.py`."""

    stages: tuple[StageResult, ...]
    facts: GpuFacts | None
    selected: tuple[str, ...] | None


def run_stages(
    config: Config,
    root: Root,
    names: tuple[str, ...],
    *,
    engine=None,
    fabric_wait_s: float = FABRIC_WAIT_S,
) -> StageRun:
    """Run only the named stages (the others report `skip`), never repairing anything."""
    engine = engine or _engine()
    observed = observe(config, root, engine)
    report = evaluate(config, observed, engine, fabric_wait_s=fabric_wait_s, names=names)
    selection = _selection(config, observed.gpu) if observed.gpu else Selection(None)
    return StageRun(report.stages, report.facts, selection.uuids)


def _engine():
    """The engine when it answers now, else None (the stages that need it fail)."""
    from agent.engine import Engine, EngineError

    try:
        engine = Engine.from_env()
        engine.ping()
    except EngineError:
        return None
    return engine
