"""The superlink role's plan (FL_ROLE=superlink): the SuperLink container and what it publishes.

Pure: `boot` observes the facts (agent/superlink_boot.py: the VM's addresses, the image, the TLS
material on disk) and hands them over as `SuperlinkInputs`; tests build them by hand.

The SuperLink runs in the SuperNode's image (`--entrypoint flower-superlink`), hardened as the
SuperNode is (every capability dropped, no-new-privileges, uid 49999, host network, restart
unless-stopped), never with a GPU. Its database lives on a persistent directory (STATE_DIR,
owned by 49999, 0700), so a restart keeps the runs and the registered SuperNodes. Its TLS files
are mounted read-only one by one (the CA key, in the same directory, is never mounted).

The server certificate's SHA-256 is part of the container's environment (CERT_ENV), hence of
its spec hash: the container is replaced exactly when the certificate changed (issued,
renewed, or the operator's replaced), and left running while it is reused.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from agent import firewall, flower, instance
from agent.config import Config
from agent.errors import Problem
from agent.outcome import Mode
from agent.plan import (
    CONTAINER_USER,
    FALLBACK_HOME,
    Action,
    ActionKind,
    Bind,
    ContainerSpec,
    ImageFacts,
    Plan,
)

ROLE = "superlink"
CONTAINER_NAME = instance.SUPERLINK
STATE_DIR = "/var/lib/fl-agent/superlink"
"""The SuperLink's database (runs, registered nodes): owned by its user, kept across reboots."""
CONTROL_DIR = "/var/lib/fl-agent/superlink-control"
"""What the agent hands the SuperLink's `flwr` CLI: its connection file (cli/) and the public
keys to register (keys/); mounted read-only."""
FLOWER_USER = (49999, 49999)
"""The SuperLink container's user: it owns the state directory and reads the server key."""
TLS_MOUNT = "/fl-agent/tls"
STATE_MOUNT = "/fl-agent/state"
CONTROL_MOUNT = "/fl-agent/control"
CLI_DIR = "cli"
KEYS_DIR = "keys"
CERT_ENV = "FL_TLS_CERT_SHA256"
TLS_NAMES = ("ca.crt", "server.crt", "server.key")
"""The files flower-superlink reads, in ServerTlsPaths' order (agent/tls.py TlsFiles names)."""
LOOPBACK = "127.0.0.1"

AGENT_TLS = "agent"
OPERATOR_TLS = "operator"
NO_TLS = "off"


@dataclass(frozen=True)
class TlsMaterial:
    """The SuperLink's TLS as observed: whose it is, where, and what is on disk now."""

    source: str  # AGENT_TLS | OPERATOR_TLS | NO_TLS
    directory: str = ""  # host directory of ca.crt, server.crt, server.key
    fingerprint: str | None = None  # SHA-256 of the server certificate; None: not issued yet
    reason: str = ""  # why it is reused or issued (agent/tls.py `renewal`), or whose it is
    ca_pem: str | None = None  # the CA to publish as FL_CA_CERT, once it exists

    @property
    def enabled(self) -> bool:
        return self.source != NO_TLS

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "directory": self.directory,
            "server_cert_sha256": self.fingerprint,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SuperlinkInputs:
    """Facts gathered before planning the SuperLink."""

    image: ImageFacts
    ips: tuple[str, ...]  # the VM's NIC addresses, first NIC first
    hostname: str | None
    tls: TlsMaterial
    state_dir_host: str
    control_dir_host: str
    blocking: tuple[Problem, ...] = ()
    other_role: tuple[str, ...] = ()  # the SuperNode role's containers, left by an FL_ROLE change

    @property
    def host(self) -> str:
        """The address published in FL_ENDPOINT: the first NIC's, loopback without any."""
        return self.ips[0] if self.ips else LOOPBACK


def node_auth(config: Config, tls: TlsMaterial) -> bool:
    """SuperNode authentication: FL_NODE_AUTH=YES and TLS (Flower refuses it without)."""
    return config.node_auth and tls.enabled


