"""Staged GPU validation, after the NVIDIA GPU Operator's validator (gpu-stack.md sections 1, 8).

Stages run in order: pci, driver, nvml, fabric, toolkit, container, framework. Each one checks
something real and reports `ok`, `warn`, `fail` or `skip` with a detail, a fix hint and its
duration; after a failure every later stage is `skip` naming the stage that failed. Like the
operator's `*-ready` files, each stage's marker under /run/fl-agent/validations/ is removed
before the stages run and written (atomically) only when the stage passes, so a consumer never
reads a stale "ready". One JSON report lands in /run/fl-agent/validation.json.

Verdicts: FL_GPU_ENABLED=NO -> CPU_ONLY (every stage skipped); AUTO without an NVIDIA GPU on
the PCI bus -> CPU_ONLY; a GPU whose path fails -> FAILED (mode CPU); YES without a GPU ->
FAILED; every stage passed -> PASSED (mode GPU). The one repair (`repair=True`) is the
toolkit's install, through `agent.toolkit.ensure`; `repair=False` changes nothing.

NVML is read once, in the driver stage (the module's version is compared with NVML's there), so
that stage's duration includes NVML's initialisation and the nvml stage only interprets it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent import log
from agent.atomicfile import write_atomic
from agent.config import Config
from agent.errors import Problem
from agent.gpu import GpuFacts, NvmlGpu, Selection, read_driver, read_nvml, resolve_devices
from agent.gpu import probe as gpu_probe
from agent.gpu.driver import DriverFacts
from agent.gpu.nvml import Fabric, NvmlFacts
from agent.gpu.pci import PciFacts, PciGpu, scan_pci
from agent.paths import Root

STAGES = ("pci", "driver", "nvml", "fabric", "toolkit", "container", "framework")
REPORT_FILE = "validation.json"
FABRIC_WAIT_S = 60.0
FABRIC_POLL_S = 1.0
GIB = 2**30

_VFIO_FIX = (
    "inside the VM the GPU must be bound to the nvidia driver: remove the vfio-pci binding "
    "(`driverctl unset-override {addr}`, vfio-pci ids in /etc/modprobe.d and the initramfs), "
    "install the NVIDIA driver and reboot; vfio-pci belongs on the KVM host, not in the guest"
)
_NOUVEAU_FIX = (
    "blacklist nouveau (/etc/modprobe.d/blacklist-nouveau.conf: `blacklist nouveau` and "
    "`options nouveau modeset=0`), `update-initramfs -u`, install the NVIDIA driver, reboot"
)
_TEMPLATE_FIX = (
    "check the VM template: OS=[FIRMWARE=UEFI], FEATURES=[MACHINE=q35], "
    "CPU_MODEL=[MODEL=host-passthrough] and enough 64-bit MMIO for the GPU's BARs"
)


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    hint: str = ""
    duration_ms: float = 0.0
    problem: Problem | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "hint": self.hint,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class ValidationReport:
    verdict: str  # PASSED | FAILED | CPU_ONLY
    mode: str  # GPU | CPU
    requested: str  # FL_GPU_ENABLED: YES | NO | AUTO
    stages: tuple[StageResult, ...]
    facts: GpuFacts
    selected: tuple[str, ...] | None  # UUIDs handed to the container; None: all
    failed_stage: str | None = None
    problem: Problem | None = None  # the first failure; its name is the FL_ERROR class
    toolkit: dict[str, Any] | None = None  # the toolkit stage's facts or install result

    @property
    def as_requested(self) -> bool:
        """The verdict is what the configuration asks for (the CLI's exit 0)."""
        if self.requested == "NO":
            return self.verdict == "CPU_ONLY"
        if self.requested == "AUTO" and not self.facts.present:
            return self.verdict == "CPU_ONLY"
        return self.verdict == "PASSED"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "mode": self.mode,
            "stages": [s.to_dict() for s in self.stages],
            "requested": self.requested,
            "failed_stage": self.failed_stage,
            "problem": self.problem.to_dict() if self.problem else None,
            "selected": list(self.selected) if self.selected is not None else None,
            "facts": self.facts.to_dict(),
            "toolkit": self.toolkit,
        }


