"""`fl-agent boot` on the superlink role: observe, plan (agent/superlink.py), apply, record.

The same pipeline and handles as the SuperNode's boot (agent/boot.py: Session, Progress, the
record), with the role's own steps:
- observe (writes nothing): the image, the VM's addresses from the context (ETHn_IP, ETHn_IP6,
  SET_HOSTNAME), the TLS material on disk and whether it would be reused (agent/tls.py
  `renewal`), or the operator's material checked;
- apply: pull the image when absent, keep or issue the CA and server certificate (or install the
  operator's), prepare the state and control directories, plan again with the certificate now on
  disk (its fingerprint is in the spec: a renewed certificate replaces the container, a reused
  one leaves it running), converge, wait until the Fleet API port answers, register the
  service's SuperNode keys (agent/registration.py) and record: FL_ENDPOINT, FL_CA_CERT, FL_TLS,
  FL_VERSION, FL_NODES_REGISTERED and READY=YES once it serves.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent import firewall, flower, tls
from agent.config import Config
from agent.errors import AgentError, Problem
from agent.outcome import BootState, Mode, problem
from agent.paths import Root
from agent.plan import ActionKind, Plan
from agent.superlink import (
    AGENT_TLS,
    CLI_DIR,
    CONTROL_DIR,
    FLOWER_USER,
    KEYS_DIR,
    LOOPBACK,
    NO_TLS,
    OPERATOR_TLS,
    STATE_DIR,
    SuperlinkInputs,
    TlsMaterial,
    cli_file,
    make_superlink_plan,
    node_auth,
    published,
)

if TYPE_CHECKING:
    from agent.boot import Facts, Outcome, Session
    from agent.engine import ConvergeResult
    from agent.registration import Registration

SERVE_POLL_S = 0.5


# --------------------------------------------------------------------------- observe


def observe(session: Session, facts: Facts) -> Facts:
    """The image, the addresses and the TLS material; writes nothing."""
    from agent.boot import _image

    config = facts.config
    assert config is not None
    try:
        image = session.timed("image", _image, session, config.supernode_image)
        other = _other_role(session)
    except AgentError as exc:
        return replace(facts, blocking=exc.problems)
    platform = facts.platform
    material, problems = observe_tls(session.root, config, platform.ips, platform.hostname)
    inputs = SuperlinkInputs(
        image=image,
        ips=platform.ips,
        hostname=platform.hostname,
        tls=material,
        state_dir_host=str(session.root.path(STATE_DIR)),
        control_dir_host=str(session.root.path(CONTROL_DIR)),
        blocking=problems,
        other_role=other,
    )
    return replace(facts, image=image, superlink=inputs, blocking=problems)


def _other_role(session: Session) -> tuple[str, ...]:
    """This agent's SuperNode containers, left running by an FL_ROLE change."""
    from agent import instance
    from agent.boot import other_role_containers

    which = instance.current()
    return other_role_containers(session.engine, which, (which.supernode, which.superexec))


def observe_tls(
    root: Root,
    config: Config,
    ips: tuple[str, ...],
    hostname: str | None,
    now: datetime | None = None,
) -> tuple[TlsMaterial, tuple[Problem, ...]]:
    """The TLS material as it is on disk (agent's) or given (operator's), and what blocks it."""
    if not config.tls_enabled:
        return TlsMaterial(NO_TLS, reason="FL_TLS_ENABLED=NO"), ()
    if config.ssl_cert is not None and config.ssl_key is not None and config.ssl_ca_cert:
        problems = tls.operator_material_problems(
            config.ssl_ca_cert.encode(), config.ssl_cert.encode(), config.ssl_key.reveal().encode()
        )
        directory = tls.operator_tls_files(root).directory
        material = TlsMaterial(
            OPERATOR_TLS,
            str(directory),
            _fingerprint(config.ssl_cert),
            "FL_SSL_CA_CERT, FL_SSL_CERT and FL_SSL_KEY",
            config.ssl_ca_cert,
        )
        return material, problems
    files = tls.tls_files(root)
    has_ca = files.ca_cert.exists() and files.ca_key.exists()
    facts = tls.facts_on_disk(files) if has_ca else None
    decision = tls.renewal(facts, tls.wanted_sans(ips, hostname), now or datetime.now(UTC))
    reason = decision.reason if has_ca else "no CA yet: a new CA and server certificate"
    server = None if decision.issue else _read(files.server_cert)
    ca = _read(files.ca_cert) if has_ca else None
    return TlsMaterial(AGENT_TLS, str(files.directory), _fingerprint(server), reason, ca), ()


