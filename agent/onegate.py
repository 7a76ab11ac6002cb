"""OneGate client: state reports for operators and OneFlow, reads for discovery and status.

Facts: ../shared/reference/opennebula.md section 3. What the server needs and what this module
does about it:
- `PUT /vm` form-encoded (`data=<KEY=VALUE lines>&type=1`): one request per state change;
  deletions (`type=2`) one attribute per request, a 500 `attribute not found` counts as done.
- The server's `escape_attr` breaks on `"`, `,`, `[`, `]`, `\\` and newlines, and an empty value
  is no value: such values go base64 under `NAME_BASE64` (and a plain `NAME` left from before is
  deleted, and the other way round), so what operators read is always what was meant.
- OneFlow's ready_status_gate matches the substring `READY=YES` in any update: only READY and
  FL_NODE_READY may ever carry it.
- Retries with exponential backoff and jitter on connection errors, timeouts and 5xx; none on
  401/403; every public call is bounded in time, so a boot never waits on OneGate for long.
- A report that cannot be delivered is kept on disk (one JSON file per report, never the token)
  and sent, in order, before any newer report: a stale state never overwrites a newer one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__, log
from agent.atomicfile import write_atomic
from agent.errors import AgentError, Problem
from agent.outcome import READY, BootState
from agent.paths import Root

ATTRIBUTES: Mapping[str, str] = {
    "FL_STATE": "the boot's state, one of STATES",
    "FL_GPU_MODE": "GPU or CPU: how the SuperNode runs",
    "FL_GPU_COUNT": "number of GPUs (or MIG devices) given to the SuperNode",
    "FL_GPU_NAMES": "GPU product names, separated by ';'",
    "FL_GPU_UUIDS": "GPU or MIG UUIDs, separated by ';'",
    "FL_GPU_MEMORY_MIB": "memory per GPU in MiB, separated by ';'",
    "FL_DRIVER_VERSION": "NVIDIA driver version",
    "FL_CUDA_VERSION": "highest CUDA version the driver supports",
    "FL_MIG": "MIG mode: ENABLED, DISABLED or UNSUPPORTED",
    "FL_VALIDATION": "PASSED, FAILED:<stage> or CPU_ONLY",
    "FL_ERROR": "'<class>: <message>' while something is wrong; deleted once it is not",
    "FL_SUPERNODE_IMAGE": "the SuperNode container image",
    "FL_FLOWER_VERSION": "the Flower version the SuperNode runs",
    "FL_AGENT_VERSION": "the fl-agent version",
    "FL_NODE_READY": "YES with READY (the community appliance's readiness attribute)",
    "READY": "YES once the SuperNode container runs: OneFlow's ready_status_gate",
}
"""Every attribute the agent publishes: the one table (docs/onegate.md renders it)."""

STATES = tuple(BootState)
READY_STATES = tuple(s for s in BootState if s in READY)
"""The states in which a node may report READY=YES (agent/outcome.py defines them)."""

BASE64_SUFFIX = "_BASE64"
LIST_SEPARATOR = ";"
"""Joins list facts (names, UUIDs): ',' would force the value into base64."""

MAX_ERROR_MESSAGE = 200
QUEUE_LIMIT = 64
"""Queued reports beyond this are merged, oldest first: the end state is what matters."""

_UNSAFE = re.compile(r'["\[\],\\]')
_ERROR_CLASS = re.compile(r"[a-z][a-z0-9_]*")
_ERROR_FIXES = str.maketrans({",": ";", '"': "'", "[": "(", "]": ")", "\\": "/"})


def _log():
    return log.get("onegate")


# --------------------------------------------------------------------------- the reports


def state_report(
    state: str,
    *,
    facts: Mapping[str, str] | None = None,
    error: tuple[str, str] | None = None,
    ready: bool = False,
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The (updates, deletes) of one state change; READY=YES is the last update when ready.

    READY and FL_NODE_READY are deleted whenever the node is not ready, so a re-boot that ends
    FAILED never leaves a READY=YES behind; FL_ERROR is deleted whenever there is no error, so
    a recovered node shows none. A DEGRADED node is ready and carries the reason in FL_ERROR.
    """
    if state not in STATES:
        raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
    if ready and state not in READY_STATES:
        raise ValueError(f"READY=YES is only for {' or '.join(READY_STATES)}, not {state}")
    own = {"FL_STATE", "FL_ERROR", "FL_NODE_READY", "READY"}
    facts = dict(facts or {})
    wrong = sorted(set(facts) - set(ATTRIBUTES) | (set(facts) & own))
    if wrong:
        raise ValueError(f"not facts: {', '.join(wrong)}")
    updates = {"FL_STATE": state, **facts}
    deletes: list[str] = []
    if error is None:
        deletes.append("FL_ERROR")
    else:
        updates["FL_ERROR"] = error_value(*error)
    if ready:
        updates["FL_NODE_READY"] = "YES"
        updates["READY"] = "YES"
    else:
        deletes += ["FL_NODE_READY", "READY"]
    return updates, tuple(deletes)


