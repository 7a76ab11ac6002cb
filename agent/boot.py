"""`fl-agent boot`: read everything, decide, then act.

context -> config -> (docker, discovery, image, validation) -> plan -> converge -> outcome.
Every boot ends in a terminal report (RUNNING, DEGRADED or FAILED) in the state file, in the
appliance report and, when OneGate is configured, in OneGate; READY=YES only once the
container runs, never for a FAILED node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import __version__, log
from agent.config import Config, build_config
from agent.errors import AgentError, Problem
from agent.paths import Root
from agent.plan import GpuVerdict, Plan, PlanInputs, make_plan

EXIT_CODES = {"RUNNING": 0, "FAILED": 1, "INVALID": 2, "DEGRADED": 3}
TERMINAL_STATES = ("RUNNING", "DEGRADED", "FAILED")


@dataclass(frozen=True)
class BootOptions:
    dry_run: bool = False
    periodic: bool = False  # a re-convergence by the timer: report only the outcome
    stability_s: float = 3.0
    docker_timeout_s: float = 60.0
    lock_wait_s: float = 0.0
    discovery_attempts: int = 30
    discovery_interval_s: float = 10.0
    ca_attempts: int = 12
    ca_interval_s: float = 5.0
    onegate_timeout_s: float = 10.0


@dataclass
class Outcome:
    """What a boot decided and did; `record` is what the state file holds."""

    state: str  # RUNNING | DEGRADED | FAILED | INVALID | PLANNED (dry run)
    record: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.state, 0)


class _Run:
    """One boot: collects timings and problems into the record as it goes."""

    def __init__(self, root: Root, options: BootOptions) -> None:
        self.root = root
        self.options = options
        self.started = time.monotonic()
        self.record: dict = {
            "agent_version": __version__,
            "started_at": _now(),
            "timings_ms": {},
            "problems": [],
        }
        self.reporter = None
        self.logger = log.get("boot")

    def timed(self, name: str, func: Callable, *args, **kwargs):
        start = time.monotonic()
        try:
            return func(*args, **kwargs)
        finally:
            self.record["timings_ms"][name] = round((time.monotonic() - start) * 1000, 1)

    def report(self, state: str, **kwargs) -> None:
        """Send one state change to OneGate (one request), never waiting past its bound."""
        self.record["last_reported_state"] = state
        self.logger.info("state", state=state)
        if self.reporter is None or self.options.dry_run:
            return
        if self.options.periodic and state not in TERMINAL_STATES:
            return  # progress reports would take READY away from a node that keeps running
        from agent.onegate import state_report

        updates, deletes = state_report(state, **kwargs)
        self.reporter.send(updates, deletes, timeout_s=self._budget(state))

    def _budget(self, state: str) -> float:
        """Progress reports get a short budget (shorter still once one failed); the terminal
        report the full one. An unreachable OneGate so costs a boot seconds, not minutes, and
        what was not delivered waits in the queue."""
        if state in TERMINAL_STATES:
            return self.options.onegate_timeout_s
        failed = self.reporter.last_problem is not None
        return min(self.options.onegate_timeout_s, 0.5 if failed else 2.0)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def boot(
    root: Root, context_file: Path | None = None, options: BootOptions | None = None
) -> Outcome:
    """Run one boot under the lock and return its outcome (never raises for bad input)."""
    from agent.state import boot_lock

    options = options or BootOptions()
    run = _Run(root, options)
    try:
        with boot_lock(root, wait_s=options.lock_wait_s):
            outcome = _boot(run, context_file)
    except AgentError as exc:  # another boot holds the lock
        run.record["problems"] = [p.to_dict() for p in exc.problems]
        return Outcome("FAILED", run.record)
    return outcome


def _boot(run: _Run, context_file: Path | None) -> Outcome:
    from agent.inputs import read_inputs

    try:
        inputs = run.timed("context", read_inputs, run.root, context_file)
    except AgentError as exc:
        return _finish(run, "INVALID", exc.problems)
    run.record["context_source"] = inputs.context.source
    run.reporter = _reporter(run, inputs)
    run.report("BOOTING", facts=_static_facts(inputs.result.config))
    config = inputs.result.config
    if config is None:
        return _finish(run, "INVALID", inputs.result.problems)
    run.record["flower_version"] = config.flower_version
    run.report("CONFIGURING")
    try:
        return _converge(run, config)
    except AgentError as exc:
        return _finish(run, "FAILED", exc.problems)


def _reporter(run: _Run, inputs):
    """A OneGate reporter, also for an invalid config (only the OneGate variables are needed)."""
    from agent.onegate import ReadyPolicy, Reporter

    config = inputs.result.config
    if config is None:
        keys = ("ONEGATE_ENDPOINT", "VMID")
        subset = {k: inputs.context.variables.get(k, "") for k in keys}
        config = build_config(subset, token=inputs.context.token).config
    if config is None:
        return None
    ready = ReadyPolicy.from_variables(inputs.context.variables)
    return Reporter.from_config(
        config, run.root, total_timeout_s=run.options.onegate_timeout_s, ready=ready
    )


def _static_facts(config: Config | None) -> dict[str, str]:
    facts = {"FL_AGENT_VERSION": __version__}
    if config is not None:
        facts["FL_SUPERNODE_IMAGE"] = config.supernode_image
        facts["FL_FLOWER_VERSION"] = config.flower_version
    return facts


def _converge(run: _Run, config: Config) -> Outcome:
    from agent import supernode

    client = run.timed("docker", _docker, run)
    found = run.timed("discovery", _discover, run, config)
    if found.problems:
        return _finish(run, "FAILED", found.problems)
    if not run.options.dry_run:
        problem = run.timed("image", supernode.ensure_image, client, config.supernode_image)
        if problem:
            return _finish(run, "FAILED", (problem,))
    run.report("VALIDATING")
    verdict, gpu_facts = run.timed("validation", _validate, run, config, client)
    plan = make_plan(
        config,
        PlanInputs(
            gpu=verdict,
            superlink=found.superlink_address,
            node_config=found.node_config,
            data_dir_host=str(run.root.path(config.data_dir)),
            ca_host_path=found.ca_path,
            image_user=supernode.image_user(client, config.supernode_image) if client else None,
        ),
    )
    run.record["plan"] = plan.to_dict()
    if run.options.dry_run:
        return Outcome("PLANNED", run.record)
    if plan.spec is None:
        return _finish(run, "FAILED", plan.problems, gpu_facts)
    _prepare_mounts(run.root, config)
    run.report("STARTING")
    result = run.timed("converge", _converge_with_retry, run, client, plan)
    run.record["container"] = result.to_dict()
    if not result.running:
        return _finish(run, "FAILED", plan.problems + result.problems, gpu_facts)
    degraded = plan.degraded or result.gpu_start_error is not None
    problems = plan.problems + (
        (_gpu_start_problem(result.gpu_start_error),) if result.gpu_start_error else ()
    )
    mode = result.spec.mode if result.spec else plan.mode
    return _finish(run, "DEGRADED" if degraded else "RUNNING", problems, gpu_facts, mode=mode)


def _docker(run: _Run):
    from agent import supernode

    timeout = (
        min(run.options.docker_timeout_s, 5.0)
        if run.options.dry_run
        else run.options.docker_timeout_s
    )
    try:
        return supernode.connect(timeout_s=timeout)
    except AgentError:
        if run.options.dry_run:
            return None
        raise


@dataclass(frozen=True)
class _Found:
    superlink_address: str | None
    node_config: str | None
    ca_path: str | None
    problems: tuple[Problem, ...] = ()


def _discover(run: _Run, config: Config) -> _Found:
    """Static values first; OneGate only for what the context leaves empty (discovery decides)."""
    from agent import discovery

    found = discovery.discover(
        config,
        run.reporter,
        attempts=run.options.discovery_attempts,
        interval_s=run.options.discovery_interval_s,
        ca_attempts=run.options.ca_attempts,
        ca_interval_s=run.options.ca_interval_s,
    )
    run.record["discovery"] = found.to_dict()
    if found.problems:
        return _Found(None, None, None, found.problems)
    ca_path = None
    if found.ca_pem:
        ca_path = (
            str(run.root.path(discovery.CA_PATH))
            if run.options.dry_run
            else str(discovery.write_ca(found.ca_pem, run.root))
        )
    return _Found(found.superlink_address, found.node_config, ca_path)


def _validate(run: _Run, config: Config, client) -> tuple[GpuVerdict, object]:
    """The staged validation's verdict (skipped outright when FL_GPU_ENABLED=NO).

    The first pass observes only; when it stops at the toolkit and the agent may install it,
    the boot says INSTALLING_TOOLKIT, and a second pass repairs (installs, configures, restarts
    the engine) and validates again.
    """
    if not config.wants_gpu:
        run.record["validation"] = {"verdict": "CPU_ONLY", "mode": "CPU", "stages": []}
        return GpuVerdict("CPU_ONLY"), None
    from agent import validation

    report = validation.validate(config, run.root, docker_client=client, repair=False)
    repairable = report.failed_stage == "toolkit" and config.toolkit_install == "AUTO"
    if repairable and not run.options.dry_run:
        run.report("INSTALLING_TOOLKIT")
        report = validation.validate(config, run.root, docker_client=client, repair=True)
        run.report("VALIDATING")
    run.record["validation"] = report.to_dict()
    selected = tuple(report.selected) if report.selected else ()
    verdict = GpuVerdict(report.verdict, selected, report.selected is None, report.problem)
    return verdict, report.facts


def _converge_with_retry(run: _Run, client, plan: Plan):
    """Converge; if the engine went away mid-boot, wait for it once and converge again."""
    from docker.errors import APIError, DockerException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    from agent import supernode

    for attempt in (1, 2):
        try:
            return supernode.converge(
                client, plan.spec, fallback=plan.fallback, stability_s=run.options.stability_s
            )
        except (RequestsConnectionError, DockerException) as exc:
            if (
                isinstance(exc, APIError)
                and exc.response is not None
                and attempt == 1
                and exc.response.status_code < 500
            ):
                raise AgentError(
                    Problem(
                        "container_start_failed",
                        plan.spec.name,
                        str(exc)[:300],
                        "check the image and its arguments",
                    )
                ) from None
            if attempt == 2:
                raise AgentError(
                    Problem(
                        "docker_unavailable",
                        "docker",
                        str(exc)[:300],
                        "check `systemctl status docker`",
                    )
                ) from None
            run.logger.warning("docker engine went away, waiting", error=str(exc)[:200])
            client = supernode.connect(timeout_s=run.options.docker_timeout_s)
    raise AssertionError("unreachable")


def _prepare_mounts(root: Root, config: Config) -> None:
    """The data directory must exist for the bind mount; readable by the image's user."""
    data = root.path(config.data_dir)
    try:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(data.stat().st_mode | 0o055)
    except OSError as exc:
        raise AgentError(
            Problem(
                "data_dir_unusable",
                config.data_dir,
                f"cannot prepare the data directory: {exc.strerror or exc}",
                "FL_DATA_DIR must be a directory on a writable file system",
            )
        ) from None