def _read(path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _fingerprint(pem: str | None) -> str | None:
    found = tls.fingerprints(pem) if pem else ()
    return found[0] if found else None


# --------------------------------------------------------------------------- plan, run


def plan_superlink(facts: Facts) -> Plan:
    if facts.config is None or facts.superlink is None:
        return Plan.nothing(facts.blocking)
    return make_superlink_plan(facts.config, facts.superlink)


def run(session: Session, facts: Facts) -> Outcome:
    """Plan, then (unless dry) apply; the superlink role's `_run`."""
    from agent.boot import Ending

    plan = plan_superlink(facts)
    if session.options.dry_run:
        ending = Ending(plan.state, superlink=_summary(facts, None))
        return session.outcome(plan, facts, None, ending, dry_run=True)
    return apply(session, plan, facts)


# --------------------------------------------------------------------------- apply


def apply(session: Session, plan: Plan, facts: Facts) -> Outcome:
    """Perform the plan's actions, in order; every ending is recorded."""
    from agent.boot import converge_container, remove_leftovers

    config, inputs = facts.config, facts.superlink
    if plan.spec is None or config is None or inputs is None:
        return _end(session, plan, facts, BootState.FAILED, ())
    if plan.has(ActionKind.PULL_IMAGE):
        failed, inputs = _pull(session, config, inputs)
        if failed is not None:
            return _end(session, plan, facts, BootState.FAILED, (failed,))
    session.progress.report(BootState.STARTING)
    failed = session.timed("superlink_files", _prepare_files, session.root, config, inputs)
    if failed is not None:
        return _end(session, plan, facts, BootState.FAILED, (failed,))
    material, _ = observe_tls(session.root, config, inputs.ips, inputs.hostname)
    facts = replace(facts, superlink=replace(inputs, tls=material))
    plan = make_superlink_plan(config, facts.superlink)
    closed = session.timed("firewall", _open_firewall, session.root, config)
    closed = (closed,) if closed else ()
    closed += session.timed("remove_leftovers", remove_leftovers, session, plan)
    result = session.timed("converge", converge_container, session, plan.spec, None, facts)
    if not result.running:
        return _end(session, plan, facts, BootState.FAILED, result.problems, result)
    silent = session.timed("serving", _silent_port, config, session.options.serve_wait_s)
    if silent is not None:
        detail = f"127.0.0.1:{silent} did not answer in {session.options.serve_wait_s:.0f} s"
        failed = problem("superlink_not_serving", plan.spec.name, detail)
        return _end(session, plan, facts, BootState.FAILED, (failed,), result)
    registration = None
    reporter = session.progress.reporter
    if plan.has(ActionKind.REGISTER_NODES) and reporter is not None and reporter.enabled:
        registration = session.timed("registration", _register, session, config)
    problems = closed + (registration.problems if registration else ())
    return _end(session, plan, facts, BootState.RUNNING, problems, result, registration)


def _pull(
    session: Session, config: Config, inputs: SuperlinkInputs
) -> tuple[Problem | None, SuperlinkInputs]:
    from agent.boot import pull_image

    failed, image = pull_image(session, config.supernode_image)
    return failed, replace(inputs, image=image) if image is not None else inputs


def _prepare_files(root: Root, config: Config, inputs: SuperlinkInputs) -> Problem | None:
    """The TLS material, the state directory (49999, 0700) and the control directory."""
    try:
        _ensure_tls(root, config, inputs)
    except (OSError, ValueError) as exc:
        return problem("superlink_tls_failed", inputs.tls.directory, _why(exc))
    try:
        prepare_dirs(root, config, inputs.tls)
    except OSError as exc:
        return problem("superlink_files_failed", str(exc.filename or STATE_DIR), _why(exc))
    return None


def _why(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or type(exc).__name__)


def _ensure_tls(root: Root, config: Config, inputs: SuperlinkInputs) -> None:
    material = inputs.tls
    if material.source == AGENT_TLS:
        sans = tls.wanted_sans(inputs.ips, inputs.hostname)
        ensured = tls.ensure_server_tls(tls.tls_files(root), sans, key_owner=FLOWER_USER)
        if ensured.changed:
            from agent import log

            log.get("superlink").info("tls issued", reason=ensured.renewal.reason)
    elif material.source == OPERATOR_TLS:
        assert config.ssl_ca_cert and config.ssl_cert and config.ssl_key is not None
        tls.install_operator_material(
            tls.operator_tls_files(root),
            config.ssl_ca_cert.encode(),
            config.ssl_cert.encode(),
            config.ssl_key.reveal().encode(),
            key_owner=FLOWER_USER,
        )
    if material.enabled:
        os.chmod(material.directory, 0o755)  # the container's user reaches its files


def prepare_dirs(root: Root, config: Config, material: TlsMaterial) -> None:
    """The SuperLink's database directory (its user's, 0700; an existing one is kept and its
    owner set again) and the control directory the `flwr` CLI reads (root's, readable)."""
    state = root.path(STATE_DIR)
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, *FLOWER_USER)
    state.chmod(0o700)
    control = root.path(CONTROL_DIR)
    for directory in (control, control / CLI_DIR, control / KEYS_DIR):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    from agent.atomicfile import write_atomic

    name, text = cli_file(config, material)
    for stale in (control / CLI_DIR).iterdir():
        if stale.name != name:
            stale.unlink()
    write_atomic(control / CLI_DIR / name, text, mode=0o644)