def error_value(error_class: str, message: str) -> str:
    """FL_ERROR's value: '<class>: <message>', one readable line that needs no base64."""
    if not _ERROR_CLASS.fullmatch(error_class):
        raise ValueError(f"error class {error_class!r} is not snake_case")
    line = " ".join(message.split()).translate(_ERROR_FIXES)
    if len(line) > MAX_ERROR_MESSAGE:
        line = line[: MAX_ERROR_MESSAGE - 3] + "..."
    return f"{error_class}: {line}" if line else error_class


def is_plain(name: str, value: str) -> bool:
    """Whether `value` survives the server's escape_attr and the template parser as is."""
    if value == "" or value != value.strip() or not (value.isascii() and value.isprintable()):
        return False
    if _UNSAFE.search(value):
        return False
    # OneFlow matches 'READY=YES' anywhere in an update once quotes and spaces are removed.
    compact = f"{name}={value}".replace(" ", "").replace('"', "")
    return name in ("READY", "FL_NODE_READY") or "READY=YES" not in compact


def decode_attributes(template: Mapping[str, Any]) -> dict[str, str]:
    """USER_TEMPLATE with NAME_BASE64 decoded into NAME ({} for empty, as the server sends)."""
    out: dict[str, str] = {}
    for name, raw in template.items():
        value = raw if isinstance(raw, str) else ""
        if name.endswith(BASE64_SUFFIX):
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                out[name.removesuffix(BASE64_SUFFIX)] = base64.b64decode(
                    value, validate=True
                ).decode()
                continue
        out.setdefault(name, value)
    return out


@dataclass(frozen=True)
class Report:
    """One state change: attributes to set and attributes to remove."""

    updates: dict[str, str]
    deletes: tuple[str, ...]

    def merged(self, newer: Report) -> Report:
        """This report followed by `newer`, as one."""
        updates = {k: v for k, v in self.updates.items() if k not in newer.deletes}
        updates.update(newer.updates)
        deletes = [d for d in self.deletes if d not in newer.updates]
        deletes += [d for d in newer.deletes if d not in deletes]
        return Report(updates, tuple(deletes))

    def to_json(self) -> str:
        return json.dumps({"updates": self.updates, "deletes": list(self.deletes)})

    @classmethod
    def from_json(cls, text: str) -> Report:
        data = json.loads(text)
        return cls(dict(data["updates"]), tuple(data["deletes"]))


def wire(report: Report, present: set[str] | None) -> tuple[str, tuple[str, ...]]:
    """The `data` text of the update and the names to delete, given what the VM holds.

    `present` is the VM's USER_TEMPLATE names; None when unknown, then every candidate is
    deleted (a 500 `attribute not found` is harmless). Empty values become deletions.
    """
    lines: list[str] = []
    candidates: list[str] = []
    for name, value in report.updates.items():
        if value == "":
            candidates += [name, name + BASE64_SUFFIX]
        elif is_plain(name, value):
            lines.append(f"{name}={value}")
            candidates.append(name + BASE64_SUFFIX)
        else:
            lines.append(f"{name}{BASE64_SUFFIX}={base64.b64encode(value.encode()).decode()}")
            candidates.append(name)
    for name in report.deletes:
        candidates += [name, name + BASE64_SUFFIX]
    deletes = tuple(n for n in dict.fromkeys(candidates) if present is None or n in present)
    return "\n".join(lines), deletes