@dataclass(frozen=True)
class _Outcome:
    status: str
    detail: str
    hint: str = ""
    problem: Problem | None = None


def _fail(problem: Problem, context: str = "") -> _Outcome:
    """A failed stage: the problem's message first, then what the stage saw."""
    detail = f"{problem.message}; {context}" if context else problem.message
    return _Outcome("fail", detail, problem.fix, problem)


@dataclass
class _Run:
    """One validation: the inputs and the facts as the stages read them."""

    config: Config
    root: Root
    client: Any
    repair: bool
    fabric_wait_s: float
    pci: PciFacts | None = None
    driver: DriverFacts | None = None
    nvml: NvmlFacts | None = None
    selection: Selection = field(default_factory=lambda: Selection(None))
    no_gpu: bool = False  # AUTO and no NVIDIA GPU on the bus: CPU mode, not a failure
    toolkit: dict[str, Any] | None = None

    def facts(self) -> GpuFacts:
        """All facts for the report, reading what no stage read."""
        return GpuFacts(
            self.pci or scan_pci(self.root),
            self.driver or read_driver(self.root),
            self.nvml or read_nvml(),
        )

    def targets(self) -> list[NvmlGpu]:
        """The GPUs the container will get: the selected ones, or every readable one."""
        gpus = [g for g in (self.nvml.gpus if self.nvml else ()) if g.uuid and not g.problem]
        if self.selection.uuids is None:
            return gpus
        chosen = set(self.selection.uuids)
        return [g for g in gpus if g.uuid in chosen or chosen & {m.uuid for m in g.mig_devices}]

    def expected_uuids(self) -> tuple[str, ...]:
        """What `nvidia-smi -L` in the container must list."""
        if self.selection.uuids is not None:
            return self.selection.uuids
        out: list[str] = []
        for gpu in self.targets():
            out.append(gpu.uuid or "")
            out.extend(m.uuid for m in gpu.mig_devices)
        return tuple(out)


def validate(
    config: Config,
    root: Root,
    *,
    docker_client=None,
    repair: bool = True,
    fabric_wait_s: float = FABRIC_WAIT_S,
) -> ValidationReport:
    """Run every stage, keep the markers in step, write the report and return it."""
    run = _Run(config, root, docker_client, repair, fabric_wait_s)
    _clear_markers(root)
    results, failed = _execute(run, markers=True)
    report = _report(run, results, failed)
    _write_report(root, report)
    return report


@dataclass(frozen=True)
class StageRun:
    """Some stages run on their own (no markers, no report, no verdict): `bench/gpu_check.py`."""

    stages: tuple[StageResult, ...]
    facts: GpuFacts
    selected: tuple[str, ...] | None


def run_stages(
    config: Config,
    root: Root,
    names: tuple[str, ...],
    *,
    docker_client=None,
    fabric_wait_s: float = FABRIC_WAIT_S,
) -> StageRun:
    """Run only the named stages (the others report `skip`), never repairing anything."""
    run = _Run(config, root, docker_client, False, fabric_wait_s)
    results, _failed = _execute(run, markers=False, names=names)
    return StageRun(results, run.facts(), run.selection.uuids)


def _execute(
    run: _Run, *, markers: bool, names: tuple[str, ...] = STAGES
) -> tuple[tuple[StageResult, ...], StageResult | None]:
    logger = log.get("validation")
    results: list[StageResult] = []
    failed: StageResult | None = None
    for name in STAGES:
        skip = _skip_reason(run, name, failed) or (None if name in names else "not requested")
        if skip is not None:
            results.append(StageResult(name, "skip", skip))
            continue
        result = _timed(name, _STAGE_FUNCTIONS[name], run)
        results.append(result)
        logger.info("stage", stage=name, status=result.status, detail=result.detail[:200])
        if result.status == "fail":
            failed = result
        elif markers:
            _write_marker(run.root, result)
    return tuple(results), failed