def _gpu_start_problem(message: str) -> Problem:
    return Problem(
        "gpu_start_failed",
        "flower-supernode",
        f"the engine refused the GPU request, running on CPU: {message[:200]}",
        "run `fl-agent validate`; install the NVIDIA Container Toolkit, restart Docker",
    )


def _finish(run: _Run, state: str, problems, gpu_facts=None, mode: str | None = None) -> Outcome:
    """The terminal record: state file, appliance report, OneGate (READY only when running)."""
    problems = tuple(problems)
    run.record.update(
        state=state if state != "INVALID" else "FAILED",
        invalid_config=state == "INVALID",
        mode=mode or "NONE",
        finished_at=_now(),
        problems=[p.to_dict() for p in problems],
    )
    run.record["timings_ms"]["total"] = round((time.monotonic() - run.started) * 1000, 1)
    outcome = Outcome(state, run.record)
    if run.options.dry_run:
        return outcome
    _write_outputs(run, problems, gpu_facts, mode)
    return outcome


def _write_outputs(run: _Run, problems, gpu_facts, mode) -> None:
    from agent import appliance
    from agent.state import write_state

    terminal = run.record["state"]
    running = terminal in ("RUNNING", "DEGRADED")
    error = (problems[0].name, problems[0].message) if problems else None
    facts = _gpu_attributes(gpu_facts, mode, run.record.get("validation"))
    run.report(terminal, facts=facts, error=error, ready=running)
    problem = write_state(run.root, run.record)
    if problem:  # the node is unaffected; say so in the log and in the outcome printed
        run.logger.error("state not written", problem=problem.name, detail=str(problem))
        run.record["problems"].append(problem.to_dict())
    try:
        appliance.write_service_report(run.root, run.record)
        (appliance.mark_ready if running else appliance.clear_ready)(run.root)
    except OSError as exc:
        run.logger.error("appliance report not written", error=exc.strerror or str(exc))


