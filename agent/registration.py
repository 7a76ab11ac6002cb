"""SuperNode registration on the superlink role: the keys of its own service's SuperNodes.

Each pass (`sync`: at the end of a superlink boot and at every tick of `fl-agent watch`):
1. reads GET /service?extended through the agent's OneGate client and keeps only the
   FL_NODE_PUBLIC_KEY of the VMs of the service's "supernode" role (agent/nodeauth.py
   `service_node_keys`: a neighbour's document is untrusted, any shape yields a result, a key
   that is not a NIST EC key is refused); a service that cannot be read changes nothing (never
   read as "every node left");
2. compares them with the registry (REGISTRY_FILE: {public key: node id} of what this agent
   registered, 0600, atomic) through `registration_diff`;
3. runs `flwr supernode register <key file>` / `flwr supernode unregister <node id>` inside the
   flower-superlink container (its `flwr` reaches the Control API on loopback over TLS with the
   CA mounted there), the public key handed over as a file in the read-only control directory.
   The exit status is 0 even on failure: the JSON printed decides (agent/flower.py
   `registered_node_id`; `"success": true` of unregister). The registry is written after each
   change, so a pass cut short loses nothing. The OneGate token never goes near the container.

Every supported release (1.25 to 1.42) has `flwr supernode register` (agent/flower.py
FlowerRelease.node_auth).

Known limit: Flower cannot list the keys it holds (`flwr supernode ls` shows no keys), so a key
registered by someone else, or with a lost registry file, fails to register again
(`node_registration_failed`, retried each pass) until it is unregistered by hand.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import flower, log, nodeauth
from agent.atomicfile import write_atomic
from agent.errors import AgentError, Problem
from agent.outcome import problem
from agent.paths import Root
from agent.superlink import CLI_DIR, CONTAINER_NAME, CONTROL_DIR, CONTROL_MOUNT, KEYS_DIR

REGISTRY_FILE = "superlink-nodes.json"
MAX_NODES = 1000
PASS_BUDGET_S = 300.0
"""A pass stops starting new flwr calls after this long (each call has its own engine timeout);
what is left waits for the next pass."""
"""At most this many keys are registered: a service document listing more is cut here."""
MAX_REGISTRY_BYTES = 1024 * 1024
EXEC_TIMEOUT_S = 60.0
CLI_HOME = "/tmp/fl-agent-cli"
"""A writable copy of the read-only connection directory, inside the container (the CLI writes
into its FLWR_HOME, and 1.25 into its app directory)."""

FlwrRunner = Callable[[list[str]], str]
"""Runs `flwr <argv>` where the SuperLink's CLI works; returns what it printed."""


@dataclass(frozen=True)
class Registration:
    """One pass: the registry after it, what changed and what went wrong."""

    registered: dict[str, int] = field(default_factory=dict)  # public key -> node id
    added: tuple[int, ...] = ()  # node ids registered in this pass
    removed: tuple[int, ...] = ()  # node ids unregistered in this pass
    refused_vms: tuple[str, ...] = ()  # VMs of the role whose published key was refused
    problems: tuple[Problem, ...] = ()

    @property
    def count(self) -> int:
        return len(self.registered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "registered": self.count,
            "node_ids": sorted(self.registered.values()),
            "added": list(self.added),
            "removed": list(self.removed),
            "refused_vms": list(self.refused_vms),
            "problems": [p.to_dict() for p in self.problems],
        }


# --------------------------------------------------------------------------- the registry


def registry_path(root: Root) -> Path:
    return root.state_dir / REGISTRY_FILE


def read_registry(root: Root) -> dict[str, int]:
    """{public key: node id} as this agent left it; {} when absent or not one (then every key
    of the service is registered again)."""
    try:
        with registry_path(root).open("rb") as handle:
            data = json.loads(handle.read(MAX_REGISTRY_BYTES + 1)[:MAX_REGISTRY_BYTES])
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        key: node_id
        for key, node_id in data.items()
        if nodeauth.normalised_public_key(key) == key
        and isinstance(node_id, int)
        and not isinstance(node_id, bool)
    }


def write_registry(root: Root, registered: dict[str, int]) -> Problem | None:
    from agent.state import write_private_json

    return write_private_json(registry_path(root), registered, "the node registry")


# --------------------------------------------------------------------------- one pass


def sync(
    root: Root,
    engine: Any,
    reporter: Any,
    version: str,
    *,
    container: str = CONTAINER_NAME,
    timeout_s: float = EXEC_TIMEOUT_S,
) -> Registration:
    """Register the keys of the service's SuperNode role, unregister those of VMs that left.

    `engine`: agent/engine.py's Engine; `reporter`: agent/onegate's Reporter of this VM;
    `version`: the SuperLink's Flower version (X.Y.Z). Never raises for what OneGate, the
    engine or Flower answer: each failure is a problem in the result.
    """
    registered = read_registry(root)
    try:
        wanted = nodeauth.service_node_keys(reporter.get_service(extended=True))
    except AgentError as exc:  # OneGateError included: nothing known, nothing changed
        return Registration(registered, problems=(exc.first,))
    runner = flwr_in_container(engine, container, timeout_s)
    return apply_registration(root, runner, version, wanted, registered)