def _open_firewall(root: Root, config: Config) -> Problem | None:
    """The Fleet API port SuperNodes dial, in the image's firewall (agent/firewall.py)."""
    release = flower.release_for(config.flower_version)
    assert release is not None  # build_config accepts only versions of the table
    return firewall.open_ports(root, (release.fleet_port,), firewall.live_runner(root))


def _silent_port(config: Config, wait_s: float) -> int | None:
    """The first of the Fleet API port (what READY promises) and the Control API port (what
    the registration needs) that does not answer within `wait_s`; None when both do."""
    release = flower.release_for(config.flower_version)
    assert release is not None  # build_config accepts only versions of the table
    deadline = time.monotonic() + wait_s
    for port in dict.fromkeys((release.fleet_port, release.control_port)):
        if not serving(port, max(0.0, deadline - time.monotonic())):
            return port
    return None


def serving(port: int, wait_s: float, host: str = LOOPBACK) -> bool:
    """Whether a TCP connection to host:port opens within `wait_s` (polled, bounded)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() + SERVE_POLL_S >= deadline:
                return False
            time.sleep(SERVE_POLL_S)


def _register(session: Session, config: Config) -> Registration:
    """One registration pass; without OneGate there is no service to read keys from."""
    from agent import registration

    return registration.sync(
        session.root, session.engine, session.progress.reporter, config.flower_version
    )


# --------------------------------------------------------------------------- record


def _end(
    session: Session,
    plan: Plan,
    facts: Facts,
    state: BootState,
    problems: tuple[Problem, ...],
    result: ConvergeResult | None = None,
    registration: Registration | None = None,
) -> Outcome:
    """The terminal record through the boot's own `_record`, with the role's attributes: what
    the SuperNodes read only once the SuperLink serves."""
    from agent.boot import Ending, _record

    attributes: dict[str, str] = {}
    if state == BootState.RUNNING and facts.config and facts.superlink:
        attributes = published(facts.config, facts.superlink)
        if registration is not None:
            attributes["FL_NODES_REGISTERED"] = str(registration.count)
    mode = Mode.CPU if state == BootState.RUNNING else Mode.NONE
    ending = Ending(
        state,
        plan.problems + problems,
        mode,
        result,
        attributes=attributes,
        superlink=_summary(facts, registration),
    )
    return _record(session, plan, facts, None, ending)


def _summary(facts: Facts, registration: Registration | None) -> dict | None:
    """The role's part of the boot record: what it publishes (the CA as its fingerprint), its
    TLS, authentication and the registration pass. `fl-agent watch` reads it."""
    config, inputs = facts.config, facts.superlink
    if config is None or inputs is None:
        return None
    shown = published(config, inputs)
    shown.pop("FL_CA_CERT")
    ca = _fingerprint(inputs.tls.ca_pem)
    return {
        "role": "superlink",
        "published": shown,
        "ca_sha256": ca,
        "tls": inputs.tls.to_dict(),
        "node_auth": node_auth(config, inputs.tls),
        "addresses": list(inputs.ips),
        "hostname": inputs.hostname,
        "image": inputs.image.to_dict(),
        "registration": registration.to_dict() if registration else None,
    }