# --------------------------------------------------------------------------- transport


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between d/2 and d, d = base * 2**n."""

    base_s: float = 0.5
    cap_s: float = 4.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**attempt))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


class OneGateError(AgentError):
    """A OneGate request that failed; `status` is the HTTP status (None: no answer)."""

    def __init__(self, problem: Problem, status: int | None = None, body: str = "") -> None:
        super().__init__(problem)
        self.status = status
        self.body = body

    @property
    def transient(self) -> bool:
        """Worth trying again later: no answer, a 5xx, a 401 (the token can be fixed) or the
        server's `Host not permitted` (its configuration can be fixed)."""
        if self.status == 403:
            return "Host not permitted" in self.body
        return self.status is None or self.status >= 500 or self.status == 401


def _problem(status: int | None, body: str, path: str, endpoint: str) -> Problem:
    subject = f"OneGate {endpoint}{path}"
    if status is None:
        return Problem(
            "onegate_unreachable",
            subject,
            f"no answer: {body}",
            "check ONEGATE_ENDPOINT (oned.conf) and that port 5030 is reachable from the VM",
        )
    if status == 401:
        return Problem(
            "onegate_unauthorized",
            subject,
            "401 Not authorized: the token or VMID is wrong, or the VM was recreated",
            "set TOKEN=YES in the VM template's CONTEXT and check the owner's TOKEN_PASSWORD",
        )
    if status == 403 and "Host not permitted" in body:
        return Problem(
            "onegate_forbidden",
            subject,
            "403 Host not permitted: the OneGate server rejects its own host name",
            "server configuration: permit the host in onegate-server.conf (OpenNebula/one#7231)",
        )
    if status == 403:
        return Problem(
            "onegate_forbidden",
            subject,
            f"403 {body}",
            "a restricted attribute or an action disabled in onegate-server.conf",
        )
    return Problem("onegate_error", subject, f"HTTP {status}: {body[:200]}", "")


class _Transport:
    """HTTP with retries inside a deadline; the token only ever goes into a header."""

    def __init__(self, endpoint, vmid, token, policy, rng, sleep) -> None:
        import requests

        self.requests = requests
        self.endpoint = endpoint
        self.policy = policy
        self.rng = rng
        self.sleep = sleep
        self.session = requests.Session()
        self.session.headers.update(
            {
                "X-ONEGATE-TOKEN": token.reveal(),
                "X-ONEGATE-VMID": vmid,
                "User-Agent": f"fl-agent/{__version__}",
                "Accept": "application/json",
            }
        )

    def call(self, method: str, path: str, deadline: float, data=None) -> str:
        """The body of a 2xx answer (or of a harmless 500 on delete); else OneGateError."""
        failures = (
            self.requests.ConnectionError,
            self.requests.Timeout,
            self.requests.exceptions.ChunkedEncodingError,
        )
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OneGateError(_problem(None, "out of time", path, self.endpoint))
            timeout = (
                min(self.policy.connect_timeout_s, remaining),
                min(self.policy.read_timeout_s, remaining),
            )
            try:
                resp = self.session.request(
                    method, self.endpoint + path, data=data, timeout=timeout
                )
            except failures as exc:
                error = OneGateError(_problem(None, type(exc).__name__, path, self.endpoint))
            else:
                body = resp.text.strip()
                if resp.status_code < 300 or _harmless(resp.status_code, body, data):
                    return body
                problem = _problem(resp.status_code, body, path, self.endpoint)
                error = OneGateError(problem, resp.status_code, body)
                if resp.status_code < 500 or "Parse error" in body:
                    raise error
            delay = self.policy.delay(attempt, self.rng)
            if time.monotonic() + delay >= deadline:
                raise error
            _log().debug("onegate_retry", path=path, attempt=attempt + 1, delay_s=round(delay, 3))
            self.sleep(delay)
            attempt += 1


def _harmless(status: int, body: str, data) -> bool:
    """Deleting an attribute that is already gone is what was asked for."""
    return status == 500 and body == "attribute not found" and bool(data) and data["type"] == "2"


# --------------------------------------------------------------------------- the queue


