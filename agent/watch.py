"""`fl-agent watch`: life after boot. GPU health, the SuperNode's GPU access, its own state.

One long-running loop (systemd/fl-agent-watch.service restarts it whenever it dies):
- between ticks it waits on NVML's events (agent/gpu/health.py `NvmlEvents`); an event is
  summarised and reported at once, without waiting for the tick;
- each tick (default every 60 s) reads the GPUs' health counters, checks from inside the
  SuperNode container that it still reaches the GPUs it was given (agent/gpu/access.py) and
  repairs it as `repair_for` decides (restart, then recreate from the boot's spec), and reads
  the SuperNode's log since the last tick into FL_SUPERNODE_STATUS (agent/supernode_status.py);
- OneGate gets an attribute only when its value changed; READY is never touched here;
- a GPU NVML reports lost or gone on `CONFIRM_OBSERVATIONS` consecutive ticks is a confirmed
  loss, written to the watch state for the re-convergence to act on (agent/reconverge.py
  `watch_confirmed_loss` reads it);
- on the superlink role (the boot record has a `superlink` part) a tick does only what fits the
  role: it registers the keys of the service's SuperNodes and unregisters those of VMs that left
  (agent/registration.py `sync`, under the boot lock), and reports FL_NODES_REGISTERED when the
  count changed. No GPU, no NVML, no SuperNode log.

Nothing here restarts dockerd, runs a probe container or creates a CUDA context. A failing
NVML, engine or OneGate is a named problem in the log and the watch state, and the next tick
tries again. The OneGate queue is re-sent by its own timer (fl-agent-onegate-resend.timer), not
here. The state (watch.json, 0600, atomic) is what `fl-agent status` shows.
"""

from __future__ import annotations

import calendar
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import log
from agent.errors import AgentError, Problem
from agent.gpu import access as gpu_access
from agent.gpu import health as gpu_health
from agent.outcome import problem
from agent.paths import Root
from agent.reconverge import WATCH_STATE_FILE, boot_id, host_loss, inventory
from agent.state import boot_lock, read_json_object, read_state, write_private_json
from agent.supernode_status import LogState, SupernodeStatus, advance

DEFAULT_INTERVAL_S = 60.0
REGISTRATION_INTERVAL_S = 10.0
"""How often the superlink role looks for new SuperNode keys in its service."""
CONFIRM_OBSERVATIONS = 3
"""Consecutive ticks on which NVML must say a given GPU is lost or gone before the loss is
confirmed: with the default interval, a loss that lasts two minutes. One reading is never
enough: a fabric or driver blip passes, a GPU off the bus stays off."""
EVENT_WAIT_MS = 1000  # one wait on NVML's event set; SIGTERM is seen within it
MAX_EVENTS = 32  # kept across watch restarts within one VM boot
LOG_FIRST_TAIL = 500  # lines of a container's log read when the watch first sees it
LOG_SINCE_TAIL = 2000
"""The newest lines read since the last tick at most: a ClientApp that prints a lot (its code
comes from whoever submits runs) or a long gap since the last read never costs more; the
status the log gives is in its newest lines."""
EXEC_TIMEOUT_S = 30.0

STATUS_ATTRIBUTE = "FL_SUPERNODE_STATUS"
NODES_ATTRIBUTE = "FL_NODES_REGISTERED"
ACCESS_ATTRIBUTE = "FL_GPU_ACCESS"
REPAIR_ATTRIBUTE = "FL_GPU_ACCESS_REPAIR"


def _log():
    return log.get("watch")


# --------------------------------------------------------------------------- the boot's target


@dataclass(frozen=True)
class Target:
    """What the last boot left running, from its state file."""

    name: str
    container_id: str | None
    mode: str  # GPU | CPU | NONE
    expected: tuple[str, ...]  # GPU/MIG UUIDs given to the container (GPU mode)
    spec: dict[str, Any] | None  # the running spec as the plan recorded it
    log_name: str = ""  # the SuperNode whose log says its status ("": `name` itself)