def _skip_reason(run: _Run, name: str, failed: StageResult | None) -> str | None:
    if not run.config.wants_gpu:
        return "FL_GPU_ENABLED=NO: CPU mode"
    if failed is not None:
        return f"stage {failed.name} failed"
    if run.no_gpu:
        return "no NVIDIA GPU in this VM: CPU mode"
    return None


def _timed(name: str, stage: Callable[[_Run], _Outcome], run: _Run) -> StageResult:
    started = time.monotonic()
    try:
        outcome = stage(run)
    except Exception as exc:  # a stage must never take the boot down with it
        log.get("validation").exception("stage crashed", stage=name)
        outcome = _fail(
            Problem("validation_error", name, f"the {name} stage crashed: {exc!r}", "report a bug")
        )
    duration = round((time.monotonic() - started) * 1000, 1)
    return StageResult(
        name, outcome.status, outcome.detail, outcome.hint, duration, outcome.problem
    )


def _report(
    run: _Run, stages: tuple[StageResult, ...], failed: StageResult | None
) -> ValidationReport:
    facts = run.facts()
    if not run.config.wants_gpu or (run.no_gpu and failed is None):
        verdict, mode = "CPU_ONLY", "CPU"
    elif failed is not None:
        verdict, mode = "FAILED", "CPU"
    else:
        verdict, mode = "PASSED", "GPU"
    return ValidationReport(
        verdict=verdict,
        mode=mode,
        requested=run.config.gpu_enabled,
        stages=stages,
        facts=facts,
        selected=run.selection.uuids if verdict == "PASSED" else None,
        failed_stage=failed.name if failed else None,
        problem=failed.problem if failed else None,
        toolkit=run.toolkit,
    )


# --- markers and the report ---


def marker_path(root: Root, stage: str):
    return root.validations_dir / f"{stage}-ready"


def _clear_markers(root: Root) -> None:
    for stage in STAGES:
        marker_path(root, stage).unlink(missing_ok=True)


