"""The OneGate client the agent uses: state reports that never block READY, and reads.

Every report goes out merged with whatever waits in the queue (one report: READY is a state,
not an event in a line), deletions first with READY's the very first, READY=YES last. A
deletion of an attribute that is already gone is done, whatever the version says about it:
"attribute not found" up to 7.0.0, "Internal server error" from 7.0.1 on, where GET /vm
confirms the attribute is absent. Every public call is bounded in time; what cannot be
delivered waits on disk for the next call, the re-send timer (`python -m agent.onegate
flush`) or the next boot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent import log
from agent.errors import AgentError, Problem
from agent.onegate.outbox import Outbox
from agent.onegate.ready import ReadyPolicy
from agent.onegate.transport import OneGateError, RetryPolicy, Transport, malformed
from agent.onegate.wire import ATTRIBUTES, READY_ATTRIBUTES, Report, decode_attributes, wire
from agent.paths import Root


def _log():
    return log.get("onegate")


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
        ready: ReadyPolicy | None = None,
        root: Root | None = None,
    ) -> None:
        from agent.context import endpoint_error

        self.endpoint = endpoint
        self.vmid = vmid
        self.total_timeout_s = total_timeout_s
        self.last_problem: Problem | None = None
        self.ready = ready or ReadyPolicy()
        self.ready_problem: Problem | None = None  # why READY=YES was withheld, if it was
        self._root = root or Root()
        self._outbox = Outbox(queue_dir)
        self._present: set[str] | None = None
        self._present_known = False
        reason = endpoint_error(endpoint) if endpoint else None
        if reason is not None:
            self.last_problem = Problem(
                "onegate_endpoint_invalid",
                "ONEGATE_ENDPOINT",
                f"{endpoint!r}: {reason}",
                "set ONEGATE_ENDPOINT in oned.conf to http(s)://host:port",
            )
            _log().error("onegate_reporting_off", problem=str(self.last_problem))
        self.enabled = bool(endpoint and vmid and token) and reason is None
        self._transport = (
            Transport(endpoint, vmid, token, policy or RetryPolicy(), rng or random.Random(), sleep)
            if self.enabled
            else None
        )

    @classmethod
    def from_platform(
        cls,
        platform,
        root: Root,
        *,
        total_timeout_s: float = 10.0,
        ready: ReadyPolicy | None = None,
    ) -> Reporter:
        """From the context's platform values (agent/context.py `Platform`): there even when
        the FL_* values are invalid."""
        reporter = cls(
            endpoint=platform.onegate_endpoint,
            vmid=platform.vmid,
            token=platform.token,
            queue_dir=queue_dir(root),
            total_timeout_s=total_timeout_s,
            ready=ready,
            root=root,
        )
        if not reporter.enabled and reporter.last_problem is None:
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

    @classmethod
    def from_context(cls, context, root: Root, *, total_timeout_s: float = 10.0) -> Reporter:
        """From the context alone: its platform values and READY as one-context decides it."""
        ready = ReadyPolicy.from_variables(context.variables)
        return cls.from_platform(
            context.platform, root, total_timeout_s=total_timeout_s, ready=ready
        )

    # -- reports

    def send(
        self,
        updates: Mapping[str, str],
        deletes: Iterable[str] = (),
        *,
        timeout_s: float | None = None,
    ) -> bool:
        """Deliver one state change merged with anything queued; True when delivered now.

        Not delivered (OneGate down, slow, 401, out of time): kept on disk, merged with what
        was there. `timeout_s` bounds this call (default: `total_timeout_s`).
        """
        if not self.enabled:
            return False
        report = self._gated(Report(dict(updates), tuple(deletes)))
        budget = self.total_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        try:
            with self._outbox.locked(deadline) as held:
                if held:
                    outcome = self._deliver_backlog(report, deadline)
                else:
                    self._outbox.append(report)
                    outcome = "busy"
        except OSError as exc:  # no writable state directory: report without a queue
            _log().error(
                "onegate_queue_unusable", directory=str(self._outbox.directory), error=str(exc)
            )
            return self._deliver(report, deadline) == "delivered"
        if outcome in ("delivered", "refused"):
            return outcome == "delivered"
        _log().warning(
            "onegate_report_queued",
            attributes=sorted(report.updates),
            problem=self.last_problem.name if self.last_problem else "busy",
        )
        return False

    def flush(self) -> int:
        """Deliver the queued reports (as one), within the time bound; how many were queued."""
        if not self.enabled or not self._outbox.files():
            return 0
        deadline = time.monotonic() + self.total_timeout_s
        with self._outbox.locked(deadline) as held:
            if not held:
                return 0
            count = len(self._outbox.files())
            return count if self._deliver_backlog(None, deadline) == "delivered" else 0

    def pending(self) -> int:
        """How many report files wait on disk (one, once a holder of the lock merged them)."""
        return len(self._outbox.files())

    def _deliver_backlog(self, report: Report | None, deadline: float) -> str:
        """The queue merged with `report` on the wire (call with the lock held)."""
        backlog = self._outbox.take()
        parts = [r for r in (backlog.report, report) if r is not None]
        if not parts:
            return "delivered"
        combined = parts[0] if len(parts) == 1 else parts[0].merged(parts[1])
        outcome = self._deliver(combined, deadline)
        if outcome != "retry":
            self._outbox.done(backlog)
        elif report is not None or len(backlog.files) > 1:
            self._outbox.keep(backlog, combined)
        return outcome

    def _gated(self, report: Report) -> Report:
        """READY as the context asks it (REPORT_READY, READY_SCRIPT, READY_SCRIPT_PATH)."""
        if not self.ready.report:
            return report.without(READY_ATTRIBUTES)  # not the agent's to set or delete
        if report.updates.get("READY") != "YES":
            return report
        problem = self.ready.check(self._root)
        if problem is None:
            return report
        _log().error("ready_withheld", problem=str(problem))
        self.ready_problem = problem
        kept = report.without(READY_ATTRIBUTES)
        return Report(kept.updates, (*READY_ATTRIBUTES, *kept.deletes))

    def _deliver(self, report: Report, deadline: float) -> str:
        """One report on the wire: "delivered", "retry" (keep it) or "refused" (drop it).

        A permanent refusal (a restricted attribute, a parse error) would block every later
        report if kept.
        """
        data = ""
        try:
            stopped = self._transport.stopped("PUT", "/vm")
            if stopped is not None:  # this run asks no more: nothing to learn first
                raise stopped
            self._learn_present(deadline)
            data, deletes = wire(report, self._present)
            for name in deletes:
                self._transport.call(
                    "PUT",
                    "/vm",
                    deadline,
                    {"data": name, "type": "2"},
                    harmless=lambda status, body, n=name: self._gone(n, status, body, deadline),
                )
            if data:
                self._transport.call("PUT", "/vm", deadline, {"data": data, "type": "1"})
        except OneGateError as exc:
            self.last_problem = exc.first
            if exc.status is not None:
                self._present_known = False
            elif self._present is not None:
                # No answer: the update may have landed. Counting its names as present keeps
                # their later deletion (a superfluous one is harmless) without a GET /vm.
                self._present |= {line.split("=", 1)[0] for line in data.splitlines()}
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

    def _gone(self, name: str, status: int, body: str, deadline: float) -> bool:
        """Whether a failed deletion of `name` left it deleted: the old servers say so, 7.0.1+
        answer "Internal server error" to everything, so GET /vm tells."""
        if status != 500:
            return False
        if body == "attribute not found":
            return True
        try:
            return name not in self._user_template(deadline)
        except OneGateError as exc:  # GET /vm off on this server: nothing to confirm with
            return exc.status == 403 and not exc.transient

    def _learn_present(self, deadline: float) -> None:
        """What the VM's USER_TEMPLATE holds, read once, so only stale names get deleted."""
        if self._present_known:
            return
        try:
            self._present = set(self._user_template(deadline))
        except OneGateError as exc:
            if exc.status != 403 or exc.transient:
                raise
            self._present = None  # GET /vm disabled on this server: delete every candidate
        self._present_known = True

    def _user_template(self, deadline: float) -> dict[str, Any]:
        vm = self._transport.get_json("/vm", deadline).get("VM")
        template = vm.get("USER_TEMPLATE") if isinstance(vm, dict) else None
        if not isinstance(template, dict):
            raise malformed("/vm", self.endpoint, str(vm)[:200], "a VM with a USER_TEMPLATE")
        return template

    # -- reads

    def get_vm(self) -> dict:
        return self._read("/vm", "VM")

    def get_service(self, *, extended: bool = False) -> dict:
        """GET /service; `extended`: each node's full VM document (its USER_TEMPLATE)."""
        data = self._read("/service?extended=true" if extended else "/service", "SERVICE")
        if not _service_shaped(data["SERVICE"]):
            raise malformed("/service", self.endpoint, str(data)[:200], "a OneFlow service")
        return data

    def get_vm_by_id(self, vmid: str | int) -> dict:
        path = f"/vms/{int(vmid)}"
        data = self._read(path, "VM")
        if not all(isinstance(data["VM"].get(k, {}), dict) for k in _VM_OBJECTS):
            raise malformed(path, self.endpoint, str(data)[:200], "a VM")
        return data

    def _read(self, path: str, key: str) -> dict:
        """The answer, an object with `key` holding an object; else a named OneGateError."""
        if not self.enabled:
            raise AgentError(
                self.last_problem
                or Problem(
                    "onegate_disabled",
                    "OneGate",
                    "no ONEGATE_ENDPOINT, VMID or token in the context",
                    "set TOKEN=YES in the VM template's CONTEXT",
                )
            )
        data = self._transport.get_json(path, time.monotonic() + self.total_timeout_s)
        if not isinstance(data.get(key), dict):
            raise malformed(path, self.endpoint, str(data)[:200], f"an object with {key}")
        return data


_VM_OBJECTS = ("USER_TEMPLATE", "TEMPLATE")


def _service_shaped(service: dict) -> bool:
    """Roles a list of objects whose nodes are a list of objects with an object vm_info, and
    cardinalities that are numbers: what build_service_hash returns (onegate-server.rb)."""
    roles = service.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, dict) for r in roles):
        return False
    for role in roles:
        nodes = role.get("nodes", [])
        if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
            return False
        cardinality = role.get("cardinality")
        if cardinality is not None and not str(cardinality).isdigit():
            return False
        for node in nodes:
            info = node.get("vm_info", {})
            if not isinstance(info, dict) or not isinstance(info.get("VM", {}), dict):
                return False
    return True


def queue_dir(root: Root) -> Path:
    return root.state_dir / "onegate-queue"


def remote_status(platform, root: Root) -> dict[str, Any]:
    """What OneGate holds for this VM (the FL_* attributes and READY, base64 decoded), and
    how many reports wait in the local queue. AgentError when OneGate is off or fails."""
    reporter = Reporter.from_platform(platform, root)
    vm = reporter.get_vm()["VM"]
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
