"""SuperLink address, TLS trust and partition id, found through OneGate when not configured.

What a OneFlow service offers (docs/onegate.md; OpenNebula/one's onegate-server.rb):
`GET /service` lists roles and their VM ids; `GET /vms/<id>` gives a peer's USER_TEMPLATE
(where a SuperLink appliance publishes FL_ENDPOINT, FL_TLS, FL_CA_CERT, FL_READY) and its NICs.
The SuperLink may still be booting when a SuperNode asks, so every lookup is retried a bounded
number of times; attempts, intervals and the sleep are parameters.

The CA certificate is checked by agent/tls.py. Trust on first use: the SuperLink endpoint and
CA learned through OneGate are pinned at the first successful boot (`pin_update`, written by
`write_pin` when the boot applies its plan); later boots keep the pinned values, whatever a
peer VM writes into the SuperLink's template, and say so with a `superlink_identity_changed`
warning until the operator accepts the change (`fl-agent trust --accept`) or sets
FL_SUPERLINK_ADDRESS / FL_SSL_CA_CERT. A value published both plain and as NAME_BASE64 with
different contents is refused rather than one silently chosen.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import flower, tls
from agent.atomicfile import write_atomic
from agent.config import parse_host_port
from agent.errors import AgentError, Problem
from agent.onegate import BASE64_SUFFIX, OneGateError, decode_attributes
from agent.outcome import problem
from agent.paths import Root

SUPERLINK_ROLE = "superlink"
CA_PATH = "/etc/fl-agent/tls/ca.pem"
PIN_FILE = "superlink-pin.json"
MAX_PIN_BYTES = tls.MAX_PEM_CHARS + 4096
PINNED = "pinned at the first successful boot"


@dataclass(frozen=True)
class Discovery:
    """What the SuperNode needs from its service; `problems` empty when it can start."""

    superlink_address: str | None
    ca_pem: str | None
    node_config: str | None
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()
    """Problems that do not stop the node (a pinned value kept against OneGate's)."""
    learned: Pin | None = None
    """The identity OneGate gave this run, before any pin was applied (what `pin_update` pins)."""
    superlink_version: str | None = None
    """FL_VERSION as the SuperLink VM publishes it, raw and untrusted (agent/pairing.py checks
    it); None when it publishes none or was not read."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "superlink_address": self.superlink_address,
            "ca_pem": f"<PEM, {len(self.ca_pem)} bytes>" if self.ca_pem else None,
            "node_config": self.node_config,
            "sources": dict(self.sources),
            "notes": list(self.notes),
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [p.to_dict() for p in self.warnings],
            "learned": self.learned.to_dict() if self.learned else None,
            "superlink_version": self.superlink_version,
        }


# --------------------------------------------------------------------------- pinned identity


@dataclass(frozen=True)
class Pin:
    """The SuperLink identity learned through OneGate: its endpoint and its CA (clean PEM)."""

    superlink_address: str | None = None
    ca_pem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """For the boot record and `fl-agent trust`: the CA as fingerprints, not as PEM."""
        return {
            "superlink_address": self.superlink_address,
            "ca_sha256": list(tls.fingerprints(self.ca_pem)) if self.ca_pem else [],
        }


def pin_path(root: Root) -> Path:
    return root.state_dir / PIN_FILE


def read_pin(root: Root) -> tuple[Pin | None, Problem | None]:
    """The pinned identity; (None, None) before the first successful boot."""
    path = pin_path(root)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PIN_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, _pin_invalid(path, f"cannot read it: {exc.strerror or exc}")
    try:
        if len(data) > MAX_PIN_BYTES:
            raise ValueError(f"more than {MAX_PIN_BYTES} bytes")
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        pin = Pin(_pinned_text(fields, "superlink_address"), _pinned_text(fields, "ca_pem"))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _pin_invalid(path, str(exc))
    if pin.superlink_address and parse_host_port(pin.superlink_address) is None:
        return None, _pin_invalid(path, "its superlink_address is not host:port")
    return pin, None


def _pinned_text(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value or None


def _pin_invalid(path: Path, why: str) -> Problem:
    return Problem(
        "superlink_pin_invalid",
        str(path),
        f"the pinned SuperLink identity is unusable: {why}",
        "check the file; `fl-agent trust --accept` pins what OneGate publishes now",
    )


def write_pin(root: Root, pin: Pin) -> Problem | None:
    """Write the pin (0600, atomic): an apply-time action, after a successful boot."""
    from agent.state import write_private_json

    record = {"superlink_address": pin.superlink_address, "ca_pem": pin.ca_pem}
    return write_private_json(pin_path(root), record, "the SuperLink pin")


def pin_update(found: Discovery, pinned: Pin | None) -> Pin | None:
    """What to pin after a successful boot that used `found`; None when nothing changes.

    A pinned value is never replaced here (only `fl-agent trust --accept` does that); a value
    learned for the first time (the SuperLink published its CA later) is added.
    """
    if not found.ok or found.learned is None:
        return None
    pinned = pinned or Pin()
    merged = Pin(
        pinned.superlink_address or found.learned.superlink_address,
        pinned.ca_pem or found.learned.ca_pem,
    )
    return None if merged == pinned else merged


def _changed(subject: str, now: str, kept: str) -> Problem:
    return Problem(
        "superlink_identity_changed",
        subject,
        f"{now}; the node keeps the value {PINNED}: {kept}",
        "if the change is yours, run `fl-agent trust --accept` on this VM, or set "
        "FL_SUPERLINK_ADDRESS / FL_SSL_CA_CERT in its context; otherwise a peer VM rewrote the "
        "SuperLink's template: check the service's VMs",
    )


def _conflicts(template: dict[str, Any]) -> set[str]:
    """Names published both plain and as NAME_BASE64 with different values."""
    encoded = {k: v for k, v in template.items() if k.endswith(BASE64_SUFFIX)}
    decoded = decode_attributes(encoded)
    return {
        name
        for name, value in decoded.items()
        if isinstance(template.get(name), str) and template[name].strip() != value.strip()
    }


def write_ca(pem: str, root: Root) -> Path:
    """Write the CA where the SuperNode container mounts it read-only; world-readable (0644),
    because the container runs as an unprivileged user (uid 49999 in flwr images)."""
    path = root.path(CA_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    write_atomic(path, pem, mode=0o644)
    return path


# --------------------------------------------------------------------------- discovery


class _Pending(Exception):
    """Not there yet: worth asking again after the interval."""


class _Stop(Exception):
    """Will not come, however long we wait."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class _Service:
    """The parts of GET /service discovery reads: role -> (VM ids, cardinality)."""

    name: str
    roles: dict[str, tuple[list[int], int]]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> _Service:
        service = data.get("SERVICE") or {}
        roles: dict[str, tuple[list[int], int]] = {}
        for role in service.get("roles") or []:
            ids = [_node_id(node) for node in role.get("nodes") or []]
            roles[str(role.get("name"))] = (
                [i for i in ids if i is not None],
                int(role.get("cardinality") or 0),
            )
        return cls(str(service.get("name", "")), roles)


def _node_id(node: dict[str, Any]) -> int | None:
    vm_id = ((node.get("vm_info") or {}).get("VM") or {}).get("ID", node.get("deploy_id"))
    return int(vm_id) if str(vm_id).isdigit() else None


class _Run:
    """One discovery: what is still missing, what was found, and what went wrong."""

    def __init__(self, config, reporter, sleep: Callable[[float], None], pinned: Pin) -> None:
        self.config = config
        self.reporter = reporter
        self.sleep = sleep
        self.pinned = pinned
        self.address: str | None = config.superlink_address or pinned.superlink_address
        self.node_config: str | None = config.node_config
        self.ca_pem: str | None = None
        self.superlink_vm: str | None = None
        self.superlink: dict[str, str] = {}  # its decoded USER_TEMPLATE
        self.superlink_ip: str | None = None
        self.conflicts: set[str] = set()
        self.learned_address: str | None = None
        self.learned_ca: str | None = None
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        if config.superlink_address:
            self.sources["superlink_address"] = "FL_SUPERLINK_ADDRESS"
        elif pinned.superlink_address:
            self.sources["superlink_address"] = PINNED
        if config.node_config:
            self.sources["node_config"] = "FL_NODE_CONFIG"

    def result(self) -> Discovery:
        return Discovery(
            self.address,
            self.ca_pem,
            self.node_config,
            self.sources,
            tuple(self.notes),
            tuple(self.problems),
            tuple(self.warnings),
            Pin(self.learned_address, self.learned_ca)
            if self.learned_address or self.learned_ca
            else None,
            self.superlink.get("FL_VERSION", "").strip()[:64] or None,
        )

    @property
    def address_pinned(self) -> bool:
        return self.sources.get("superlink_address") == PINNED

    @property
    def wants_ca(self) -> bool:
        return self.config.tls_enabled and self.config.ssl_ca_cert is None

    # -- the service lookup (address and partition)

    def lookup(self, attempts: int, interval_s: float) -> None:
        waiting, onegate_down = "nothing asked yet", False
        for attempt in range(1, attempts + 1):
            try:
                service = _Service.parse(self.reporter.get_service())
                self._step(service)
                return
            except _Pending as exc:
                waiting, onegate_down = str(exc), False
            except _Stop as exc:
                self.problems.append(exc.problem)
                return
            except OneGateError as exc:
                if not _transient_read(exc):
                    self._onegate_failed(exc)
                    return
                waiting, onegate_down = str(exc.first), not _not_yet_listed(exc)
            if attempt < attempts:
                self.sleep(interval_s)
        self._give_up(attempts, waiting, onegate_down)

    def _step(self, service: _Service) -> None:
        pending = []
        if SUPERLINK_ROLE in service.roles and (
            self.address is None or self.wants_ca or self.address_pinned
        ):
            self._read_superlink(service)
        elif SUPERLINK_ROLE in service.roles and self.superlink_vm is None:
            self._read_superlink_version(service)
        if self.address is None:
            try:
                self._superlink_address(service)
            except _Pending as exc:
                pending.append(str(exc))
        elif self.address_pinned:
            self._check_pinned_address()
        if self.node_config is None:
            try:
                self._partition(service)
            except _Pending as exc:
                pending.append(str(exc))
        if pending:
            raise _Pending("; ".join(pending))

    def _read_superlink(self, service: _Service) -> None:
        ids = service.roles[SUPERLINK_ROLE][0]
        if not ids:
            return
        vm = self.reporter.get_vm_by_id(ids[0]).get("VM") or {}
        template = vm.get("USER_TEMPLATE") or {}
        self.superlink_vm = str(ids[0])
        self._take_template(template)
        self.superlink_ip = _first_ip((vm.get("TEMPLATE") or {}).get("NIC"))

    def _read_superlink_version(self, service: _Service) -> None:
        """Only its FL_VERSION is wanted (version pairing): one try, never waited for."""
        try:
            self._read_superlink(service)
        except AgentError as exc:
            self.notes.append(f"the SuperLink VM's FL_VERSION was not read: {exc.first.message}")

    def _superlink_address(self, service: _Service) -> None:
        if SUPERLINK_ROLE not in service.roles:
            roles = ", ".join(sorted(service.roles)) or "none"
            raise _Stop(
                _not_found(f"service {service.name!r} has no {SUPERLINK_ROLE!r} role ({roles})")
            )
        if self.superlink_vm is None:
            raise _Pending(f"the {SUPERLINK_ROLE} role has no VM yet")
        if "FL_ENDPOINT" in self.conflicts:
            raise _Stop(self._conflict("FL_ENDPOINT"))
        endpoint = self.superlink.get("FL_ENDPOINT", "").strip()
        source = f"FL_ENDPOINT of SuperLink VM {self.superlink_vm}"
        if endpoint:
            if parse_host_port(endpoint) is None:
                raise _Stop(_not_found(f"{source} is {endpoint!r}, not host:port"))
            self._found_address(endpoint, source)
        elif _says_yes(self.superlink, "FL_READY", "READY") and self.superlink_ip:
            self._nic_address(f"SuperLink VM {self.superlink_vm} is ready without FL_ENDPOINT")
        else:
            raise _Pending(f"SuperLink VM {self.superlink_vm} has not published FL_ENDPOINT")

    def _nic_address(self, why: str) -> None:
        version = self.config.flower_version
        published = self.superlink.get("FL_VERSION", "").strip()
        if not self.config.flower_version_set and flower.release_for(published) is not None:
            version = published  # the version this node pairs with (agent/pairing.py)
        address = flower.fleet_endpoint(version, self.superlink_ip or "")
        self.notes.append(f"{why}: using its first NIC IP with Flower {version}'s fleet port")
        self._found_address(address, f"NIC of SuperLink VM {self.superlink_vm}")

    def _found_address(self, address: str, source: str) -> None:
        if parse_host_port(address) is None:
            raise _Stop(_not_found(f"{source} gives {address!r}, not host:port"))
        self.address = address
        self.learned_address = address
        self.sources["superlink_address"] = source

    def _partition(self, service: _Service) -> None:
        """This VM's index among its role's VM ids in order: new VMs get higher ids, so a
        node keeps its partition when the role scales up."""
        me = int(self.reporter.vmid)
        role = next((r for r, (ids, _) in service.roles.items() if me in ids), None)
        if role is None:
            raise _Pending(f"VM {me} is not yet listed in a role of service {service.name!r}")
        ids, cardinality = service.roles[role]
        ordered = sorted(ids)
        size = max(len(ordered), cardinality)
        self.node_config = f"partition-id={ordered.index(me)} num-partitions={size}"
        self.sources["node_config"] = f"position of VM {me} in role {role!r}"

    def _give_up(self, attempts: int, waiting: str, onegate_down: bool) -> None:
        if self.address is None and self.superlink_ip:
            self._nic_address(
                f"SuperLink VM {self.superlink_vm} published no FL_ENDPOINT in {attempts} tries"
            )
        elif self.address is None:
            self.problems.append(
                Problem(
                    "superlink_unreachable" if onegate_down else "superlink_not_found",
                    "FL_SUPERLINK_ADDRESS",
                    f"no SuperLink address after {attempts} tries: {waiting}",
                    "check that the service's superlink VM runs and publishes FL_ENDPOINT, "
                    "or set FL_SUPERLINK_ADDRESS",
                )
            )
        if self.node_config is None:
            self.notes.append(f"no partition-id: {waiting}")

    def _onegate_failed(self, exc: OneGateError) -> None:
        """A refusal (401, 403, 400 not in a service) from OneGate during the lookup."""
        if exc.status == 400:
            message = f"OneGate cannot list this VM's OneFlow service: {exc.body}"
            if self.address is None:
                self.problems.append(_not_found(message))
            if self.node_config is None:
                self.notes.append(f"no partition-id: {message}")
            return
        self.problems.append(exc.first)

    # -- TLS trust

    def trust(self, attempts: int, interval_s: float) -> None:
        if not self.config.tls_enabled:
            return
        if self.config.ssl_ca_cert is not None:  # the owner's CA: OneGate never overrides it
            self._take_ca(self.config.ssl_ca_cert, "FL_SSL_CA_CERT", "FL_SSL_CA_CERT")
            return
        if self.pinned.ca_pem:
            self._check_pinned_ca()
            self._take_ca(self.pinned.ca_pem, f"the CA {PINNED}", "FL_CA_CERT")
            return
        if self.superlink_vm is None:
            self.notes.append("no CA certificate: the SuperNode trusts the system's CAs")
            return
        if self.superlink.get("FL_TLS", "").upper() == "NO":
            self.problems.append(
                Problem(
                    "tls_error",
                    "FL_TLS_ENABLED",
                    f"SuperLink VM {self.superlink_vm} runs without TLS (FL_TLS=NO)",
                    "set FL_TLS_ENABLED=NO here, or enable TLS on the SuperLink",
                )
            )
            return
        for attempt in range(1, attempts + 1):
            if "FL_CA_CERT" in self.conflicts:
                self.problems.append(self._conflict("FL_CA_CERT"))
                return
            published = self.superlink.get("FL_CA_CERT", "").strip()
            if published:
                source = f"FL_CA_CERT of SuperLink VM {self.superlink_vm}"
                self.learned_ca = self._take_ca(_pem_text(published), source, "FL_CA_CERT")
                return
            if not self._ca_may_come() or attempt == attempts:
                break
            self.sleep(interval_s)
            self._refresh_superlink()
        self._no_ca()

    def _ca_may_come(self) -> bool:
        """A SuperLink that said it uses TLS, or is not ready yet, may still publish its CA."""
        return self.superlink.get("FL_TLS", "").upper() == "YES" or not _says_yes(
            self.superlink, "FL_READY", "READY"
        )

    def _refresh_superlink(self) -> None:
        try:
            vm = self.reporter.get_vm_by_id(self.superlink_vm).get("VM") or {}
        except AgentError:
            return  # the next try, or the verdict, reads what is known
        self._take_template(vm.get("USER_TEMPLATE") or {})

    def _take_template(self, template: Any) -> None:
        template = template if isinstance(template, dict) else {}
        self.superlink = decode_attributes(template)
        self.conflicts = _conflicts(template)

    def _conflict(self, name: str) -> Problem:
        return Problem(
            "conflicting_values",
            name,
            f"SuperLink VM {self.superlink_vm} publishes {name} and {name}{BASE64_SUFFIX} with "
            "different values; neither is used",
            "publish one of them (the SuperLink's own agent never writes both)",
        )

    def _check_pinned_address(self) -> None:
        """The address is pinned: say so when the SuperLink's template now names another."""
        endpoint = self.superlink.get("FL_ENDPOINT", "").strip()
        if "FL_ENDPOINT" in self.conflicts or (endpoint and endpoint != self.address):
            shown = "conflicting values" if "FL_ENDPOINT" in self.conflicts else repr(endpoint)
            self.warnings.append(
                _changed(
                    "FL_SUPERLINK_ADDRESS",
                    f"FL_ENDPOINT of SuperLink VM {self.superlink_vm} is now {shown}",
                    repr(self.address),
                )
            )

    def _no_ca(self) -> None:
        if self.superlink.get("FL_TLS", "").upper() == "YES":
            self.problems.append(
                Problem(
                    "tls_error",
                    "FL_CA_CERT",
                    f"SuperLink VM {self.superlink_vm} uses TLS but publishes no FL_CA_CERT",
                    "publish FL_CA_CERT (base64 PEM) from the SuperLink, or set FL_SSL_CA_CERT",
                )
            )
        else:
            self.notes.append(
                f"SuperLink VM {self.superlink_vm} publishes no CA: "
                "the SuperNode trusts the system's CAs"
            )

    def _check_pinned_ca(self) -> None:
        """The CA is pinned: say so when the SuperLink now publishes another one."""
        if self.superlink_vm is None:
            return
        published = self.superlink.get("FL_CA_CERT", "").strip()
        if "FL_CA_CERT" in self.conflicts:
            now = "conflicting values"
        elif published:
            pem = _pem_text(published)
            clean = tls.check_ca(pem)[0] if pem else None
            if clean == self.pinned.ca_pem:
                return
            now = f"sha256 {_fingerprint(clean)}" if clean else "an unusable certificate"
        else:
            return
        self.warnings.append(
            _changed(
                "FL_CA_CERT",
                f"SuperLink VM {self.superlink_vm} now publishes another CA ({now})",
                f"sha256 {_fingerprint(self.pinned.ca_pem)}",
            )
        )

    def _take_ca(self, pem: str | None, source: str, subject: str) -> str | None:
        """Check and use a CA; the clean PEM, or None (and a tls_error) when unusable."""
        clean, why = tls.check_ca(pem) if pem else (None, "not base64 of a PEM certificate")
        if clean is None:
            self.problems.append(
                Problem(
                    "tls_error",
                    subject,
                    f"the CA certificate from {source} is unusable: {why}",
                    "publish a valid PEM CA certificate (base64), or set FL_SSL_CA_CERT",
                )
            )
            return None
        self.ca_pem = clean
        self.sources["ca_pem"] = source
        return clean


def _transient_read(exc: OneGateError) -> bool:
    """Reads worth retrying: no answer, a 5xx, 404 (OneFlow down: `Service N not found`), or
    this VM not listed in its service yet."""
    return exc.status is None or exc.status >= 500 or exc.status == 404 or _not_yet_listed(exc)


def _not_yet_listed(exc: OneGateError) -> bool:
    """onegate-server.rb (6.10 to 7.x) answers GET /service with 400 `Service N does not
    contain VM M.` until OneFlow lists the asking VM among the service's nodes."""
    return exc.status == 400 and "does not contain VM" in exc.body


def _not_found(message: str) -> Problem:
    return problem("superlink_not_found", "FL_SUPERLINK_ADDRESS", message)


def _says_yes(template: dict[str, str], *names: str) -> bool:
    return any(template.get(n, "").strip().upper() == "YES" for n in names)


def _first_ip(nics: Any) -> str | None:
    """The first NIC's IP (IPv4, else global IPv6); NIC is a list, or a dict when extended."""
    for nic in [nics] if isinstance(nics, dict) else nics or []:
        for key in ("IP", "IP6_GLOBAL"):
            if isinstance(nic.get(key), str) and nic[key]:
                return nic[key]
    return None


def _fingerprint(pem: str | None) -> str:
    found = tls.fingerprints(pem) if pem else ()
    return found[0][:16] + "..." if found else "unknown"


def _pem_text(published: str) -> str | None:
    """FL_CA_CERT is base64 of the PEM (the community appliance); a PEM is taken as is."""
    if len(published) > 2 * tls.MAX_PEM_CHARS:
        return None
    if "-----BEGIN" in published:
        return published
    try:
        return base64.b64decode("".join(published.split()), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None


def discover(
    config,
    reporter,
    *,
    attempts: int = 30,
    interval_s: float = 10.0,
    ca_attempts: int = 12,
    ca_interval_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    pinned: Pin | None = None,
) -> Discovery:
    """The SuperLink address, the CA and the node config, from the Config or through OneGate.

    Defaults wait like the community appliance (30 x 10 s for the address, 12 x 5 s for the
    CA); each lookup stops early once it has its answer or knows it will not get one.
    `pinned` (from `read_pin`) holds the values kept from the first successful boot.
    """
    run = _Run(config, reporter, sleep, pinned or Pin())
    needs_service = (
        run.address is None or run.node_config is None or run.wants_ca or run.address_pinned
    )
    if needs_service and reporter.enabled:
        # Only the CA missing: one look, a configured node does not wait on OneGate for it.
        only_ca = run.address is not None and run.node_config is not None
        run.lookup(1 if only_ca else attempts, interval_s)
    elif needs_service:
        if run.address is None:
            run.problems.append(_not_found("no FL_SUPERLINK_ADDRESS, and OneGate is off"))
        if run.node_config is None:
            run.notes.append("no partition-id: no FL_NODE_CONFIG, and OneGate is off")
    if not run.problems:
        run.trust(ca_attempts, ca_interval_s)
    return run.result()