def apply_registration(
    root: Root,
    flwr: FlwrRunner,
    version: str,
    wanted: nodeauth.ServiceKeys,
    registered: dict[str, int],
) -> Registration:
    """Bring the registry to `wanted` through `flwr`; the registry is saved after each change."""
    keys, problems = wanted.keys, []
    if len(keys) > MAX_NODES:
        keys = frozenset(sorted(keys)[:MAX_NODES])
        problems.append(_failed("the service", f"{len(wanted.keys)} keys, registering {MAX_NODES}"))
    problems += [
        problem("node_key_refused", f"VM {vm}", "its FL_NODE_PUBLIC_KEY is not an EC key")
        for vm in wanted.refused_vms
    ]
    diff = nodeauth.registration_diff(keys, registered)
    current, added, removed = dict(registered), [], []
    deadline = time.monotonic() + PASS_BUDGET_S
    for key in diff.register:
        if _cut_short(deadline, problems):
            break
        node_id = _register(root, flwr, version, key)
        if node_id is None:
            problems.append(_failed(_short_key(key), "flwr supernode register did not succeed"))
            continue
        current[key] = node_id
        added.append(node_id)
        problems += _saved(root, current)
    for node_id in diff.unregister:
        if _cut_short(deadline, problems):
            break
        argv = flower.unregister_node_args(version, node_id, CLI_HOME)
        if not _succeeded(flwr(argv)):
            problems.append(_failed(f"node {node_id}", "flwr supernode unregister did not succeed"))
            continue
        current = {k: v for k, v in current.items() if v != node_id}
        removed.append(node_id)
        problems += _saved(root, current)
    if added or removed:
        log.get("registration").info("nodes", registered=len(current), added=added, removed=removed)
    return Registration(current, tuple(added), tuple(removed), wanted.refused_vms, tuple(problems))


def _register(root: Root, flwr: FlwrRunner, version: str, key: str) -> int | None:
    """Hand the key over as a file in the control directory, register it, remove the file."""
    name = hashlib.sha256(key.encode()).hexdigest()[:16] + ".pub"
    path = root.path(CONTROL_DIR) / KEYS_DIR / name
    try:
        write_atomic(path, key + "\n", mode=0o644)
    except OSError:
        return None  # a full or read-only disk: this key waits for the next pass
    try:
        argv = flower.register_node_args(version, f"{CONTROL_MOUNT}/{KEYS_DIR}/{name}", CLI_HOME)
        return flower.node_id_of(_answer(flwr(argv)))
    finally:
        path.unlink(missing_ok=True)


def _cut_short(deadline: float, problems: list[Problem]) -> bool:
    if time.monotonic() <= deadline:
        return False
    problems.append(_failed("the service", f"pass cut short after {PASS_BUDGET_S:.0f} s"))
    return True


def _saved(root: Root, registered: dict[str, int]) -> list[Problem]:
    failed = write_registry(root, registered)
    return [failed] if failed else []


def _succeeded(output: str) -> bool:
    return _answer(output).get("success") is True


MAX_OUTPUT_CHARS = 65536
MAX_JSON_STARTS = 256


def _answer(output: str) -> dict:
    """The last JSON object flwr printed that says whether it succeeded (stdout and stderr come
    together from an exec, so a warning with braces may come first); {} when there is none."""
    text = output[-MAX_OUTPUT_CHARS:]
    decoder = json.JSONDecoder()
    starts = [i for i, char in enumerate(text) if char == "{"][-MAX_JSON_STARTS:]
    for start in reversed(starts):
        try:
            found, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(found, dict) and "success" in found:
            return found
    return {}


def _short_key(key: str) -> str:
    return f"key sha256:{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _failed(subject: str, detail: str) -> Problem:
    return problem("node_registration_failed", subject, detail)


# --------------------------------------------------------------------------- the CLI


def flwr_in_container(engine: Any, container: str, timeout_s: float) -> FlwrRunner:
    """`flwr` inside the SuperLink container, with a writable copy of the connection directory
    the agent mounted read-only (`CONTROL_MOUNT`/cli) as its FLWR_HOME and working directory.
    What it prints comes back; an engine failure is an empty answer (no JSON: not a success)."""
    from agent.engine import EngineError

    script = (
        f"rm -rf {CLI_HOME} && cp -r {CONTROL_MOUNT}/{CLI_DIR} {CLI_HOME} && cd {CLI_HOME}"
        f" && export FLWR_HOME={CLI_HOME} FLWR_TELEMETRY_ENABLED=0"
        ' && exec flwr "$@"'
    )

    def run(argv: list[str]) -> str:
        try:
            argv = ["sh", "-c", script, "flwr", *argv]
            _, output = engine.exec(container, argv, timeout_s=timeout_s)
        except (EngineError, OSError) as exc:
            log.get("registration").error("flwr exec failed", error=str(exc)[:200])
            return ""
        return output

    return run