def make_superlink_plan(config: Config, inputs: SuperlinkInputs) -> Plan:
    """The SuperLink's spec and the actions that get it serving, in order."""
    record = (Action(ActionKind.RECORD),)
    if inputs.blocking:
        reason = inputs.blocking[0].message
        return Plan(Mode.NONE, reason, False, None, problems=inputs.blocking, actions=record)
    spec = superlink_spec(config, inputs)
    actions = []
    if not inputs.image.present:
        actions.append(Action(ActionKind.PULL_IMAGE, config.supernode_image))
    if inputs.tls.enabled:
        actions.append(Action(ActionKind.ENSURE_TLS, inputs.tls.directory))
    actions.append(Action(ActionKind.PREPARE_STATE_DIR, inputs.state_dir_host))
    actions.append(Action(ActionKind.OPEN_FIREWALL, firewall.DROP_IN))
    actions += [Action(ActionKind.REMOVE_CONTAINER, name) for name in inputs.other_role]
    actions.append(Action(ActionKind.CONVERGE, spec.name))
    endpoint = flower.fleet_endpoint(config.flower_version, LOOPBACK)
    actions.append(Action(ActionKind.WAIT_SERVING, endpoint))
    if node_auth(config, inputs.tls):
        actions.append(Action(ActionKind.REGISTER_NODES, "the service's supernode role"))
    return Plan(Mode.CPU, _reason(config, inputs.tls), False, spec, actions=(*actions, *record))


def _reason(config: Config, tls: TlsMaterial) -> str:
    version = f"SuperLink of Flower {config.flower_version}"
    if not tls.enabled:
        return f"{version}, insecure: FL_TLS_ENABLED=NO (no TLS, no SuperNode authentication)"
    auth = "on" if node_auth(config, tls) else "off (FL_NODE_AUTH=NO)"
    return f"{version}, TLS ({tls.source}: {tls.reason}), SuperNode authentication {auth}"


def superlink_spec(config: Config, inputs: SuperlinkInputs) -> ContainerSpec:
    """The `flower-superlink` container: no GPU, its TLS files read-only, its state read-write."""
    tls = inputs.tls
    binds = [Bind(inputs.state_dir_host, STATE_MOUNT, "rw")]
    paths = None
    if tls.enabled:
        paths = flower.ServerTlsPaths(*(f"{TLS_MOUNT}/{n}" for n in TLS_NAMES))
        binds += [Bind(f"{tls.directory}/{n}", f"{TLS_MOUNT}/{n}", "ro") for n in TLS_NAMES]
    binds.append(Bind(inputs.control_dir_host, CONTROL_MOUNT, "ro"))
    command = flower.superlink_args(
        version=config.flower_version,
        tls=paths,
        state_dir=STATE_MOUNT,
        node_auth=node_auth(config, tls),
    )
    env = {
        "FLWR_LOG_LEVEL": config.log_level,
        "FLWR_TELEMETRY_ENABLED": "0",
        "HOME": FALLBACK_HOME,
    }
    if tls.enabled:
        env[CERT_ENV] = tls.fingerprint or "to be issued"
    return ContainerSpec(
        image=config.supernode_image,
        command=tuple(command),
        environment=tuple(sorted(env.items())),
        mode=Mode.CPU,
        runtime="runc",
        binds=tuple(binds),
        user=CONTAINER_USER,
        tmpfs=((FALLBACK_HOME, "uid=49999,gid=49999,mode=0700"),),
        name=CONTAINER_NAME,
        entrypoint=("flower-superlink",),
    )


def published(config: Config, inputs: SuperlinkInputs) -> dict[str, str]:
    """What the SuperNodes of the service read (agent/discovery.py): FL_ENDPOINT, FL_TLS, the CA
    (base64 of its PEM; empty, hence deleted, without TLS) and FL_VERSION."""
    ca = inputs.tls.ca_pem if inputs.tls.enabled else None
    return {
        "FL_ENDPOINT": flower.fleet_endpoint(config.flower_version, inputs.host),
        "FL_TLS": "YES" if inputs.tls.enabled else "NO",
        "FL_CA_CERT": base64.b64encode(ca.encode()).decode() if ca else "",
        "FL_VERSION": config.flower_version,
    }


def cli_file(config: Config, tls: TlsMaterial) -> tuple[str, str]:
    """The `flwr` CLI's connection to this SuperLink's Control API, as the CLI inside the
    SuperLink container sees it (loopback, over the host network): agent/flower.py
    `cli_connection`'s (file name, text)."""
    address = flower.control_endpoint(config.flower_version, LOOPBACK)
    ca = f"{TLS_MOUNT}/ca.crt" if tls.enabled else None
    return flower.cli_connection(config.flower_version, address, ca)