def target_from_record(record: dict | None) -> Target | None:
    """The running container and its GPUs from the boot record; None when nothing runs.

    The target is the container that holds the GPUs: the SuperNode, or with
    FL_ISOLATION=process its SuperExec; the status is read from the SuperNode's log then."""
    record = record or {}
    plan = record.get("plan") or {}
    container = record.get("container") or {}
    companion = record.get("companion") or {}
    pair = ("companion", "companion_fallback")
    if not container.get("container_id"):
        if not companion.get("container_id"):
            return None
        alone = _recorded_spec(plan, pair, companion)  # the pair's SuperExec never started
        name = (alone or {}).get("name") or companion["container_id"]
        return Target(name, companion["container_id"], "NONE", (), alone)
    spec = _recorded_spec(plan, ("spec", "fallback"), container)
    mode = str(container.get("mode") or "NONE")
    expected: tuple[str, ...] = ()
    if mode == "GPU":
        expected = tuple((spec or {}).get("gpu_device_ids") or ()) or inventory(record)
    name = (spec or {}).get("name") or container["container_id"]
    supernode = _recorded_spec(plan, pair, companion)
    log_name = (supernode or {}).get("name") or ""
    return Target(name, container["container_id"], mode, expected, spec, log_name)


def _recorded_spec(plan: dict, keys: tuple[str, ...], container: dict) -> dict | None:
    """The plan's spec (of `keys`) that the converged `container` runs, by its hash."""
    specs = (plan.get(k) for k in keys)
    wanted = container.get("spec_hash")
    return next((s for s in specs if s and s.get("spec_hash") == wanted), None)


# --------------------------------------------------------------------------- the watch's state


@dataclass(frozen=True)
class GpuLoss:
    observations: int = 0  # consecutive ticks with a given GPU lost or gone
    uuids: tuple[str, ...] = ()
    since: str | None = None  # first of those ticks

    @property
    def confirmed(self) -> bool:
        return self.observations >= CONFIRM_OBSERVATIONS