def _write_marker(root: Root, result: StageResult) -> None:
    data = {**result.to_dict(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(marker_path(root, result.name), json.dumps(data) + "\n")


def _write_report(root: Root, report: ValidationReport) -> None:
    try:
        write_atomic(root.run_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as exc:
        log.get("validation").error("validation report not written", error=str(exc))


# --- pci ---


def _stage_pci(run: _Run) -> _Outcome:
    run.pci = pci = scan_pci(run.root)
    if not pci.readable:
        return _fail(
            Problem(
                "pci_unreadable",
                "/sys/bus/pci/devices",
                "the PCI devices cannot be listed (sysfs not mounted?)",
                "mount sysfs on /sys",
            )
        )
    if not pci.gpus:
        return _no_gpu(run, pci)
    wrong = [g for g in pci.gpus if g.driver not in ("nvidia", None)]
    detail = f"{_plural(len(pci.gpus), 'NVIDIA GPU')}: " + "; ".join(_pci_line(g) for g in pci.gpus)
    detail += f"; firmware {'UEFI' if pci.uefi else 'BIOS (not UEFI)'}"
    if wrong and len(wrong) == len(pci.gpus):
        return _fail(_binding_problem(wrong[0]), detail)
    unassigned = [g.address for g in pci.gpus if any(b.size == 0 for b in g.bars[:2])]
    if wrong or unassigned:
        why = [f"{g.address} bound to {g.driver}" for g in wrong]
        why += [f"{a}: BAR0/BAR1 unassigned (MMIO space)" for a in unassigned]
        hint = _binding_problem(wrong[0]).fix if wrong else _TEMPLATE_FIX
        return _Outcome("warn", f"{detail}; {', '.join(why)}", hint)
    return _Outcome("ok", detail)


def _no_gpu(run: _Run, pci: PciFacts) -> _Outcome:
    where = "no NVIDIA GPU (vendor 10de, class 0300/0302) on the PCI bus"
    if pci.nvswitches:
        where += f" (only NVSwitch bridges: {', '.join(pci.nvswitches)})"
    if run.config.gpu_enabled == "AUTO":
        run.no_gpu = True
        return _Outcome("ok", f"{where}: CPU mode (FL_GPU_ENABLED=AUTO)")
    return _fail(
        Problem(
            "gpu_not_found",
            "FL_GPU_ENABLED",
            f"FL_GPU_ENABLED=YES but {where}",
            "attach the GPU in the VM template (PCI=[SHORT_ADDRESS=...]) on a host whose "
            "pci.conf filter includes 10de and whose GPU is bound to vfio-pci; or set "
            "FL_GPU_ENABLED=AUTO to run on CPU",
        )
    )


def _binding_problem(gpu: PciGpu) -> Problem:
    if gpu.driver == "nouveau":
        return Problem(
            "gpu_nouveau_bound",
            gpu.address,
            f"GPU {gpu.address} is driven by nouveau, which CUDA cannot use",
            _NOUVEAU_FIX,
        )
    if gpu.driver and "vfio" in gpu.driver:
        return Problem(
            "gpu_bound_to_vfio",
            gpu.address,
            f"GPU {gpu.address} is bound to {gpu.driver} inside the VM",
            _VFIO_FIX.format(addr=gpu.address),
        )
    return Problem(
        "gpu_wrong_driver",
        gpu.address,
        f"GPU {gpu.address} is bound to {gpu.driver}, not nvidia",
        f"unbind it from {gpu.driver} and install the NVIDIA driver",
    )


def _pci_line(gpu: PciGpu) -> str:
    bars = ", ".join(f"BAR{b.index} {_size(b.size)}" for b in gpu.bars if b.index in (0, 1, 3))
    numa = gpu.numa_node if gpu.numa_node is not None else "none"
    text = f"{gpu.address} [10de:{gpu.device_id[2:]}] driver {gpu.driver or 'none'}, NUMA {numa}"
    return f"{text}, {bars}" if bars else text


# --- driver ---


def _stage_driver(run: _Run) -> _Outcome:
    run.driver = driver = read_driver(run.root)
    run.nvml = nvml = read_nvml()
    if not driver.loaded:
        return _driver_not_loaded(run, nvml)
    if nvml.error == "LibRmVersionMismatch" and nvml.problem:
        return _fail(nvml.problem, f"kernel module {driver.version or '?'}")
    if nvml.driver_version and driver.version and nvml.driver_version != driver.version:
        return _fail(
            Problem(
                "gpu_driver_mismatch",
                "driver",
                f"the loaded kernel module is {driver.version} but the NVML library is "
                f"{nvml.driver_version} (the driver was updated without a reboot)",
                "reboot the VM; hold the NVIDIA packages so unattended upgrades cannot do this",
            )
        )
    detail = (
        f"nvidia {driver.version or 'unknown version'}"
        f"{' (open kernel module)' if driver.open_module else ''} loaded; "
        f"NVML {nvml.driver_version or 'unavailable'}; "
        f"device nodes: {', '.join(driver.device_nodes) or 'none'}"
    )
    unbound = [g for g in (run.pci.gpus if run.pci else ()) if g.driver is None]
    if unbound:
        return _init_failed(run, unbound, detail)
    if not driver.control_node:
        return _Outcome(
            "warn",
            f"{detail}; /dev/nvidiactl missing",
            "run `nvidia-modprobe -c 0 -u` or start nvidia-persistenced to create the nodes",
        )
    return _Outcome("ok", detail)


def _driver_not_loaded(run: _Run, nvml: NvmlFacts) -> _Outcome:
    if nvml.error == "LibraryNotFound" and nvml.problem:
        problem = Problem(
            nvml.problem.name,
            "driver",
            "no NVIDIA driver is installed: the kernel module is not loaded and "
            "libnvidia-ml.so.1 is missing",
            nvml.problem.fix,
        )
        return _fail(problem)
    errors = _kernel_errors(run)
    problem = Problem(
        "gpu_driver_not_loaded",
        "driver",
        "the NVIDIA kernel module is not loaded (/proc/driver/nvidia/version absent)" + errors,
        "`modprobe nvidia` and read the kernel log: 'Key was rejected by service' means Secure "
        "Boot refuses the module (enrol its MOK key or disable Secure Boot); no module for "
        "`uname -r` means DKMS did not build it (install the kernel headers, `dkms autoinstall`)",
    )
    return _fail(problem)


def _init_failed(run: _Run, unbound: list[PciGpu], detail: str) -> _Outcome:
    addresses = ", ".join(g.address for g in unbound)
    hint = _TEMPLATE_FIX
    if run.pci and not run.pci.uefi:
        hint = "the VM boots with BIOS firmware: " + hint
    problem = Problem(
        "gpu_driver_init_failed",
        addresses,
        f"the nvidia module is loaded but did not take GPU {addresses}" + _kernel_errors(run),
        hint,
    )
    if len(unbound) == len(run.pci.gpus if run.pci else ()):
        return _fail(problem, detail)
    return _Outcome("warn", f"{detail}; {problem.message}", hint)


def _kernel_errors(run: _Run) -> str:
    pci = run.pci
    if not pci or not pci.kernel_errors:
        return ""
    return f"; kernel log ({pci.kernel_log}): " + " | ".join(pci.kernel_errors[-3:])


# --- nvml ---


def _stage_nvml(run: _Run) -> _Outcome:
    nvml = run.nvml or read_nvml()
    run.nvml = nvml
    if nvml.problem:
        return _fail(nvml.problem)
    lost = [g for g in nvml.gpus if g.problem]
    usable = [g for g in nvml.gpus if g.uuid and not g.problem]
    if not usable:
        if lost and lost[0].problem:
            return _fail(lost[0].problem)
        return _fail(
            Problem(
                "gpu_not_visible",
                "nvml",
                "NVML sees no GPU although the configuration asks for one",
                "check the kernel log for NVRM errors; " + _TEMPLATE_FIX,
            )
        )
    run.selection = resolve_devices(run.config.cuda_visible_devices, nvml)
    detail = _inventory(nvml, run.selection)
    if not run.selection.ok:
        more = "; ".join(p.message for p in run.selection.problems[1:])
        return _fail(run.selection.problems[0], detail + (f"; also: {more}" if more else ""))
    return _nvml_warnings(run, detail, lost)


def _nvml_warnings(run: _Run, detail: str, lost: list[NvmlGpu]) -> _Outcome:
    targets = run.targets()
    empty_mig = [g for g in targets if g.mig_mode and not g.mig_devices]
    if empty_mig and len(empty_mig) == len(targets):
        return _fail(
            Problem(
                "mig_no_instances",
                empty_mig[0].uuid or "",
                f"MIG mode is on for {', '.join(g.uuid or '' for g in empty_mig)} but no MIG "
                "device exists: CUDA sees nothing there",
                "create the instances (`nvidia-smi mig -cgi <profiles> -C`; they do not survive "
                "a reboot) or disable MIG (`nvidia-smi -mig 0`)",
            ),
            detail,
        )
    warnings = [(f"GPU {g.index}: {g.problem.message}", g.problem.fix) for g in lost if g.problem]
    warnings += [
        (f"GPU {g.index} has MIG on but no MIG device", "create MIG instances or disable MIG")
        for g in empty_mig
    ]
    warnings += [
        (f"GPU {g.index} has a MIG mode change pending", "reset the GPU or reboot the VM")
        for g in targets
        if g.mig_pending is not None and g.mig_pending != g.mig_mode
    ]
    bound = [g for g in (run.pci.gpus if run.pci else ()) if g.driver == "nvidia"]
    if run.nvml and len(bound) > len(run.nvml.gpus):
        seen = f"NVML sees {len(run.nvml.gpus)} of {len(bound)} GPUs bound to nvidia"
        warnings.append((seen, "read the kernel log for NVRM errors"))
    if warnings:
        texts, hints = zip(*warnings, strict=True)
        return _Outcome("warn", f"{detail}; {'; '.join(texts)}", "; ".join(dict.fromkeys(hints)))
    return _Outcome("ok", detail)


def _inventory(nvml: NvmlFacts, selection: Selection) -> str:
    gpus = "; ".join(_gpu_line(g) for g in nvml.gpus)
    chosen = "all" if selection.uuids is None else ", ".join(selection.uuids) or "none"
    return (
        f"driver {nvml.driver_version}, CUDA {nvml.cuda_version or '?'}; "
        f"{_plural(len(nvml.gpus), 'GPU')}: {gpus}; selected: {chosen}"
    )


def _gpu_line(gpu: NvmlGpu) -> str:
    if gpu.problem:
        return f"{gpu.index} unreadable ({gpu.problem.name})"
    text = (
        f"{gpu.index} {gpu.name} {gpu.uuid} at {gpu.pci_bus_id}, {_size(gpu.memory_total or 0)}, "
        f"cc {gpu.compute_capability or '?'}"
    )
    if gpu.mig_mode:
        text += f", MIG on [{', '.join(m.uuid for m in gpu.mig_devices) or 'no devices'}]"
    return text


# --- fabric ---


def _stage_fabric(run: _Run) -> _Outcome:
    targets = run.targets()
    fabrics = {g.uuid or "": g.fabric for g in targets if g.fabric is not None}
    switches = run.pci.nvswitches if run.pci else ()
    if not fabrics:
        if switches:
            return _Outcome(
                "warn",
                f"NVSwitch present ({', '.join(switches)}) but the driver reports no fabric state",
                "make sure nvidia-fabricmanager runs (systemctl enable --now "
                "nvidia-fabricmanager); CUDA fails with error 802 until the fabric is ready",
            )
        return _Outcome("skip", "no NVLink fabric on the selected GPUs (no NVSwitch): not needed")
    fabrics = _wait_fabric(run, fabrics)
    broken = {u: f for u, f in fabrics.items() if f.state == "completed" and not f.ready}
    pending = {u: f for u, f in fabrics.items() if f.state != "completed"}
    if broken or pending:
        uuid, fabric = next(iter({**broken, **pending}.items()))
        return _fail(
            Problem(
                "fabric_not_ready",
                uuid,
                f"the NVLink fabric is {fabric.state} (status {fabric.status}) after "
                f"{run.fabric_wait_s:.0f}s: CUDA would fail with error 802",
                "start the Fabric Manager (`systemctl enable --now nvidia-fabricmanager`, or "
                "OpenNebula's Fabric Manager service VM for passthrough HGX), then revalidate",
            )
        )
    return _Outcome("ok", f"NVLink fabric completed on {_plural(len(fabrics), 'GPU')}")


def _wait_fabric(run: _Run, fabrics: dict[str, Fabric]) -> dict[str, Fabric]:
    """Poll while registration is in progress, up to the wait budget."""
    from agent.gpu.nvml import read_fabric

    deadline = time.monotonic() + run.fabric_wait_s
    while any(f.state in ("not_started", "in_progress") for f in fabrics.values()):
        if time.monotonic() >= deadline:
            break
        time.sleep(FABRIC_POLL_S)
        fresh = read_fabric(tuple(fabrics))
        fabrics = {u: f for u, f in fresh.items() if f is not None}
    return fabrics


# --- toolkit ---


def _stage_toolkit(run: _Run) -> _Outcome:
    """The toolkit: installed, wired into dockerd, its mode. With `repair`, `toolkit.ensure`
    installs it first (it honours FL_TOOLKIT_INSTALL=NEVER itself)."""
    from agent import toolkit

    client = _client(run)
    if run.repair:
        result = toolkit.ensure(run.config, run.root, gpu_present=True, docker_client=client)
        run.toolkit = result.to_dict()
        facts, problem, action = result.facts, result.problem, result.action
    else:
        facts = toolkit.detect(run.root, client)
        run.toolkit = facts.to_dict()
        problem, action = (facts.problems[0] if facts.problems else None), "detected, no repair"
    if problem is not None or not facts.ready:
        problem = problem or Problem(
            "toolkit_not_ready",
            "nvidia-container-toolkit",
            "the toolkit is not ready",
            "nvidia-ctk runtime configure --runtime=docker && systemctl restart docker",
        )
        if not run.repair:
            problem = _with_fix(problem, "; `fl-agent validate --repair` installs it as boot does")
        return _fail(problem, action)
    detail = (
        f"{action}: nvidia-ctk at {facts.ctk_path}, hook at {facts.hook_path}, mode {facts.mode}, "
        f"engine runtimes: {', '.join(facts.engine_runtimes) or 'not asked'}"
    )
    if facts.mode == "cdi":
        return _Outcome(
            "warn",
            detail,
            "the runtime is in CDI mode: DeviceRequests may be refused; the container stage "
            'decides (set mode="auto" in /etc/nvidia-container-runtime/config.toml if it fails)',
        )
    return _Outcome("ok", detail)


def _with_fix(problem: Problem, extra: str) -> Problem:
    return Problem(problem.name, problem.subject, problem.message, problem.fix + extra)


# --- container ---


def _stage_container(run: _Run) -> _Outcome:
    client = _client(run)
    if client is None:
        return _fail(_docker_unavailable())
    missing = _image_missing(client, run.config.supernode_image)
    if missing:
        return _fail(missing)
    result = gpu_probe.run_probe(
        client, run.config.supernode_image, ["nvidia-smi", "-L"], run.selection.uuids
    )
    if result.problem:
        return _fail(result.problem)
    if result.exit_code != 0:
        return _fail(gpu_probe.classify_engine_error(result.output))
    return _compare_uuids(run, gpu_probe.listed_uuids(result.output))


def _compare_uuids(run: _Run, seen: tuple[str, ...]) -> _Outcome:
    expected = run.expected_uuids()
    allowed = set(expected) | {g.uuid for g in run.targets()}
    missing = [u for u in expected if u not in seen]
    extra = [u for u in seen if u not in allowed]
    detail = f"nvidia-smi -L in {run.config.supernode_image}: {', '.join(seen) or 'no GPU'}"
    if not seen or missing or extra:
        return _fail(
            Problem(
                "container_gpu_mismatch",
                "container",
                f"the container sees {', '.join(seen) or 'no GPU'}; expected "
                f"{', '.join(expected)}" + (f"; unexpected {', '.join(extra)}" if extra else ""),
                "check NVIDIA_VISIBLE_DEVICES in the image (it must not override the request) "
                "and the toolkit's configuration",
            ),
            detail,
        )
    return _Outcome("ok", detail)


# --- framework ---


def _stage_framework(run: _Run) -> _Outcome:
    client = _client(run)
    if client is None:
        return _fail(_docker_unavailable())
    image = run.config.supernode_image
    driver_cuda = run.nvml.cuda_driver_version if run.nvml else None
    required = gpu_probe.image_cuda_requirement(_image_env(client, image))
    if required and driver_cuda and required > _cuda_pair(driver_cuda):
        return _fail(_cuda_too_old("NVIDIA_REQUIRE_CUDA", required, driver_cuda))
    result = gpu_probe.run_probe(
        client, image, ["python3", "-c", gpu_probe.TORCH_PROBE], run.selection.uuids
    )
    if result.problem and result.problem.name != "container_tool_missing":
        return _fail(result.problem)
    probe = gpu_probe.parse_torch_probe(result.output) if not result.problem else None
    return _interpret_torch(probe, driver_cuda, required, result.output)


def _interpret_torch(
    probe: dict | None, driver_cuda: int | None, required: tuple[int, int] | None, output: str
) -> _Outcome:
    """The framework verdict from the probe's JSON line (None: python or the probe failed)."""
    need = f"image requires CUDA {required[0]}.{required[1]}; " if required else ""
    if probe is None:
        return _Outcome(
            "warn",
            f"{need}no python in the image could run the probe: {_first_lines(output)}",
            "the ClientApp's framework was not checked",
        )
    if not probe.get("torch"):
        return _Outcome(
            "warn",
            f"{need}torch is not installed in the SuperNode image: CUDA in the ML framework "
            "not checked",
            "if the ClientApp runs elsewhere (FL_ISOLATION=process) check that image; else "
            "install a CUDA build of torch into the image",
        )
    build = probe.get("cuda_build")
    if not build:
        return _fail(
            Problem(
                "torch_cpu_build",
                "framework",
                f"torch {probe['torch']} in the image is a CPU-only build",
                "install a CUDA build of torch (https://download.pytorch.org/whl/cuXYZ) not "
                "newer than the driver's CUDA",
            )
        )
    major, minor = (int(x) for x in str(build).split(".")[:2])
    if driver_cuda and major > _cuda_pair(driver_cuda)[0]:
        return _fail(_cuda_too_old(f"torch {probe['torch']}", (major, minor), driver_cuda))
    if not probe.get("available"):
        return _fail(
            Problem(
                "framework_cuda_unavailable",
                "framework",
                f"torch {probe['torch']} (CUDA {build}) sees no usable GPU: "
                f"{probe.get('error', 'torch.cuda.is_available() is False')}",
                "check the container stage's output and the driver's CUDA version",
            )
        )
    detail = (
        f"{need}torch {probe['torch']} (CUDA {build}) sees {probe.get('count')} device(s): "
        f"{', '.join(probe.get('names') or [])}"
    )
    return _Outcome("ok", detail)


def _cuda_too_old(what: str, needed: tuple[int, int], driver_cuda: int) -> Problem:
    have = _cuda_pair(driver_cuda)
    return Problem(
        "cuda_driver_too_old",
        "framework",
        f"{what} needs CUDA {needed[0]}.{needed[1]} but the driver supports up to "
        f"{have[0]}.{have[1]}",
        "install a newer NVIDIA driver, or use an image/torch build for the driver's CUDA",
    )


def _cuda_pair(version: int) -> tuple[int, int]:
    return version // 1000, version % 1000 // 10


# --- docker helpers ---


def _client(run: _Run):
    """The given client, else one from the environment; None when no engine answers."""
    if run.client is None:
        try:
            import docker

            run.client = docker.from_env(timeout=60)
            run.client.ping()
        except Exception:  # docker.errors.DockerException or a connection error
            run.client = None
    return run.client


def _docker_unavailable() -> Problem:
    return Problem(
        "docker_unavailable",
        "docker",
        "the Docker engine does not answer",
        "`systemctl start docker`; check `systemctl status docker`",
    )


def _image_missing(client, image: str) -> Problem | None:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image)
    except ImageNotFound:
        return Problem(
            "supernode_image_missing",
            image,
            f"the SuperNode image {image} is not present in the local engine",
            f"`docker pull {image}` (or load it from the appliance image), or set "
            "FL_SUPERNODE_IMAGE to an image that is present",
        )
    return None


def _image_env(client, image: str) -> list[str]:
    attrs = client.images.get(image).attrs or {}
    return (attrs.get("Config") or {}).get("Env") or []


def _first_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:n]) or "(no output)"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.0f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 1024:.0f} KiB" if n else "unassigned"


_STAGE_FUNCTIONS: dict[str, Callable[[_Run], _Outcome]] = {
    "pci": _stage_pci,
    "driver": _stage_driver,
    "nvml": _stage_nvml,
    "fabric": _stage_fabric,
    "toolkit": _stage_toolkit,
    "container": _stage_container,
    "framework": _stage_framework,
}