def _gpu_attributes(gpu_facts, mode: str | None, validation: dict | None) -> dict[str, str]:
    """The FL_GPU_* facts OneGate carries, from the validation's GPU inventory.

    Lists are joined with ';' (a comma would force base64 through OneGate's escaping).
    """
    verdict = (validation or {}).get("verdict", "CPU_ONLY")
    failed = (validation or {}).get("failed_stage")
    attrs = {
        "FL_GPU_MODE": "GPU" if mode == "GPU" else "CPU",
        "FL_VALIDATION": f"FAILED:{failed}" if verdict == "FAILED" and failed else verdict,
        "FL_GPU_COUNT": "0",
    }
    nvml = getattr(gpu_facts, "nvml", None)
    gpus = [g for g in getattr(nvml, "gpus", ()) if g.uuid]
    if not gpus:
        return attrs
    cuda = nvml.cuda_driver_version
    selected = (validation or {}).get("selected")
    attrs.update(
        FL_GPU_COUNT=str(len(selected) if selected else len(gpus)),
        FL_GPU_NAMES=";".join(g.name or "unknown" for g in gpus),
        FL_GPU_UUIDS=";".join(g.uuid for g in gpus),
        FL_GPU_MEMORY_MIB=";".join(str((g.memory_total or 0) // 2**20) for g in gpus),
        FL_DRIVER_VERSION=nvml.driver_version or "",
        FL_CUDA_VERSION=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else "",
        FL_MIG=";".join(_mig_label(g) for g in gpus),
    )
    return {k: v for k, v in attrs.items() if v != ""}


def _mig_label(gpu) -> str:
    if gpu.mig_mode is None:
        return "UNSUPPORTED"
    return "ENABLED" if gpu.mig_mode else "DISABLED"