class _Queue:
    """Reports not delivered yet: one 0600 JSON file each, named `<seq>-<pid>.json`.

    The sequence continues from the files already there, not from the clock, which NTP may
    step backwards while a VM boots.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.json"))

    def append(self, report: Report) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        last = max((int(f.name.split("-")[0]) for f in self.files()), default=0)
        name = f"{last + 1:012d}-{os.getpid():07d}.json"
        write_atomic(self.directory / name, report.to_json(), mode=0o600)
        self._bound()

    def _bound(self) -> None:
        files = self.files()
        while len(files) > QUEUE_LIMIT:
            first, second = files[0], files[1]
            merged = Report.from_json(first.read_text()).merged(
                Report.from_json(second.read_text())
            )
            write_atomic(second, merged.to_json(), mode=0o600)
            first.unlink()
            files = files[1:]

    @contextlib.contextmanager
    def locked(self, deadline: float) -> Iterator[bool]:
        """Hold the queue's lock (waiting until `deadline` at most); yields whether it is held.

        Only the holder sends, so two processes (the boot, a flush timer) never interleave.
        """
        from agent.state import file_lock

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        wait_s = max(0.0, deadline - time.monotonic())
        with file_lock(self.directory / ".lock", wait_s=wait_s, poll_s=0.02) as held:
            yield held


# --------------------------------------------------------------------------- the reporter


class Reporter:
    """Reports state changes to OneGate and reads from it; off without endpoint or token."""

    def __init__(
        self,
        *,
        endpoint: str | None,
        vmid: str | None,
        token,
        queue_dir: Path,
        total_timeout_s: float = 10.0,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.vmid = vmid
        self.total_timeout_s = total_timeout_s
        self.enabled = bool(endpoint and vmid and token)
        self.last_problem: Problem | None = None
        self._queue = _Queue(queue_dir)
        self._present: set[str] | None = None
        self._present_known = False
        self._transport = (
            _Transport(
                endpoint, vmid, token, policy or RetryPolicy(), rng or random.Random(), sleep
            )
            if self.enabled
            else None
        )

    @classmethod
    def from_platform(cls, platform, root: Root, *, total_timeout_s: float = 10.0) -> Reporter:
        reporter = cls(
            endpoint=platform.onegate_endpoint,
            vmid=platform.vmid,
            token=platform.token,
            queue_dir=queue_dir(root),
            total_timeout_s=total_timeout_s,
        )
        if not reporter.enabled:
            missing = [
                name
                for name, value in (
                    ("ONEGATE_ENDPOINT", platform.onegate_endpoint),
                    ("VMID", platform.vmid),
                    ("token", platform.token),
                )
                if not value
            ]
            _log().info(
                "onegate_reporting_off",
                missing=missing,
                fix="set TOKEN=YES in the VM template's CONTEXT",
            )
        return reporter

    # -- reports

    def send(
        self,
        updates: Mapping[str, str],
        deletes: Iterable[str] = (),
        *,
        timeout_s: float | None = None,
    ) -> bool:
        """Deliver one state change after any queued ones; True when delivered now.

        Not delivered (OneGate down, slow, 401, out of time): kept on disk for `flush`.
        `timeout_s` bounds this call (default: `total_timeout_s`).
        """
        if not self.enabled:
            return False
        report = Report(dict(updates), tuple(deletes))
        budget = self.total_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        try:
            with self._queue.locked(deadline) as held:
                outcome = "busy"
                if held and self._deliver_queue(deadline)[1]:
                    outcome = self._deliver(report, deadline)
                if outcome in ("delivered", "refused"):
                    return outcome == "delivered"
                self._queue.append(report)
        except OSError as exc:  # no writable state directory: report without a queue
            _log().error(
                "onegate_queue_unusable", directory=str(self._queue.directory), error=str(exc)
            )
            return self._deliver(report, deadline) == "delivered"
        _log().warning(
            "onegate_report_queued",
            attributes=sorted(report.updates),
            problem=self.last_problem.name if self.last_problem else "busy",
        )
        return False

    def flush(self) -> int:
        """Deliver queued reports in order, within the time bound; how many were delivered."""
        if not self.enabled or not self._queue.files():
            return 0
        deadline = time.monotonic() + self.total_timeout_s
        with self._queue.locked(deadline) as held:
            return self._deliver_queue(deadline)[0] if held else 0

    def pending(self) -> int:
        """How many reports wait on disk."""
        return len(self._queue.files())

    def _deliver_queue(self, deadline: float) -> tuple[int, bool]:
        """(how many were delivered, whether the queue is empty now)."""
        delivered = 0
        for path in self._queue.files():
            try:
                report = Report.from_json(path.read_text())
            except (OSError, ValueError, KeyError) as exc:
                _log().error("onegate_queue_unreadable", file=path.name, error=str(exc))
                path.unlink(missing_ok=True)
                continue
            if self._deliver(report, deadline) == "retry":
                return delivered, False
            path.unlink()
            delivered += 1
        return delivered, True

    def _deliver(self, report: Report, deadline: float) -> str:
        """One report on the wire: "delivered", "retry" (keep it) or "refused" (drop it).

        A permanent refusal (403, a parse error) would block every later report if kept.
        """
        try:
            self._learn_present(deadline)
            data, deletes = wire(report, self._present)
            # Deletions first: a FAILED node never shows READY=YES, not even for a moment.
            for name in deletes:
                self._transport.call("PUT", "/vm", deadline, {"data": name, "type": "2"})
            if data:
                self._transport.call("PUT", "/vm", deadline, {"data": data, "type": "1"})
        except OneGateError as exc:
            self.last_problem = exc.first
            self._present_known = False
            if exc.transient:
                return "retry"
            _log().error(
                "onegate_report_refused", problem=str(exc.first), dropped=sorted(report.updates)
            )
            return "refused"
        if self._present is not None:
            self._present -= set(deletes)
            self._present |= {line.split("=", 1)[0] for line in data.splitlines()}
        self.last_problem = None
        return "delivered"

    def _learn_present(self, deadline: float) -> None:
        """What the VM's USER_TEMPLATE holds, read once, so only stale names get deleted."""
        if self._present_known:
            return
        try:
            template = self._get("/vm", deadline)["VM"].get("USER_TEMPLATE") or {}
            self._present = set(template) if isinstance(template, dict) else set()
        except OneGateError as exc:
            if exc.status != 403 or exc.transient:
                raise
            self._present = None  # GET /vm disabled on this server: delete every candidate
        self._present_known = True

    # -- reads

    def get_vm(self) -> dict:
        return self._read("/vm")

    def get_service(self) -> dict:
        return self._read("/service")

    def get_vm_by_id(self, vmid: str | int) -> dict:
        return self._read(f"/vms/{int(vmid)}")

    def _read(self, path: str) -> dict:
        if not self.enabled:
            raise AgentError(
                Problem(
                    "onegate_disabled",
                    "OneGate",
                    "no ONEGATE_ENDPOINT, VMID or token in the context",
                    "set TOKEN=YES in the VM template's CONTEXT",
                )
            )
        return self._get(path, time.monotonic() + self.total_timeout_s)

    def _get(self, path: str, deadline: float) -> dict:
        body = self._transport.call("GET", path, deadline)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise OneGateError(
                _problem(200, f"not JSON: {exc}", path, self.endpoint), 200, body
            ) from exc
        if not isinstance(data, dict):
            raise OneGateError(_problem(200, "not a JSON object", path, self.endpoint), 200, body)
        return data


def queue_dir(root: Root) -> Path:
    return root.state_dir / "onegate-queue"


def remote_status(platform, root: Root) -> dict[str, Any]:
    """What OneGate holds for this VM (the FL_* attributes and READY, base64 decoded), and
    how many reports wait in the local queue. AgentError when OneGate is off or fails."""
    reporter = Reporter.from_platform(platform, root)
    vm = reporter.get_vm().get("VM", {})
    template = vm.get("USER_TEMPLATE") or {}
    decoded = decode_attributes(template if isinstance(template, dict) else {})
    return {
        "endpoint": platform.onegate_endpoint,
        "vmid": vm.get("ID"),
        "name": vm.get("NAME"),
        "state": vm.get("STATE"),
        "lcm_state": vm.get("LCM_STATE"),
        "attributes": {k: decoded[k] for k in ATTRIBUTES if k in decoded},
        "queued_reports": reporter.pending(),
    }
