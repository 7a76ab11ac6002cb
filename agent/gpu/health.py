"""GPU health after boot: NVML counters and events, NVIDIA's XID catalog, the reported value.

Observe (`read_health`, `NvmlEvents`) touches NVML only, never the GPUs' workload: no probe
container, no CUDA context. Decide (`summarise`, `changed`) is pure over what was observed.

Constants are nvml.h's (NVIDIA/go-nvml gen/nvml/nvml.h): event type bits, clock event reason
bits, ECC counter selectors. Clock-change and P-state events are not registered: they fire on
every boost change of a busy GPU; the clock event reasons are read at each observation instead.
XID actions follow NVIDIA's Xid catalog for Ampere and newer GPUs (docs/gpu-health.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import Problem
from agent.gpu.nvml import optional_call, problem_for

# nvmlEventType bits
EVENT_SINGLE_BIT_ECC = 0x1
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_XID = 0x8
WATCHED_EVENTS = EVENT_XID | EVENT_DOUBLE_BIT_ECC | EVENT_SINGLE_BIT_ECC
EVENT_KINDS = {
    EVENT_SINGLE_BIT_ECC: "single_bit_ecc",
    EVENT_DOUBLE_BIT_ECC: "double_bit_ecc",
    EVENT_XID: "xid",
}
# nvmlClocksEventReasons bits that mean the GPU is slowed down by a fault, not by policy
SLOWDOWNS = {
    0x8: "hw_slowdown",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "power_brake",
}
# nvmlMemoryErrorType_t, nvmlEccCounterType_t
UNCORRECTED = 1
VOLATILE, AGGREGATE = 0, 1
# nvmlReturn_t
TIMEOUT, GPU_IS_LOST = 10, 15

OK, WARNING, FAILED = "OK", "WARNING", "FAILED"
_RANK = {OK: 0, WARNING: 1, FAILED: 2}

# Action classes. NVIDIA's immediate-action buckets map onto what a VM owner can do.
NONE = "none"  # IGNORE: informational
RESTART_APP = "restart_app"  # application error: the application restarts, the node stays
REBOOT_VM = "reboot_vm"  # RESET_GPU: a passthrough VM resets its GPU by rebooting
RESTART_HOST = "restart_host"  # RESTART_BM: the KVM host (bare metal) must be restarted
CONTACT_SUPPORT = "contact_support"  # hardware: the GPU needs service
UNKNOWN = "unknown"  # not in the catalog
_BUCKETS = {
    "IGNORE": NONE,
    "RESTART_APP": RESTART_APP,
    "RESET_GPU": REBOOT_VM,
    "RESTART_VM": REBOOT_VM,
    "WORKFLOW_XID_48": REBOOT_VM,
    "RESTART_BM": RESTART_HOST,
    "CONTACT_SUPPORT": CONTACT_SUPPORT,
    "CHECK_MECHANICALS": CONTACT_SUPPORT,
    "WORKFLOW_NVLINK_ERR": CONTACT_SUPPORT,
}
_SEVERITY = {
    NONE: OK,
    RESTART_APP: OK,
    CONTACT_SUPPORT: WARNING,
    UNKNOWN: WARNING,
    REBOOT_VM: FAILED,
    RESTART_HOST: FAILED,
}

XID_CATALOG: Mapping[int, tuple[str, str]] = {
    8: ("ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "RESTART_APP"),
    11: ("ROBUST_CHANNEL_GR_ERROR_MISSING_HW", "RESTART_APP"),
    13: ("ROBUST_CHANNEL_GR_EXCEPTION", "RESTART_APP"),
    14: ("ROBUST_CHANNEL_FAKE_ERROR", "IGNORE"),
    25: ("ROBUST_CHANNEL_GR_ILLEGAL_NOTIFY", "RESTART_APP"),
    31: ("ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "RESTART_APP"),
    32: ("ROBUST_CHANNEL_PBDMA_ERROR", "RESTART_APP"),
    38: ("ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT", "IGNORE"),
    43: ("ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", "IGNORE"),
    44: ("ROBUST_CHANNEL_GR_FAULT_DURING_CTXSW", "IGNORE"),
    46: ("ROBUST_CHANNEL_GPU_TIMEOUT_ERROR", "RESET_GPU"),
    48: ("ROBUST_CHANNEL_GPU_ECC_DBE", "WORKFLOW_XID_48"),
    54: ("SILENT_RUNNING_PWR_REDUCED_CLOCKING", "CHECK_MECHANICALS"),
    62: ("PMU_HALT_ERROR", "RESET_GPU"),
    63: ("INFOROM_DRAM_RETIREMENT_EVENT", "IGNORE"),
    64: ("INFOROM_DRAM_RETIREMENT_FAILURE", "RESET_GPU"),
    74: ("NVLINK_ERROR", "WORKFLOW_NVLINK_ERR"),
    79: ("ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "RESTART_BM"),
    92: ("EXCESSIVE_SBE_INTERRUPTS", "IGNORE"),
    94: ("ROBUST_CHANNEL_CONTAINED_ERROR", "RESTART_APP"),
    95: ("ROBUST_CHANNEL_UNCONTAINED_ERROR", "RESET_GPU"),
    109: ("ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "RESET_GPU"),
    110: ("SEC_FAULT_ERROR", "RESET_GPU"),
    119: ("GSP_RPC_TIMEOUT", "RESET_GPU"),
    120: ("GSP_ERROR", "RESET_GPU"),
    136: ("ALI_TRAINING_FAIL", "RESET_GPU"),
    140: ("UNRECOVERABLE_ECC_ERROR_ESCAPE", "RESET_GPU"),
    143: ("GPU_INIT_ERROR", "RESET_GPU"),
    151: ("ROBUST_CHANNEL_KEY_ROTATION_ERROR", "RESTART_VM"),
    155: ("NVLINK_SW_DEFINED_ERROR", "RESET_GPU"),
    156: ("RESOURCE_RETIREMENT_EVENT", "RESET_GPU"),
    158: ("GPU_FATAL_TIMEOUT", "RESET_GPU"),
}
"""XID -> (mnemonic, NVIDIA's immediate-action resolution bucket)."""

MAX_DETAIL = 200
ATTRIBUTES = (
    "FL_GPU_HEALTH",
    "FL_GPU_HEALTH_DETAIL",
    "FL_GPU_LAST_XID",
    "FL_GPU_LAST_XID_TIME",
    "FL_GPU_LAST_XID_ACTION",
)


def xid_action(xid: int) -> str:
    """The action class of an XID after NVIDIA's catalog; `unknown` when it lists none."""
    entry = XID_CATALOG.get(xid)
    return _BUCKETS[entry[1]] if entry else UNKNOWN


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class GpuHealth:
    """One GPU as NVML sees it now. None: not supported on this GPU (or not read)."""

    index: int
    uuid: str | None  # None when NVML says the GPU is lost before its UUID was read
    lost: bool = False
    ecc_uncorrected_volatile: int | None = None
    ecc_uncorrected_aggregate: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    clock_reasons: int | None = None
    problem: Problem | None = None


@dataclass(frozen=True)
class HealthFacts:
    available: bool  # nvmlInit succeeded
    gpus: tuple[GpuHealth, ...] = ()
    problem: Problem | None = None


@dataclass(frozen=True)
class GpuEvent:
    kind: str  # xid | double_bit_ecc | single_bit_ecc
    uuid: str | None
    at: float  # seconds since the epoch, when the agent received it
    xid: int | None = None

    @property
    def action(self) -> str:
        if self.kind == "xid" and self.xid is not None:
            return xid_action(self.xid)
        return REBOOT_VM if self.kind == "double_bit_ecc" else NONE


def read_health() -> HealthFacts:
    """Init NVML, read every GPU's health counters, shut down. Never raises for NVML errors."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return HealthFacts(False, problem=problem_for(exc.value, str(exc)))
    try:
        count = pynvml.nvmlDeviceGetCount()
        return HealthFacts(True, tuple(_gpu_health(pynvml, i) for i in range(count)))
    except pynvml.NVMLError as exc:
        return HealthFacts(True, problem=problem_for(exc.value, str(exc)))
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _gpu_health(nv: Any, index: int) -> GpuHealth:
    uuid = None
    try:
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        uuid = nv.nvmlDeviceGetUUID(handle)
        rows = optional_call(nv, nv.nvmlDeviceGetRemappedRows, handle)
        return GpuHealth(
            index=index,
            uuid=uuid,
            ecc_uncorrected_volatile=_ecc(nv, handle, VOLATILE),
            ecc_uncorrected_aggregate=_ecc(nv, handle, AGGREGATE),
            remap_pending=None if rows is None else bool(rows[2]),
            remap_failure=None if rows is None else bool(rows[3]),
            clock_reasons=optional_call(nv, _clock_reasons(nv), handle),
        )
    except nv.NVMLError as exc:
        if exc.value == GPU_IS_LOST:
            return GpuHealth(index, uuid, lost=True)
        return GpuHealth(index, uuid, problem=problem_for(exc.value, str(exc), f"GPU {index}"))


def _ecc(nv: Any, handle: Any, counter: int) -> int | None:
    return optional_call(nv, nv.nvmlDeviceGetTotalEccErrors, handle, UNCORRECTED, counter)


def _clock_reasons(nv: Any) -> Callable[[Any], int]:
    """The R535+ name, else the older one (same call in nvml.h, renamed)."""
    newer = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    return newer or nv.nvmlDeviceGetCurrentClocksThrottleReasons


class NvmlEvents:
    """NVML's event set over every GPU: `with NvmlEvents() as events: events.wait(1000)`.

    Each GPU registers the watched types it supports (nvml.h: asking for an unsupported type
    registers none of them). `lost` turns true once NVML reports a GPU fallen off the bus.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        import pynvml

        self._nv = pynvml
        self._clock = clock
        self._set: Any = None
        self.registered: dict[str, int] = {}  # uuid -> event types
        self._uuids: dict[int | None, str] = {}  # handle address -> uuid
        self.lost = False

    def __enter__(self) -> NvmlEvents:
        nv = self._nv
        nv.nvmlInit()
        try:
            self._set = nv.nvmlEventSetCreate()
            for index in range(nv.nvmlDeviceGetCount()):
                self._register(nv.nvmlDeviceGetHandleByIndex(index))
        except nv.NVMLError:
            self.__exit__()
            raise
        return self

    def _register(self, handle: Any) -> None:
        nv = self._nv
        types = WATCHED_EVENTS & nv.nvmlDeviceGetSupportedEventTypes(handle)
        if types:
            nv.nvmlDeviceRegisterEvents(handle, types, self._set)
            uuid = nv.nvmlDeviceGetUUID(handle)
            self.registered[uuid] = types
            self._uuids[_address(handle)] = uuid

    def wait(self, timeout_ms: int) -> GpuEvent | None:
        """The next event, or None when none came within the timeout or a GPU is lost."""
        nv = self._nv
        try:
            data = nv.nvmlEventSetWait_v2(self._set, timeout_ms)
        except nv.NVMLError as exc:
            if exc.value == GPU_IS_LOST:
                self.lost = True
            elif exc.value != TIMEOUT:
                raise
            return None
        kind = EVENT_KINDS.get(data.eventType, f"event_{data.eventType:#x}")
        xid = int(data.eventData) if kind == "xid" else None
        return GpuEvent(kind, self._uuids.get(_address(data.device)), self._clock(), xid)

    def __exit__(self, *exc: object) -> None:
        nv = self._nv
        with contextlib.suppress(nv.NVMLError):
            if self._set is not None:
                nv.nvmlEventSetFree(self._set)
            nv.nvmlShutdown()
        self._set = None


def _address(handle: Any) -> int | None:
    """A device handle's identity: an event names its GPU by handle, and asking NVML for the
    UUID of a GPU that has just fallen off the bus fails."""
    return ctypes.cast(handle, ctypes.c_void_p).value


# --------------------------------------------------------------------------- decide


@dataclass(frozen=True)
class Health:
    """What OneGate and `fl-agent status` show."""

    value: str  # OK | WARNING | FAILED
    detail: str  # short, plain ASCII, no character OneGate would need base64 for
    last_xid: int | None = None
    last_xid_time: str | None = None  # ISO 8601, UTC
    last_xid_action: str | None = None

    def attributes(self) -> dict[str, str]:
        values = {"FL_GPU_HEALTH": self.value, "FL_GPU_HEALTH_DETAIL": self.detail}
        if self.last_xid is not None:
            values["FL_GPU_LAST_XID"] = str(self.last_xid)
            values["FL_GPU_LAST_XID_TIME"] = self.last_xid_time or ""
            values["FL_GPU_LAST_XID_ACTION"] = self.last_xid_action or UNKNOWN
        return values


def summarise(facts: HealthFacts, events: Sequence[GpuEvent], expected: Sequence[str]) -> Health:
    """The health of the node's GPUs from the facts now and the events since the watch began.

    expected: the GPU UUIDs the node was given at boot; one NVML no longer lists is gone.
    Reset-class events stay FAILED until the VM reboots (a GPU reset clears them, and in a
    passthrough VM that is a reboot); a later observation clears everything else.
    """
    findings = _fact_findings(facts, expected) + _event_findings(events)
    value = max((s for s, _ in findings), key=_RANK.__getitem__, default=OK)
    ordered = sorted(findings, key=lambda f: -_RANK[f[0]])
    detail = "; ".join(dict.fromkeys(text for _, text in ordered)) or "all GPUs healthy"
    last = next((e for e in reversed(events) if e.kind == "xid"), None)
    if last is None:
        return Health(value, _bounded(detail))
    return Health(value, _bounded(detail), last.xid, _iso(last.at), last.action)


def _fact_findings(facts: HealthFacts, expected: Sequence[str]) -> list[tuple[str, str]]:
    if not facts.available or facts.problem:
        return [(FAILED, f"NVML {facts.problem.name if facts.problem else 'unavailable'}")]
    found: list[tuple[str, str]] = []
    for gpu in facts.gpus:
        found += _gpu_findings(gpu)
    lost = [g for g in facts.gpus if g.lost]
    seen = {g.uuid for g in facts.gpus}
    missing = [u for u in expected if u not in seen]
    if len(missing) > len(lost):
        found += [(FAILED, f"{_short(u)} gone") for u in missing]
    return found


def _gpu_findings(gpu: GpuHealth) -> list[tuple[str, str]]:
    name = _short(gpu.uuid) if gpu.uuid else f"GPU{gpu.index}"
    if gpu.lost:
        return [(FAILED, f"{name} lost")]
    if gpu.problem:
        return [(WARNING, f"{name} {gpu.problem.name}")]
    found = []
    if gpu.remap_failure:
        found.append((FAILED, f"{name} row remap failed: {CONTACT_SUPPORT}"))
    if gpu.remap_pending:
        found.append((WARNING, f"{name} row remap pending: {REBOOT_VM}"))
    if gpu.ecc_uncorrected_volatile:
        found.append((WARNING, f"{name} {gpu.ecc_uncorrected_volatile} uncorrectable ECC"))
    for bit, reason in SLOWDOWNS.items():
        if (gpu.clock_reasons or 0) & bit:
            found.append((WARNING, f"{name} {reason}"))
    return found


def _event_findings(events: Sequence[GpuEvent]) -> list[tuple[str, str]]:
    found = []
    for event in events:
        severity = _SEVERITY[event.action]
        if severity != OK:
            what = f"XID {event.xid}" if event.kind == "xid" else event.kind
            found.append((severity, f"{_short(event.uuid)} {what}: {event.action}"))
    return found


def changed(
    previous: Mapping[str, str] | None, current: Health
) -> tuple[dict[str, str], tuple[str, ...]]:
    """(updates, deletes) OneGate needs to show `current` after `previous` (None: never sent).

    Empty when nothing changed, so a watch that calls this at every observation sends nothing.
    """
    now = current.attributes()
    before = dict(previous or {})
    updates = {k: v for k, v in now.items() if before.get(k) != v}
    deletes = tuple(k for k in ATTRIBUTES if k in before and k not in now)
    return updates, deletes


def _short(uuid: str | None) -> str:
    return uuid[:12] if uuid else "GPU"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
