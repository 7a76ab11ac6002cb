"""`fl-agent boot`: observe, evaluate, plan, apply; in that order, and nothing else.

- `observe` reads everything: the context and the platform, the validated config, the engine,
  the GPU, toolkit and image facts, discovery (the SuperLink, its CA). It writes nothing.
- `evaluate` turns the facts into the validation report (agent/validation/), changing nothing;
  its container and framework stages start probe containers, which they always remove.
- `make_plan` (agent/plan.py, pure) decides GPU or CPU, the container spec and the actions.
- `apply` performs the actions (image pull, toolkit install, validation markers, CA, data
  directory, the /dev/char links, converge with the CPU fallback, the SuperLink pin) and returns
  the outcome: the terminal report (RUNNING, DEGRADED or FAILED) in the state file, in the
  appliance report and, when OneGate is configured, in OneGate; READY=YES only once the
  container runs, never for a FAILED node.

`--dry-run` stops before apply: no file under the root is created, changed or removed, no
container, no pull, no report; the exit code is the one the plan leads to. Progress reports
(BOOTING ... STARTING) go to OneGate as the boot goes; a periodic re-convergence sends only the
outcome, so READY stays while the node keeps running. A periodic re-convergence observes the mode
the last boot established (agent/reconverge.py) in place of the staged validation: no probe
container, no toolkit repair; its plan changes the GPU mode only on a confirmed loss.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import log
from agent.config import Config
from agent.container_resources import mem_total
from agent.context import Platform
from agent.errors import AgentError, Problem
from agent.instance import Instance
from agent.outcome import TERMINAL, BootState, ExitCode, Mode, Verdict, problem
from agent.paths import Root
from agent.plan import (
    ActionKind,
    Established,
    GpuVerdict,
    ImageFacts,
    Plan,
    PlanInputs,
    make_plan,
)
from agent.record import BootRecord, now

if TYPE_CHECKING:
    from agent.discovery import Discovery, Pin
    from agent.engine import ConvergeResult, Engine
    from agent.inputs import Inputs
    from agent.superlink import SuperlinkInputs
    from agent.validation import Observed, ValidationReport


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
    serve_wait_s: float = 60.0  # superlink role: how long its Fleet API port may take to answer
    registration_wait_s: float = 300.0  # a refused node key: how long to wait for registration


@dataclass(frozen=True)
class Outcome:
    """What a boot decided and did (or, dry, would do)."""

    record: BootRecord
    plan: Plan | None = None

    @property
    def state(self) -> BootState:
        return self.record.state

    @property
    def exit_code(self) -> ExitCode:
        return self.record.exit_code


@dataclass(frozen=True)
class Facts:
    """Everything observe read. `blocking`: what stops the node before any plan of a spec
    (an invalid config, no engine, discovery that failed)."""

    platform: Platform
    config: Config | None
    context_source: str | None = None
    blocking: tuple[Problem, ...] = ()
    invalid_config: bool = False
    image: ImageFacts | None = None  # the SuperNode image as the engine has it
    observed: Observed | None = None  # GPU, toolkit and image facts (FL_GPU_ENABLED not NO)
    established: Established | None = None  # periodic: the last boot's mode, any loss since
    last_validation: dict | None = None  # periodic: the last boot's report, kept in the record
    discovery: Discovery | None = None
    pin: Pin | None = None  # the SuperLink identity to pin once the node runs (first use)
    data_dir_host: str = ""  # FL_DATA_DIR under the root
    data_dir_exists: bool = True
    memory_bytes: int | None = None  # the VM's MemTotal (the GPU SuperNode's /dev/shm)
    ca_host_path: str = ""  # where the CA goes under the root
    pin_path: str = ""  # where the pin goes under the root
    periodic: bool = False  # a re-convergence by the timer (BootOptions.periodic)
    superlink: SuperlinkInputs | None = None  # FL_ROLE=superlink: agent/superlink_boot.py
    instance: Instance = field(
        default_factory=Instance
    )  # this agent's container names and local port
    node_key_dir: str | None = None  # under the root, when SuperNode authentication applies
    leftover_superexec: bool = False  # a SuperExec of this agent exists (isolation changed)
    other_role: tuple[str, ...] = ()  # the other FL_ROLE's containers, left by a role change
    warnings: tuple[Problem, ...] = ()  # problems that do not stop the node (version pairing)
    node_public_key: str | None = None  # apply: the node key's public half, to publish


def boot(
    root: Root, context_file: Path | None = None, options: BootOptions | None = None
) -> Outcome:
    """Run one boot (under the lock unless dry) and return its outcome; never raises for bad
    input."""
    from contextlib import ExitStack

    from agent.state import boot_lock

    session = Session(root, options or BootOptions())
    if session.options.dry_run:  # the lock file would be a change under the root
        return _run(session, context_file)
    with ExitStack() as held:
        try:
            held.enter_context(boot_lock(root, wait_s=session.options.lock_wait_s))
        except AgentError as exc:  # another boot holds the lock
            record = BootRecord(BootState.FAILED, session.started_at, now(), problems=exc.problems)
            return Outcome(record)
        return _run(session, context_file)


def _run(session: Session, context_file: Path | None) -> Outcome:
    facts = observe(session, context_file)
    if _superlink_role(facts):
        from agent import superlink_boot

        return superlink_boot.run(session, facts)
    report = evaluate(session, facts)
    plan = plan_boot(facts, report)
    if session.options.dry_run:
        return session.outcome(plan, facts, report, Ending(plan.state), dry_run=True)
    return apply(session, plan, facts, report)


# --------------------------------------------------------------------------- the session


class Progress:
    """State changes to OneGate, one request each, never waiting past their budget."""

    def __init__(self, reporter, options: BootOptions) -> None:
        self.reporter = reporter
        self.options = options
        self.last: BootState | None = None

    def report(self, state: BootState, **kwargs: Any) -> None:
        self.last = state
        log.get("boot").info("state", state=str(state))
        if self.reporter is None or self.options.dry_run:
            return
        if self.options.periodic and state not in TERMINAL:
            return  # progress reports would take READY away from a node that keeps running
        from agent.onegate import state_report

        updates, deletes = state_report(state, **kwargs)
        self.reporter.send(updates, deletes, timeout_s=self._budget(state))

    def publish(self, facts: dict[str, str]) -> None:
        """Attributes alone, no state (READY stays as it is), with the full budget; also on a
        periodic run."""
        if self.reporter is None or self.options.dry_run or not facts:
            return
        self.reporter.send(facts, (), timeout_s=self.options.onegate_timeout_s)

    def _budget(self, state: BootState) -> float:
        """Progress reports get a short budget (shorter still once one failed); the terminal
        report the full one. An unreachable OneGate so costs a boot seconds, not minutes, and
        what was not delivered waits in the queue."""
        if state in TERMINAL:
            return self.options.onegate_timeout_s
        failed = self.reporter.last_problem is not None
        return min(self.options.onegate_timeout_s, 0.5 if failed else 2.0)


@dataclass
class Session:
    """The handles one boot acts through (root, options, OneGate, the engine) and its clock."""

    root: Root
    options: BootOptions
    progress: Progress = field(init=False)
    engine: Engine | None = None
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=now)
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.progress = Progress(None, self.options)

    def timed(self, name: str, func: Callable, *args, **kwargs):
        start = time.monotonic()
        try:
            return func(*args, **kwargs)
        finally:
            self.timings[name] = round((time.monotonic() - start) * 1000, 1)

    def outcome(
        self,
        plan: Plan,
        facts: Facts,
        report: ValidationReport | None,
        ending: Ending,
        *,
        dry_run: bool = False,
    ) -> Outcome:
        self.timings["total"] = round((time.monotonic() - self.started) * 1000, 1)
        record = BootRecord(
            state=ending.state,
            started_at=self.started_at,
            finished_at=now(),
            invalid_config=facts.invalid_config,
            dry_run=dry_run,
            mode=ending.mode if not dry_run else plan.mode,
            context_source=facts.context_source,
            flower_version=facts.config.flower_version if facts.config else None,
            problems=plan.problems if ending.problems is None else ending.problems,
            timings_ms=tuple(self.timings.items()),
            last_reported_state=self.progress.last,
            plan=plan.to_dict() if facts.config else None,
            validation=report.to_dict() if report else facts.last_validation,
            discovery=facts.discovery.to_dict() if facts.discovery else None,
            container=ending.container.to_dict() if ending.container else None,
            superlink=ending.superlink,
            companion=ending.companion.to_dict() if ending.companion else None,
        )
        return Outcome(record, plan)


@dataclass(frozen=True)
class Ending:
    """How a boot ends: its state, its problems (None: the plan's), what runs, the container."""

    state: BootState
    problems: tuple[Problem, ...] | None = None
    mode: Mode = Mode.NONE
    container: ConvergeResult | None = None
    _: KW_ONLY
    attributes: dict[str, str] | None = None  # the facts for OneGate (None: the GPU facts)
    superlink: dict | None = None  # the superlink role's part of the record
    companion: ConvergeResult | None = None  # FL_ISOLATION=process: the SuperNode's converge


# --------------------------------------------------------------------------- observe


def observe(session: Session, context_file: Path | None) -> Facts:
    """Read the context and config, the engine, discovery, then the image, GPU and toolkit
    facts; stop at the first thing that blocks the node. Writes nothing (progress reports
    aside)."""
    facts = _observe_inputs(session, context_file)
    for step in _observe_steps(facts):
        if facts.blocking:
            return facts
        facts = step(session, facts)
    return facts


def _superlink_role(facts: Facts) -> bool:
    return facts.config is not None and facts.config.role == "superlink"


def _observe_steps(facts: Facts) -> tuple[Callable[[Session, Facts], Facts], ...]:
    """The SuperNode's steps, or the superlink role's: no discovery, no GPU."""
    if _superlink_role(facts):
        from agent import superlink_boot

        return (_observe_engine, superlink_boot.observe)
    return (_observe_engine, _observe_discovery, _observe_pairing, _observe_node)


def _observe_inputs(session: Session, context_file: Path | None) -> Facts:
    from agent.inputs import read_inputs

    try:
        inputs = session.timed("context", read_inputs, session.root, context_file)
    except AgentError as exc:
        return Facts(Platform(), None, blocking=exc.problems, invalid_config=True)
    session.progress = Progress(_reporter(session, inputs), session.options)
    config = inputs.result.config
    session.progress.report(BootState.BOOTING, facts=_static_facts(config))
    facts = Facts(inputs.platform, config, inputs.context.source, periodic=session.options.periodic)
    if config is None:
        return replace(facts, blocking=inputs.result.problems, invalid_config=True)
    session.progress.report(BootState.CONFIGURING)
    return facts


def _observe_engine(session: Session, facts: Facts) -> Facts:
    try:
        session.engine = session.timed("docker", _connect, session)
    except AgentError as exc:
        return replace(facts, blocking=exc.problems)
    return facts


def _observe_discovery(session: Session, facts: Facts) -> Facts:
    from agent import discovery

    assert facts.config is not None
    pinned, pin_problem = discovery.read_pin(session.root)
    if pin_problem is not None:
        return replace(facts, blocking=(pin_problem,))
    found = session.timed("discovery", _discover, session, facts.config, pinned)
    return replace(
        facts,
        discovery=found,
        blocking=found.problems,
        pin=discovery.pin_update(found, pinned),
        pin_path=str(discovery.pin_path(session.root)),
        ca_host_path=str(session.root.path(discovery.CA_PATH)),
    )


def _observe_pairing(session: Session, facts: Facts) -> Facts:
    """The Flower version against the one the SuperLink publishes (agent/pairing.py decides);
    the local fl-agent/supernode tags are listed only when the decision needs them."""
    from agent import flower, pairing

    config = facts.config
    assert config is not None
    published = facts.discovery.superlink_version if facts.discovery else None
    tags: tuple[str, ...] = ()
    needs_tags = published is not None and not (
        config.flower_version_set or config.supernode_image_set
    )
    if needs_tags and session.engine is not None:
        from agent.engine import EngineError

        try:
            tags = session.timed("image_tags", session.engine.image_tags, flower.IMAGE_REPOSITORY)
        except EngineError as exc:
            unavailable = problem("docker_unavailable", "docker", exc.message[:200])
            return replace(facts, blocking=(unavailable,))
    paired = pairing.pair(config, published, tags)
    if paired.blocking is not None:
        return replace(facts, blocking=(paired.blocking,))
    warnings = facts.warnings + ((paired.warning,) if paired.warning else ())
    return replace(facts, config=paired.config, warnings=warnings)


def _observe_node(session: Session, facts: Facts) -> Facts:
    """The image, the data directory and (unless FL_GPU_ENABLED=NO) the GPU and toolkit."""
    config = facts.config
    assert config is not None
    session.progress.report(BootState.VALIDATING)
    try:
        facts = _observe_instance(session, facts)
    except AgentError as exc:
        return replace(facts, blocking=exc.problems)
    try:
        image = session.timed("image", _image, session, config.supernode_image)
    except AgentError as exc:
        return replace(facts, blocking=exc.problems)
    data_dir = session.root.path(config.data_dir)
    refused = _data_dir_refused(session.root, data_dir)
    if refused is not None:
        return replace(facts, blocking=(problem("data_dir_unusable", config.data_dir, refused),))
    facts = replace(facts, image=image)
    if config.wants_gpu and session.options.periodic:
        facts = _observe_established(session, facts)
    if config.wants_gpu and facts.established is None:
        from agent import validation

        observed = session.timed(
            "observe", validation.observe, config, session.root, session.engine, image
        )
        facts = replace(facts, observed=observed)
    return replace(
        facts,
        data_dir_host=str(data_dir),
        data_dir_exists=data_dir.is_dir(),
        memory_bytes=mem_total(session.root),
    )


def _observe_instance(session: Session, facts: Facts) -> Facts:
    """This agent's instance (names, port), its node key directory, a SuperExec left over."""
    from agent import instance, nodeauth

    config = facts.config
    assert config is not None
    which = instance.current()
    key_dir = str(nodeauth.node_key_dir(session.root)) if config.uses_node_key else None
    leftover = False
    if config.isolation != "process" and session.engine is not None:
        leftover = _managed(session.engine, which.superexec)
    other = other_role_containers(session.engine, which, (instance.SUPERLINK,))
    return replace(
        facts, instance=which, node_key_dir=key_dir, leftover_superexec=leftover, other_role=other
    )


def other_role_containers(engine: Engine | None, which: Instance, names: tuple[str, ...]):
    """The containers of the other FL_ROLE this agent left running (a VM whose role changed):
    `names` that carry the agent's label. Only the appliance's single agent (no --instance)
    looks: several agents on one engine are the tests' and the demo's, where the other role's
    containers belong to another agent."""
    if engine is None or which.number is not None:
        return ()
    return tuple(name for name in names if _managed(engine, name))


def _managed(engine: Engine, name: str) -> bool:
    """A container of that name carries the agent's label."""
    from agent.engine import EngineError
    from agent.plan import LABEL_MANAGED

    try:
        attrs = engine.inspect(name)
    except EngineError as exc:
        raise AgentError(problem("docker_unavailable", "docker", exc.message[:200])) from None
    labels = ((attrs or {}).get("Config") or {}).get("Labels") or {}
    return labels.get(LABEL_MANAGED) == "true"


def _observe_established(session: Session, facts: Facts) -> Facts:
    """A periodic re-convergence: the mode the last boot left running and any confirmed loss
    (agent/reconverge.py), in place of the validation; none when nothing runs."""
    from agent import reconverge
    from agent.gpu.health import read_health
    from agent.state import read_state

    last = read_state(session.root)
    found = session.timed("established", reconverge.established, session.root, last, read_health)
    if found is None:
        return facts
    return replace(facts, established=found, last_validation=(last or {}).get("validation"))


def _data_dir_refused(root: Root, path: Path) -> str | None:
    """FL_DATA_DIR's rules (agent/config.py) again, on the path with its symlinks resolved."""
    from agent.config import data_dir_problem

    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        return f"it does not resolve: {exc}"
    try:
        inside = "/" + str(resolved.relative_to(root.prefix.resolve()))
    except ValueError:
        return f"it resolves to {resolved}, outside the root {root.prefix}"
    why = data_dir_problem(inside.rstrip("/") or "/")
    return f"it resolves to {inside}: {why}" if why else None


def _reporter(session: Session, inputs: Inputs):
    """A OneGate reporter from the platform values: there even when the FL config is invalid;
    READY=YES as one-context would send it (REPORT_READY, READY_SCRIPT)."""
    from agent.onegate import ReadyPolicy, Reporter

    total = session.options.onegate_timeout_s
    ready = ReadyPolicy.from_variables(inputs.context.variables)
    return Reporter.from_platform(inputs.platform, session.root, total_timeout_s=total, ready=ready)


def _static_facts(config: Config | None) -> dict[str, str]:
    from agent import __version__

    facts = {"FL_AGENT_VERSION": __version__}
    if config is not None:
        facts["FL_SUPERNODE_IMAGE"] = config.supernode_image
        facts["FL_FLOWER_VERSION"] = config.flower_version
    return facts


def _connect(session: Session):
    """The engine; a dry run waits less and goes on without one (its plan then says so)."""
    from agent import engine

    if not session.options.dry_run:
        return engine.connect(timeout_s=session.options.docker_timeout_s)
    try:
        return engine.connect(timeout_s=min(session.options.docker_timeout_s, 5.0))
    except AgentError:
        return None


def _image(session: Session, reference: str) -> ImageFacts:
    """The image's facts, read once; absent when there is no engine to ask (a dry run)."""
    from agent.engine import EngineError

    if session.engine is None:
        return ImageFacts(reference, False)
    try:
        return session.engine.image(reference)
    except EngineError as exc:
        raise AgentError(problem("docker_unavailable", "docker", exc.message[:200])) from None


def _discover(session: Session, config: Config, pinned: Pin | None) -> Discovery:
    """Static values first; OneGate only for what the context leaves empty (discovery decides);
    an identity pinned at the first successful boot is kept (trust on first use)."""
    from agent import discovery

    options = session.options
    return discovery.discover(
        config,
        session.progress.reporter,
        attempts=options.discovery_attempts,
        interval_s=options.discovery_interval_s,
        ca_attempts=options.ca_attempts,
        ca_interval_s=options.ca_interval_s,
        pinned=pinned,
    )


# --------------------------------------------------------------------------- evaluate


def evaluate(session: Session, facts: Facts) -> ValidationReport | None:
    """The validation report over the observed facts (None when nothing was observed)."""
    if facts.config is None or facts.observed is None:
        return None
    from agent import validation

    return session.timed(
        "validation", validation.evaluate, facts.config, facts.observed, session.engine
    )


# --------------------------------------------------------------------------- plan


def plan_boot(facts: Facts, report: ValidationReport | None) -> Plan:
    """make_plan over the facts; without a config only the record is left to do."""
    if facts.config is None:
        return Plan.nothing(facts.blocking)
    return make_plan(facts.config, plan_inputs(facts, report))


def plan_inputs(facts: Facts, report: ValidationReport | None, **changes: Any) -> PlanInputs:
    config = facts.config
    assert config is not None
    from agent import nodefacts

    found = facts.discovery
    ca_pem = found.ca_pem if found else None
    validation = report.to_dict() if report else facts.last_validation
    return PlanInputs(
        gpu=report.gpu if report else GpuVerdict(Verdict.CPU_ONLY),
        superlink=found.superlink_address if found else None,
        node_config=found.node_config if found else None,
        data_dir_host=facts.data_dir_host,
        image=facts.image or ImageFacts(config.supernode_image, False),
        ca_pem=ca_pem,
        ca_host_path=facts.ca_host_path if ca_pem else None,
        data_dir_exists=facts.data_dir_exists,
        pin_path=facts.pin_path if facts.pin else None,
        validated=config.wants_gpu and report is not None,
        blocking=facts.blocking,
        memory_bytes=facts.memory_bytes,
        gpu_present=bool(facts.observed and facts.observed.gpu and facts.observed.gpu.present),
        periodic=facts.periodic,
        established=facts.established,
        node_key_dir=facts.node_key_dir,
        node_facts=nodefacts.from_validation(validation) if config.node_facts else None,
        instance=facts.instance,
        leftover_superexec=facts.leftover_superexec,
        other_role=facts.other_role,
        **changes,
    )


# --------------------------------------------------------------------------- apply


def apply(session: Session, plan: Plan, facts: Facts, report: ValidationReport | None) -> Outcome:
    """Perform the plan's actions, in order; the RECORD action ends every boot."""
    if plan.has(ActionKind.PULL_IMAGE) or plan.has(ActionKind.INSTALL_TOOLKIT):
        plan, facts, report = _prepare(session, plan, facts, report)
    if plan.has(ActionKind.WRITE_VALIDATION) and report is not None:
        from agent import validation

        validation.write(session.root, report)
    if plan.spec is None:
        return _record(session, plan, facts, report, Ending(BootState.FAILED))
    failed = _prepare_files(session, plan, facts)
    if failed is not None:
        ending = Ending(BootState.FAILED, (*plan.problems, failed))
        return _record(session, plan, facts, report, ending)
    linked = _dev_char_links(session, plan, facts)
    facts, failed = _node_key(session, plan, facts)
    if failed is not None:
        return _record(
            session, plan, facts, report, Ending(BootState.FAILED, (*plan.problems, failed))
        )
    linked += remove_leftovers(session, plan)
    session.progress.report(BootState.STARTING, facts=_key_attributes(facts))
    companion = None
    if plan.companion is not None:
        companion = session.timed(
            "converge_companion", converge_container, session, plan.companion, None, facts
        )
        if not companion.running:
            ending = Ending(
                BootState.FAILED, plan.problems + companion.problems, companion=companion
            )
            return _record(session, plan, facts, report, ending)
    result = session.timed("converge", converge_container, session, plan.spec, plan.fallback, facts)
    if result.running and result.gpu_start_error and plan.companion_fallback is not None:
        fallback = plan.companion_fallback  # the SuperNode's node config says CPU now
        companion = session.timed(
            "converge_companion", converge_container, session, fallback, None, facts
        )
        if not companion.running:
            result = replace(result, problems=companion.problems)
    if not result.running:
        problems = plan.problems + result.problems
        ending = Ending(BootState.FAILED, problems, container=result, companion=companion)
        return _record(session, plan, facts, report, ending)
    problems = plan.problems + linked + (facts.discovery.warnings if facts.discovery else ())
    problems += facts.warnings
    if result.gpu_start_error:
        refusal = f"running on CPU: {result.gpu_start_error[:200]}"
        problems += (problem("gpu_start_failed", plan.spec.name, refusal),)
    if plan.has(ActionKind.WRITE_PIN) and facts.pin is not None:
        from agent.discovery import write_pin

        unpinned = write_pin(session.root, facts.pin)
        problems += (unpinned,) if unpinned else ()
    degraded = plan.degraded or result.gpu_start_error is not None
    state = BootState.DEGRADED if degraded else BootState.RUNNING
    mode = result.spec.mode if result.spec else plan.mode
    ending = Ending(state, problems, mode, result, companion=companion)
    return _record(session, plan, facts, report, ending)


def _prepare(
    session: Session, plan: Plan, facts: Facts, report: ValidationReport | None
) -> tuple[Plan, Facts, ValidationReport | None]:
    """The actions that change what observe saw (the image pull, the toolkit install); then
    the validation resumes where it waited and the same make_plan decides over the new facts.
    """
    from agent import toolkit, validation

    config, observed = facts.config, facts.observed
    assert config is not None and session.engine is not None
    if plan.has(ActionKind.PULL_IMAGE):
        failed, image = pull_image(session, config.supernode_image)
        if image is None:
            facts = replace(facts, blocking=(failed,))
            return make_plan(config, plan_inputs(facts, report)), facts, report
        facts = replace(facts, image=image)
        observed = replace(observed, image=image) if observed else None
    repaired = None
    if plan.has(ActionKind.INSTALL_TOOLKIT):
        session.progress.report(BootState.INSTALLING_TOOLKIT)
        repaired = session.timed(
            "toolkit",
            toolkit.ensure,
            config,
            session.root,
            gpu_present=True,
            engine=session.engine,
            restart_engine=not session.options.periodic,
        )
        session.progress.report(BootState.VALIDATING)
        observed = replace(observed, toolkit=repaired.facts) if observed else None
    facts = replace(facts, observed=observed)
    if plan.resume_from is not None and report is not None and observed is not None:
        report = session.timed(
            "validation_resumed",
            validation.resume,
            config,
            report,
            observed,
            session.engine,
            plan.resume_from,
            repaired=repaired,
        )
    inputs = plan_inputs(facts, report, toolkit_tried=repaired is not None)
    return make_plan(config, inputs), facts, report


def pull_image(session: Session, reference: str) -> tuple[Problem | None, ImageFacts | None]:
    """Pull the image and read its facts again: (None, facts), or (the problem, None) when the
    pull failed or the engine stopped answering right after it."""
    from agent import engine

    failed = session.timed("image", engine.pull, session.engine, reference)
    if failed is not None:
        return failed, None
    try:
        return None, _image(session, reference)
    except AgentError as exc:
        return exc.first, None


def _prepare_files(session: Session, plan: Plan, facts: Facts) -> Problem | None:
    """The CA and the data directory the container mounts; a failure is a problem."""
    from agent.discovery import write_ca

    config = facts.config
    assert config is not None
    if plan.has(ActionKind.WRITE_CA):
        assert facts.discovery is not None and facts.discovery.ca_pem
        try:
            write_ca(facts.discovery.ca_pem, session.root)
        except OSError as exc:
            return problem("ca_write_failed", str(exc.filename or "ca.pem"), str(exc.strerror))
    if plan.has(ActionKind.PREPARE_DATA_DIR):
        try:
            _prepare_data_dir(Path(facts.data_dir_host))
        except OSError as exc:
            return problem("data_dir_unusable", config.data_dir, str(exc.strerror or exc))
    return None


def _dev_char_links(session: Session, plan: Plan, facts: Facts) -> tuple[Problem, ...]:
    """The NVIDIA nodes' /dev/char links, before the GPU container starts (a daemon-reload
    would take its GPUs away without them: agent/devchar.py); a failure is a problem on the
    record, not a reason to stop the node."""
    if not plan.has(ActionKind.DEV_CHAR_LINKS):
        return ()
    from agent.devchar import ensure_dev_char_links

    toolkit = facts.observed.toolkit if facts.observed else None
    ctk = toolkit.ctk_path if toolkit else None
    result = session.timed("dev_char_links", ensure_dev_char_links, session.root, ctk)
    return (result.problem,) if result.problem else ()


def _prepare_data_dir(path: Path) -> None:
    """The data directory must exist for the bind mount: created (0755, readable by the
    image's user) when absent; a directory the agent did not create is never chmod-ed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        if path.is_dir():
            return  # created since observe looked: someone else's, left as it is
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path)) from None
    path.chmod(0o755)  # mkdir's mode went through the umask


def _node_key(session: Session, plan: Plan, facts: Facts) -> tuple[Facts, Problem | None]:
    """The node's key pair (agent/nodeauth.py), readable by the container's user; the public
    half goes into the facts, for OneGate. The private key is never read here again."""
    if not plan.has(ActionKind.NODE_KEY) or facts.node_key_dir is None:
        return facts, None
    from agent.nodeauth import ensure_node_key

    assert plan.spec is not None
    supernode = plan.companion or plan.spec
    owner = _owner(supernode.user, facts.image.user if facts.image else None)
    directory = Path(facts.node_key_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)  # the agent's own directory; the container's user enters it
        key = session.timed("node_key", ensure_node_key, directory, owner)
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "strerror", None) or type(exc).__name__)
        return facts, problem("node_key_failed", facts.node_key_dir, reason)
    return replace(facts, node_public_key=key.public_openssh), None


def _owner(user: str | None, image_user: str | None) -> tuple[int, int]:
    """The uid and gid the container runs as: the spec's user, else the image's own (the plan
    keeps it only when numeric and not root: agent/plan.py numeric_non_root)."""
    uid, _, gid = (user or image_user or "").partition(":")
    return int(uid), int(gid or uid)


def _key_attributes(facts: Facts) -> dict[str, str]:
    from agent.nodeauth import PUBLIC_KEY_ATTRIBUTE

    return {PUBLIC_KEY_ATTRIBUTE: facts.node_public_key} if facts.node_public_key else {}


def remove_leftovers(session: Session, plan: Plan) -> tuple[Problem, ...]:
    """The containers the plan removes: a SuperExec of an earlier FL_ISOLATION=process, the
    other FL_ROLE's; a failure is a problem on the record, not a reason to stop."""
    from agent.engine import EngineError

    if session.engine is None:
        return ()
    problems: tuple[Problem, ...] = ()
    for action in (a for a in plan.actions if a.kind == ActionKind.REMOVE_CONTAINER):
        try:
            session.engine.remove(action.target)
        except EngineError as exc:
            problems += (problem("container_remove_failed", action.target, exc.message[:200]),)
    return problems


def converge_container(session: Session, spec, fallback, facts: Facts) -> ConvergeResult:
    """Converge the container; a SuperNode whose key the SuperLink refused waits for the key's
    registration (agent/engine.py await_registration), the key published first with the full
    OneGate budget: the STARTING report that carried it may have been only queued, and a
    periodic run sends no progress reports at all."""
    from agent import engine

    assert spec is not None and session.engine is not None
    result = engine.converge(
        session.engine,
        spec,
        fallback=fallback,
        stability_s=session.options.stability_s,
        reconnect_s=session.options.docker_timeout_s,
        repairs=_gpu_repairs(session),
    )
    wait_s = session.options.registration_wait_s
    if wait_s <= 0 or not any(p.name == "node_auth_rejected" for p in result.problems):
        return result
    session.progress.publish(_key_attributes(facts))
    return engine.await_registration(session.engine, result, wait_s)


def _gpu_repairs(session: Session):
    """Repairs act on the live machine: only for the root `/`; the engine restart only at boot."""
    from agent import engine

    if session.root.prefix.resolve() != Path("/"):
        return None
    return engine.GpuRepairs(at_boot=not session.options.periodic)


def _record(
    session: Session, plan: Plan, facts: Facts, report: ValidationReport | None, ending: Ending
) -> Outcome:
    """The terminal record: OneGate (READY only when running), state file, appliance report."""
    from agent import appliance
    from agent.outcome import READY
    from agent.record import gpu_attributes
    from agent.state import write_state

    record = session.outcome(plan, facts, report, ending).record
    state = ending.state
    error = (record.problems[0].name, record.problems[0].message) if record.problems else None
    gpu = report.facts if report else None
    attrs = gpu_attributes(gpu, ending.mode, record.validation)
    if ending.attributes is not None:
        attrs = ending.attributes
    elif facts.established is not None:  # nothing re-read: the boot's GPU facts stay as sent
        attrs = {"FL_GPU_MODE": attrs["FL_GPU_MODE"]}
    attrs |= _key_attributes(facts)
    session.progress.report(state, facts=attrs, error=error, ready=state in READY)
    record = replace(record, last_reported_state=session.progress.last)
    failed = write_state(session.root, record.to_dict())
    if failed:  # the node is unaffected; say so in the log and in the outcome printed
        log.get("boot").error("state not written", problem=failed.name, detail=str(failed))
        record = record.with_problem(failed)
    try:
        appliance.write_service_report(session.root, record.to_dict())
        (appliance.mark_ready if state in READY else appliance.clear_ready)(session.root)
    except OSError as exc:
        log.get("boot").error("appliance report not written", error=exc.strerror or str(exc))
    return Outcome(record, plan)
