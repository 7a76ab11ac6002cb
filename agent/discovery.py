"""SuperLink address, TLS trust and partition id, found through OneGate when not configured.

What a OneFlow service offers (../shared/reference/opennebula.md 3.5, peer-appliance.md rows
4 to 6 and 15): `GET /service` lists roles and their VM ids; `GET /vms/<id>` gives a peer's
USER_TEMPLATE (where a SuperLink appliance publishes FL_ENDPOINT, FL_TLS, FL_CA_CERT, FL_READY)
and its NICs. The SuperLink may still be booting when a SuperNode asks, so every lookup is
retried a bounded number of times; attempts, intervals and the sleep are parameters.

The CA certificate is checked here, without a crypto library (`cryptography` is not installed
and not a dependency of pyone; `openssl` may be missing from minimal images): the PEM armour,
the base64, the DER structure of an X.509 Certificate (SEQUENCE of tbsCertificate, algorithm,
signature) and the validity dates against the clock. gRPC inside the container does the
cryptography; this check turns a corrupt, truncated or expired CA into a clear `tls_error` at
boot instead of a handshake failure later.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import flower
from agent.atomicfile import write_atomic
from agent.config import parse_host_port
from agent.errors import AgentError, Problem
from agent.onegate import OneGateError, decode_attributes
from agent.outcome import problem
from agent.paths import Root

SUPERLINK_ROLE = "superlink"
CA_PATH = "/etc/fl-agent/tls/ca.pem"
_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----"
)


@dataclass(frozen=True)
class Discovery:
    """What the SuperNode needs from its service; `problems` empty when it can start."""

    superlink_address: str | None
    ca_pem: str | None
    node_config: str | None
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()

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
        }


# --------------------------------------------------------------------------- CA certificates


def check_ca_pem(pem: str, *, now: datetime | None = None) -> tuple[str | None, str]:
    """(the certificates as clean PEM, "") when usable; (None, why) when not."""
    blocks = _PEM_BLOCK.findall(pem)
    if not blocks:
        return None, "no -----BEGIN CERTIFICATE----- block"
    now = now or datetime.now(UTC)
    for number, block in enumerate(blocks, 1):
        try:
            der = base64.b64decode("".join(block.split()), validate=True)
            not_before, not_after = _validity(der)
        except (binascii.Error, ValueError, IndexError) as exc:
            return None, f"certificate {number} is not an X.509 certificate ({exc})"
        if now < not_before:
            return None, f"certificate {number} is valid only from {not_before:%Y-%m-%d %H:%M} UTC"
        if now > not_after:
            return None, f"certificate {number} expired on {not_after:%Y-%m-%d %H:%M} UTC"
    armoured = (
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(textwrap.wrap("".join(b.split()), 64))
        + "\n-----END CERTIFICATE-----\n"
        for b in blocks
    )
    return "".join(armoured), ""


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `pos`."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _children(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _tlv(der, start)
        out.append(element)
        start = element[2]
    if start != end:
        raise ValueError("DER elements overrun their SEQUENCE")
    return out


def _validity(der: bytes) -> tuple[datetime, datetime]:
    """notBefore, notAfter of a DER Certificate, checking its outline on the way."""
    tag, start, end = _tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not one DER SEQUENCE")
    outline = _children(der, start, end)
    if [t for t, _, _ in outline] != [0x30, 0x30, 0x03]:
        raise ValueError("not tbsCertificate, signatureAlgorithm, signature")
    tbs = _children(der, outline[0][1], outline[0][2])
    if tbs and tbs[0][0] == 0xA0:  # [0] version
        tbs = tbs[1:]
    if len(tbs) < 6 or [t for t, _, _ in tbs[:6]] != [0x02, 0x30, 0x30, 0x30, 0x30, 0x30]:
        raise ValueError("tbsCertificate has not the X.509 fields")
    times = _children(der, tbs[3][1], tbs[3][2])
    if len(times) != 2:
        raise ValueError("validity is not two times")
    not_before, not_after = (_time(t, der[s:e].decode("ascii")) for t, s, e in times)
    return not_before, not_after


def _time(tag: int, text: str) -> datetime:
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; years 50-99 are 19xx
        parsed = datetime.strptime(text, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError("validity time is neither UTCTime nor GeneralizedTime")
    return parsed.replace(tzinfo=UTC)


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

    def __init__(self, config, reporter, sleep: Callable[[float], None]) -> None:
        self.config = config
        self.reporter = reporter
        self.sleep = sleep
        self.address: str | None = config.superlink_address
        self.node_config: str | None = config.node_config
        self.ca_pem: str | None = None
        self.superlink_vm: str | None = None
        self.superlink: dict[str, str] = {}  # its decoded USER_TEMPLATE
        self.superlink_ip: str | None = None
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []
        self.problems: list[Problem] = []
        if config.superlink_address:
            self.sources["superlink_address"] = "FL_SUPERLINK_ADDRESS"
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
        )

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
                waiting, onegate_down = str(exc.first), True
            if attempt < attempts:
                self.sleep(interval_s)
        self._give_up(attempts, waiting, onegate_down)

    def _step(self, service: _Service) -> None:
        pending = []
        if SUPERLINK_ROLE in service.roles and (self.address is None or self.wants_ca):
            self._read_superlink(service)
        if self.address is None:
            try:
                self._superlink_address(service)
            except _Pending as exc:
                pending.append(str(exc))
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
        self.superlink = decode_attributes(template if isinstance(template, dict) else {})
        self.superlink_ip = _first_ip((vm.get("TEMPLATE") or {}).get("NIC"))

    def _superlink_address(self, service: _Service) -> None:
        if SUPERLINK_ROLE not in service.roles:
            roles = ", ".join(sorted(service.roles)) or "none"
            raise _Stop(
                _not_found(f"service {service.name!r} has no {SUPERLINK_ROLE!r} role ({roles})")
            )
        if self.superlink_vm is None:
            raise _Pending(f"the {SUPERLINK_ROLE} role has no VM yet")
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
        release = flower.release_for(self.config.flower_version)
        port = release.fleet_port if release else flower.RELEASES[-1].fleet_port
        host = f"[{self.superlink_ip}]" if ":" in (self.superlink_ip or "") else self.superlink_ip
        self.notes.append(
            f"{why}: using its first NIC IP with Flower {self.config.flower_version}'s "
            f"fleet port {port}"
        )
        self._found_address(f"{host}:{port}", f"NIC of SuperLink VM {self.superlink_vm}")

    def _found_address(self, address: str, source: str) -> None:
        if parse_host_port(address) is None:
            raise _Stop(_not_found(f"{source} gives {address!r}, not host:port"))
        self.address = address
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
        if self.config.ssl_ca_cert is not None:
            self._take_ca(self.config.ssl_ca_cert, "FL_SSL_CA_CERT")
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
            published = self.superlink.get("FL_CA_CERT", "").strip()
            if published:
                source = f"FL_CA_CERT of SuperLink VM {self.superlink_vm}"
                self._take_ca(_pem_text(published), source)
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
        template = vm.get("USER_TEMPLATE") or {}
        self.superlink = decode_attributes(template if isinstance(template, dict) else {})

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

    def _take_ca(self, pem: str | None, source: str) -> None:
        clean, why = check_ca_pem(pem) if pem else (None, "not base64 of a PEM certificate")
        if clean is None:
            self.problems.append(
                Problem(
                    "tls_error",
                    source.split(" ")[0],
                    f"the CA certificate from {source} is unusable: {why}",
                    "publish a valid PEM CA certificate (base64), or set FL_SSL_CA_CERT",
                )
            )
            return
        self.ca_pem = clean
        self.sources["ca_pem"] = source


def _transient_read(exc: OneGateError) -> bool:
    """Reads worth retrying: no answer, a 5xx, or 404 (OneFlow down: `Service N not found`)."""
    return exc.status is None or exc.status >= 500 or exc.status == 404


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


def _pem_text(published: str) -> str | None:
    """FL_CA_CERT is base64 of the PEM (the community appliance); a PEM is taken as is."""
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
) -> Discovery:
    """The SuperLink address, the CA and the node config, from the Config or through OneGate.

    Defaults wait like the community appliance (30 x 10 s for the address, 12 x 5 s for the
    CA); each lookup stops early once it has its answer or knows it will not get one.
    """
    run = _Run(config, reporter, sleep)
    needs_service = run.address is None or run.node_config is None or run.wants_ca
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