@dataclass(frozen=True)
class WatchState:
    """What the watch knows between ticks and across its own restarts (watch.json)."""

    boot_id: str = ""  # the kernel's: events are kept only within one VM boot
    sent: dict[str, str] = field(default_factory=dict)  # what OneGate was last handed
    events: tuple[gpu_health.GpuEvent, ...] = ()
    health: dict[str, str] = field(default_factory=dict)
    log_container: str | None = None
    log_since: str | None = None  # Docker's timestamp of the last log line read
    supernode: LogState = field(default_factory=LogState)
    access: dict[str, Any] = field(default_factory=dict)
    loss: GpuLoss = field(default_factory=GpuLoss)
    nodes_registered: int | None = None  # superlink role: keys registered after the last pass
    problems: tuple[Problem, ...] = ()
    updated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        loss = asdict(self.loss) | {"confirmed": self.loss.confirmed}
        return {
            "boot_id": self.boot_id,
            "sent": self.sent,
            "events": [asdict(e) for e in self.events],
            "health": self.health,
            "log_container": self.log_container,
            "log_since": self.log_since,
            "supernode": asdict(self.supernode),
            "access": self.access,
            "gpu_loss": loss,
            "nodes_registered": self.nodes_registered,
            "problems": [p.to_dict() for p in self.problems],
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WatchState:
        supernode = dict(data.get("supernode") or {})
        supernode["status"] = SupernodeStatus(supernode.get("status", "STARTING"))
        loss = {k: v for k, v in (data.get("gpu_loss") or {}).items() if k != "confirmed"}
        return cls(
            boot_id=data.get("boot_id", ""),
            sent=dict(data.get("sent") or {}),
            events=tuple(gpu_health.GpuEvent(**e) for e in data.get("events") or ()),
            health=dict(data.get("health") or {}),
            log_container=data.get("log_container"),
            log_since=data.get("log_since"),
            supernode=LogState(**supernode),
            access=dict(data.get("access") or {}),
            loss=GpuLoss(**{**loss, "uuids": tuple(loss.get("uuids") or ())}),
            nodes_registered=data.get("nodes_registered"),
        )


def watch_state_path(root: Root) -> Path:
    return root.state_dir / WATCH_STATE_FILE


def read_watch_state(root: Root) -> dict[str, Any] | None:
    """The watch's last state as JSON (what `fl-agent status` shows); None when absent."""
    return read_json_object(watch_state_path(root))


def load_state(root: Root) -> WatchState:
    """The kept state when it is of this VM boot (same kernel boot id); else a fresh one."""
    current = boot_id(root)
    data = read_watch_state(root)
    try:
        kept = WatchState.from_dict(data) if data else WatchState()
    except (TypeError, ValueError, KeyError):
        kept = WatchState()
    if kept.boot_id != current:  # a reboot reset the GPUs: only the attributes sent remain
        return WatchState(boot_id=current, sent=kept.sent)
    return kept


# --------------------------------------------------------------------------- decide (pure)


def observe_loss(
    loss: GpuLoss, facts: gpu_health.HealthFacts | None, expected: tuple[str, ...], now: str
) -> GpuLoss:
    """One more observation of the GPUs the container was given: lost (NVML_ERROR_GPU_IS_LOST)
    or gone (no longer listed) counts, as agent/reconverge.py's `host_loss` reads NVML; an
    NVML that did not answer at all does not count either way."""
    if facts is None or not facts.available or facts.problem or not expected:
        return loss
    lost = host_loss(facts, expected)
    if not lost:
        return GpuLoss()
    return GpuLoss(loss.observations + 1, lost, loss.since or now)


def status_attributes(state: WatchState) -> dict[str, str]:
    """Every attribute the watch reports, as it stands now."""
    values = dict(state.health)
    if state.log_container:
        values[STATUS_ATTRIBUTE] = str(state.supernode.status)
    if state.access.get("state"):
        values[ACCESS_ATTRIBUTE] = _access_value(state.access)
    if state.access.get("repair"):
        values[REPAIR_ATTRIBUTE] = state.access["repair"]
    if state.nodes_registered is not None:
        values[NODES_ATTRIBUTE] = str(state.nodes_registered)
    return values


def _access_value(access: dict[str, Any]) -> str:
    state = access["state"].upper()
    return (
        f"{state}:{access['reason']}" if access.get("reason") and state == "LOST_ACCESS" else state
    )


def to_send(sent: dict[str, str], now: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """(updates, deletes) that bring OneGate from what it was handed to `now`."""
    updates = {k: v for k, v in now.items() if sent.get(k) != v}
    return updates, tuple(k for k in sent if k not in now)


# --------------------------------------------------------------------------- Docker (adapter)


class Docker:
    """The watch's Docker calls, the only ones it makes: agent/engine.py's Engine underneath."""

    def __init__(self, engine: Any = None) -> None:
        if engine is None:
            from agent.engine import Engine

            engine = Engine.from_env(timeout_s=EXEC_TIMEOUT_S)
        self.engine = engine

    def running(self, name: str) -> str | None:
        """The container's id when it runs, else None."""
        attrs = self.engine.inspect(name)
        if attrs is None or not (attrs.get("State") or {}).get("Running"):
            return None
        return attrs["Id"]

    def exec(self, container_id: str, argv: tuple[str, ...]) -> tuple[int, str]:
        return self.engine.exec(container_id, list(argv), timeout_s=EXEC_TIMEOUT_S)

    def restart(self, container_id: str) -> None:
        self.engine.restart(container_id, timeout_s=10)

    def recreate(self, container_id: str, spec: dict[str, Any]) -> str:
        """Remove the container and create it again from the boot's spec; the new id."""
        from agent.engine import create_body

        built = spec_from_dict(spec)
        self.engine.remove(container_id)
        new_id = self.engine.create(create_body(built), built.name)
        self.engine.start(new_id)
        return new_id

    def log_lines(self, container_id: str, since: str | None) -> list[tuple[str, str]]:
        """(timestamp, line) of the log after `since` (None: its last LOG_FIRST_TAIL lines)."""
        text = self.engine.logs(
            container_id,
            tail=LOG_SINCE_TAIL if since else LOG_FIRST_TAIL,
            since=_unix(since) if since else None,
            timestamps=True,
        )
        lines = []
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            if since is None or _after(stamp, since):
                lines.append((stamp, line))
        return lines


def spec_from_dict(data: dict[str, Any]):
    """The ContainerSpec the plan recorded (its to_dict), built again with the same hash."""
    from agent.plan import Bind, ContainerSpec, Mode

    fields = {k: v for k, v in data.items() if k not in ("spec_hash", "labels")}
    spec = ContainerSpec(
        **{
            **fields,
            "command": tuple(fields["command"]),
            "environment": tuple(sorted(fields["environment"].items())),
            "mode": Mode(fields["mode"]),
            "gpu_device_ids": tuple(fields["gpu_device_ids"]),
            "binds": tuple(Bind(**b) for b in fields["binds"]),
            "tmpfs": tuple(tuple(t) for t in fields["tmpfs"]),
            "cap_drop": tuple(fields["cap_drop"]),
            "security_opt": tuple(fields["security_opt"]),
            "entrypoint": tuple(fields["entrypoint"]) if fields.get("entrypoint") else None,
        }
    )
    if spec.spec_hash != data.get("spec_hash"):
        raise ValueError(f"the recorded spec rebuilds to hash {spec.spec_hash}, not its own")
    return spec


def _stamp(text: str) -> tuple[int, int]:
    """Docker's RFC 3339 timestamp (nanoseconds, trailing zeros cut) as (seconds, nanos)."""
    whole, _, rest = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds, int((rest[:9] or "0").ljust(9, "0"))


def _unix(text: str) -> str:
    """The engine's `since` form of a log timestamp (it keeps lines at that very instant)."""
    seconds, nanos = _stamp(text)
    return f"{seconds}.{nanos:09d}"


def _after(stamp: str, since: str) -> bool:
    try:
        return _stamp(stamp) > _stamp(since)
    except ValueError:
        return False


# --------------------------------------------------------------------------- the loop


@dataclass
class Watch:
    """One watch process: its state, its OneGate reporter and its Docker adapter."""

    root: Root
    interval_s: float = DEFAULT_INTERVAL_S
    context_file: Path | None = None
    docker_factory: Callable[[], Docker] = Docker
    clock: Callable[[], float] = time.time
    state: WatchState = field(init=False)
    stopping: bool = False
    _reporter: Any = None
    _docker: Docker | None = None
    _events: Any = None
    _superlink_role: bool = False

    def __post_init__(self) -> None:
        self.state = load_state(self.root)

    # -- the loop

    def run(self, *, once: bool = False) -> None:
        """Tick, wait on events until the next tick, until SIGTERM (or once)."""
        signal.signal(signal.SIGTERM, self._stop)
        _log().info("watch started", interval_s=self.interval_s, state_dir=str(self.root.state_dir))
        try:
            while not self.stopping:
                try:
                    self.tick()
                except Exception as exc:  # a record or answer nobody foresaw: next tick
                    self._problem("watch_tick_failed", "watch", f"{type(exc).__name__}: {exc}")
                if once:
                    return
                self._wait(time.monotonic() + self._interval())
        finally:
            self._close_events()
            _log().info("watch stopped")

    def _interval(self) -> float:
        """The superlink role registers new SuperNodes' keys every REGISTRATION_INTERVAL_S at
        most: a SuperNode's boot waits for its registration (agent/engine.py
        await_registration), one GET /service per pass."""
        if self._superlink_role:
            return min(self.interval_s, REGISTRATION_INTERVAL_S)
        return self.interval_s

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _wait(self, deadline: float) -> None:
        """Until the deadline: NVML events as they come (each reported at once), else sleep."""
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            if self._events is None:
                time.sleep(min(left, EVENT_WAIT_MS / 1000))
                continue
            try:
                event = self._events.wait(int(min(left, EVENT_WAIT_MS / 1000) * 1000) + 1)
            except Exception as exc:  # NVML broke under the wait: retry at the next tick
                self._problem("nvml_events_failed", "NVML", str(exc))
                self._close_events()
                continue
            if self._events.lost:  # waits answer at once from now on: the tick checks
                self._close_events()
            if event is not None:
                self._on_event(event)

    def _on_event(self, event: gpu_health.GpuEvent) -> None:
        _log().warning("gpu event", kind=event.kind, xid=event.xid, uuid=event.uuid)
        self.state = replace(self.state, events=_kept(self.state.events, event))
        target = self._target()
        self._health(target, self._read_health(), self._now())
        self._report()
        self._save()

    # -- one tick

    def tick(self) -> WatchState:
        """One observation of everything; report what changed; save the state."""
        self.state = replace(self.state, problems=())
        record = read_state(self.root)
        self._superlink_role = bool((record or {}).get("superlink"))
        if self._superlink_role:
            self._guarded("node_registration_failed", "flower-superlink", self._register, record)
            self._report()
            self._save()
            return self.state
        now = self._now()
        target = target_from_record(record)
        facts = self._read_health()
        self._health(target, facts, now)
        if target is not None and target.mode == "GPU":
            self.state = replace(
                self.state, loss=observe_loss(self.state.loss, facts, target.expected, now)
            )
            if self.state.loss.confirmed:
                _log().error("gpu loss confirmed", uuids=list(self.state.loss.uuids))
        docker = self._docker_or_none() if target is not None else None
        if docker is not None and target is not None:
            self._guarded("supernode_log_unreadable", target.name, self._follow_log, docker, target)
            if target.mode == "GPU":
                self._guarded(
                    "gpu_access_unchecked", target.name, self._access, docker, target, facts
                )
        self._open_events(facts)
        self._report()
        self._save()
        return self.state

    def _register(self, record: dict[str, Any]) -> None:
        """The superlink role's tick: one registration pass while the SuperLink runs."""
        from agent import registration
        from agent.superlink import CONTAINER_NAME

        if not record["superlink"].get("node_auth"):
            return
        docker, reporter = self._docker_or_none(), self._reporter_or_none()
        if docker is None or reporter is None or not reporter.enabled:
            return
        if docker.running(CONTAINER_NAME) is None:  # not running: the re-convergence's business
            return
        try:
            with boot_lock(self.root):  # never while a boot registers too
                done = registration.sync(
                    self.root, docker.engine, reporter, str(record.get("flower_version"))
                )
        except AgentError as exc:
            _log().info("registration waits", reason=exc.first.name)
            return
        for found in done.problems:
            _log().error(found.name, subject=found.subject, message=found.message)
        problems = (*self.state.problems, *done.problems)
        self.state = replace(self.state, nodes_registered=done.count, problems=problems)

    def _target(self) -> Target | None:
        return target_from_record(read_state(self.root))

    def _read_health(self) -> gpu_health.HealthFacts | None:
        try:
            return gpu_health.read_health()
        except Exception as exc:  # bindings missing or broken: not the loop's end
            self._problem("nvml_unreadable", "NVML", str(exc))
            return None

    def _health(self, target: Target | None, facts, now: str) -> None:
        """FL_GPU_HEALTH* when the node has GPUs to speak of (given at boot, or seen now)."""
        gpu_node = target is not None and target.mode == "GPU"
        if facts is None or not (gpu_node or (facts.available and facts.gpus)):
            return
        expected = target.expected if gpu_node else ()
        health = gpu_health.summarise(facts, self.state.events, expected)
        self.state = replace(self.state, health=health.attributes())

    def _follow_log(self, docker: Docker, target: Target) -> None:
        """The SuperNode's log lines since the last read, folded into its status."""
        if target.log_name:
            container_id = docker.running(target.log_name) or target.log_name
        else:
            container_id = docker.running(target.name) or target.container_id
        state = self.state
        if container_id != state.log_container:  # a new container: a new log
            state = replace(state, log_container=container_id, log_since=None, supernode=LogState())
        folded, since = state.supernode, state.log_since
        for stamp, line in docker.log_lines(container_id, since):
            folded, since = advance(folded, line), stamp
        if folded.status != state.supernode.status:
            _log().info("supernode status", status=str(folded.status), evidence=folded.evidence)
        self.state = replace(state, supernode=folded, log_since=since)

    def _access(self, docker: Docker, target: Target, facts) -> None:
        """Check from inside the container; climb the repair ladder while access is lost.

        The repairs made for one loss are kept across ticks (`tried`) until access is back: a
        loss neither repair clears is reported, not repaired again at every tick."""
        container_id = docker.running(target.name)
        if container_id is None:  # not running: the re-convergence's business
            self.state = replace(self.state, access={"state": "not_running"})
            return
        access = self._check(docker, container_id, target)
        host = {g.uuid for g in (facts.gpus if facts else ()) if g.uuid and not g.lost}
        before = list(self.state.access.get("tried") or ()) if access.state != gpu_access.OK else []
        tried = list(before)
        if gpu_access.repair_for(access, host, tried) is not None:
            try:
                with boot_lock(self.root):  # never while a boot converges the same container
                    access = self._repair(docker, container_id, target, access, host, tried)
            except AgentError as exc:
                _log().info("gpu access repair waits", reason=exc.first.name)
        record: dict[str, Any] = {
            "state": access.state,
            "reason": access.reason if access.state == gpu_access.LOST else None,
            "missing": list(access.missing),
            "tried": tried if access.state == gpu_access.LOST else [],
            "repair": self.state.access.get("repair"),
        }
        if tried != before:
            done = tried[len(before) :]
            outcome = "restored" if access.state == gpu_access.OK else "still lost"
            record["repair"] = f"{' then '.join(done)} at {self._now()}: {outcome}"
            _log().warning("gpu access repair", repairs=done, outcome=outcome)
        self.state = replace(self.state, access=record)

    def _repair(self, docker, container_id, target, access, host, tried: list[str]):
        """The ladder from where this loss stands; `tried` grows with each repair made."""
        while (action := gpu_access.repair_for(access, host, tried)) is not None:
            if action == gpu_access.RECREATE and target.spec is None:
                break
            _log().warning("gpu access lost", reason=access.reason, repair=action)
            if action == gpu_access.RESTART:
                docker.restart(container_id)
            else:
                container_id = docker.recreate(container_id, target.spec)
            tried.append(action)
            access = self._check(docker, container_id, target)
        return access

    def _check(self, docker: Docker, container_id: str, target: Target) -> gpu_access.GpuAccess:
        code, output = docker.exec(container_id, gpu_access.COMMAND)
        return gpu_access.check_access(code, output, target.expected)

    # -- effects around the tick

    def _open_events(self, facts) -> None:
        if self._events is not None or facts is None or not facts.available or not facts.gpus:
            return
        try:
            events = gpu_health.NvmlEvents(self.clock)
            self._events = events.__enter__()
        except Exception as exc:
            self._problem("nvml_events_failed", "NVML", str(exc))

    def _close_events(self) -> None:
        if self._events is not None:
            self._events.__exit__()
            self._events = None

    def _docker_or_none(self) -> Docker | None:
        if self._docker is None:
            try:
                self._docker = self.docker_factory()
            except Exception as exc:
                self._problem("docker_unavailable", "docker", str(exc))
        return self._docker

    def _report(self) -> None:
        now = status_attributes(self.state)
        updates, deletes = to_send(self.state.sent, now)
        if not updates and not deletes:
            return
        reporter = self._reporter_or_none()
        if reporter is None:
            return  # nothing handed over: not marked sent, tried again at the next tick
        try:
            reporter.send(updates, deletes, timeout_s=5.0)
        except Exception as exc:
            self._problem("onegate_report_failed", "OneGate", str(exc))
            return  # not handed over: tried again at the next change or tick
        _log().info("reported", updates=updates, deletes=list(deletes))
        self.state = replace(self.state, sent=now)

    def _reporter_or_none(self):
        if self._reporter is None:
            try:
                from agent.context import load_context
                from agent.onegate import Reporter

                context = load_context(self.root, self.context_file)
                self._reporter = Reporter.from_context(context, self.root, total_timeout_s=5.0)
            except Exception as exc:
                self._problem("onegate_unavailable", "OneGate", str(exc))
        return self._reporter

    def _save(self) -> None:
        self.state = replace(self.state, updated_at=self._now())
        failed = write_private_json(watch_state_path(self.root), self.state.to_dict(), "watch")
        if failed:
            _log().error("watch state not written", problem=str(failed))

    def _guarded(self, name: str, subject: str, func: Callable, *args: Any) -> None:
        try:
            func(*args)
        except Exception as exc:  # the engine went away, answered nonsense, ...: next tick
            self._problem(name, subject, str(exc))

    def _problem(self, name: str, subject: str, message: str) -> None:
        found = problem(name, subject, " ".join(message.split())[:300])
        _log().error(name, subject=subject, message=found.message)
        self.state = replace(self.state, problems=(*self.state.problems, found))

    def _now(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))


def _kept(events: tuple[gpu_health.GpuEvent, ...], event: gpu_health.GpuEvent):
    """The newest events of each kind: reset-class ones (they stay FAILED until a reboot) and
    the others, MAX_EVENTS // 2 of each."""
    everything = (*events, event)
    sticky = [e for e in everything if e.action in (gpu_health.REBOOT_VM, gpu_health.RESTART_HOST)]
    rest = [e for e in everything if e not in sticky]
    half = MAX_EVENTS // 2
    return tuple(sorted((*sticky[-half:], *rest[-half:]), key=lambda e: e.at))


def run(root: Root, *, interval_s: float, context_file: Path | None, once: bool) -> WatchState:
    watch = Watch(root, interval_s, context_file)
    watch.run(once=once)
    return watch.state
