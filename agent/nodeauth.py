"""SuperNode authentication: each SuperNode's key pair, and which keys a SuperLink registers.

Flower's contract (flwr 1.25.0 and 1.42.0 source, docs/flower-versions.md "Node
authentication"): `flower-supernode --auth-supernode-private-key PATH` reads an EC private key
in OpenSSH format; `flwr supernode register PATH` reads the matching OpenSSH public key and
accepts any NIST curve (its help names P-384, used here). The SuperLink, started with
`--enable-supernode-auth`, then refuses every SuperNode whose key was not registered.

A SuperNode publishes its public key to OneGate as FL_NODE_PUBLIC_KEY. The SuperLink registers
the keys of its own service's SuperNode role only: a key published by a VM of another role, of
another service, or one that does not parse as a NIST EC key, is never registered.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.atomicfile import write_atomic

if TYPE_CHECKING:
    from agent.paths import Root

NODE_KEY_DIR = "/var/lib/fl-agent/node-key"
PUBLIC_KEY_ATTRIBUTE = "FL_NODE_PUBLIC_KEY"
SUPERNODE_ROLE = "supernode"
_MAX_KEY_TEXT = 1024
"""An OpenSSH P-521 public key line is under 300 characters; anything longer is not a key."""


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's key files and its public key as published and registered."""

    private_key: Path
    public_key: Path
    public_openssh: str


def node_key_dir(root: Root) -> Path:
    return root.path(NODE_KEY_DIR)


def ensure_node_key(directory: Path, owner: tuple[int, int] | None = None) -> NodeKey:
    """The node's key pair, created at first use and kept (private key 0600) afterwards.

    `owner` (uid, gid) owns the private key: the SuperNode container's user, which reads it; a
    kept key is given to a new owner (the image's user changed). A private key that no longer
    parses is replaced: the node's registration is lost either way, and a new public key gets
    published and registered again.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_path, public_path = directory / "node.key", directory / "node.pub"
    key = _load_private(private_path)
    if key is None:
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_atomic(private_path, pem, mode=0o600, owner=owner)
    elif owner is not None:
        found = private_path.stat()
        if (found.st_uid, found.st_gid) != owner:
            os.chown(private_path, *owner)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if not public_path.exists() or public_path.read_bytes() != public + b"\n":
        write_atomic(public_path, public + b"\n", mode=0o644)
    return NodeKey(private_path, public_path, public.decode())


def _load_private(path: Path):
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not path.exists():
        return None
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def normalised_public_key(text: str) -> str | None:
    """The OpenSSH line `ecdsa-sha2-nistpNNN <base64>` of a NIST EC key, comment dropped, or
    None for anything else (other key types, garbage, oversized input)."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(text, str) or len(text) > _MAX_KEY_TEXT:
        return None
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return None  # OpenSSH's ecdsa key types are the NIST curves P-256, P-384, P-521
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


@dataclass(frozen=True)
class ServiceKeys:
    """The keys the SuperNode role of one service publishes, and the VMs whose key was refused."""

    keys: frozenset[str]
    refused_vms: tuple[str, ...]


def service_node_keys(service: Any, role: str = SUPERNODE_ROLE) -> ServiceKeys:
    """Keys to register, from the OneGate service document (GET /service?extended=true):
    SERVICE -> roles[name == role] -> nodes -> vm_info -> VM -> USER_TEMPLATE[FL_NODE_PUBLIC_KEY].

    Neighbours may be compromised: any shape the document takes yields a result, never an
    exception, and a VM's key counts only when it sits under the named role.
    """
    keys: set[str] = set()
    refused: list[str] = []
    for node in _role_nodes(service, role):
        vm = _get(_get(node, "vm_info"), "VM")
        published = _get(_get(vm, "USER_TEMPLATE"), PUBLIC_KEY_ATTRIBUTE)
        if published is None:
            continue  # not booted far enough to publish: registered on a later pass
        key = normalised_public_key(published)
        if key is None:
            refused.append(str(_get(vm, "ID") or "?")[:20])
        else:
            keys.add(key)
    return ServiceKeys(frozenset(keys), tuple(refused))


def _role_nodes(service: Any, role: str) -> list[Any]:
    roles = _get(_get(service, "SERVICE"), "roles")
    if not isinstance(roles, list):
        return []
    matching = [_get(r, "nodes") for r in roles if _get(r, "name") == role]
    return [
        n for nodes in matching if isinstance(nodes, list) for n in nodes if isinstance(n, dict)
    ]


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


@dataclass(frozen=True)
class RegistrationDiff:
    """What the SuperLink must change: keys to register, node ids to unregister."""

    register: tuple[str, ...]
    unregister: tuple[int, ...]


def registration_diff(wanted: frozenset[str], registered: Mapping[str, int]) -> RegistrationDiff:
    """`registered` maps each key the agent registered to the node id Flower gave it
    (`flwr supernode unregister` takes the node id; `flwr supernode ls` does not show keys)."""
    return RegistrationDiff(
        register=tuple(sorted(wanted - registered.keys())),
        unregister=tuple(sorted(registered[k] for k in registered.keys() - wanted)),
    )
