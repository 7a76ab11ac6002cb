"""OneGate's wire format: the attributes, one state change as a report, its request text.

The server's side (OpenNebula/one src/onegate/onegate-server.rb: `update`, `escape_attr`) is
described in docs/onegate.md.
- `PUT /vm` form-encoded (`data=<KEY=VALUE lines>&type=1`) merges attributes; `type=2` deletes
  one attribute per request and rewrites the whole user template.
- The server's `escape_attr` breaks on `"`, `,`, `[`, `]`, `\\` and newlines, and an empty value
  is no value: such values go base64 under `NAME_BASE64` (and a plain `NAME` left from before is
  deleted, and the other way round), so what operators read is always what was meant.
- OneFlow's ready_status_gate matches the substring `READY=YES` in any update, the template a
  delete rewrites included: only READY and FL_NODE_READY may ever carry it, they are deleted
  before any other attribute and set after every other one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.outcome import READY, BootState

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
    "FL_GPU_HEALTH": "OK, WARNING or FAILED: the GPUs' health after boot (fl-agent watch)",
    "FL_GPU_HEALTH_DETAIL": "the health findings, worst first, ';'-separated",
    "FL_GPU_LAST_XID": "the newest NVIDIA XID error since the VM booted",
    "FL_GPU_LAST_XID_TIME": "when the watch received it (ISO 8601, UTC)",
    "FL_GPU_LAST_XID_ACTION": "its action class: none, restart_app, reboot_vm, restart_host, "
    "contact_support or unknown",
    "FL_GPU_ACCESS": "OK, LOST_ACCESS:<reason>, UNCHECKED or NOT_RUNNING: the SuperNode "
    "container's own view of its GPUs",
    "FL_GPU_ACCESS_REPAIR": "the last repair of lost GPU access: what, when, and its result",
    "FL_SUPERNODE_STATUS": "the SuperNode's connection state read from its log: CONNECTED, "
    "RECONNECTING, SUPERLINK_UNREACHABLE, TLS_ERROR, AUTH_REJECTED, VERSION_MISMATCH, ...",
    "FL_ENDPOINT": "superlink role: the Fleet API address SuperNodes of FL_VERSION dial "
    "(host:port; first NIC IP, gRPC on 9092 up to Flower 1.39, HTTP on 8000 from 1.40)",
    "FL_CA_CERT": "superlink role: base64 of the PEM CA certificate SuperNodes trust (and pin); "
    "deleted when FL_TLS=NO",
    "FL_TLS": "superlink role: YES when the SuperLink serves TLS, NO when it runs insecure",
    "FL_VERSION": "superlink role: the Flower version (X.Y.Z) the SuperLink runs",
    "FL_NODES_REGISTERED": "superlink role: how many SuperNode keys of the service are "
    "registered with the SuperLink (sent when it changes)",
    "FL_NODE_PUBLIC_KEY": "the SuperNode's OpenSSH public key, for its SuperLink to register "
    "(the private key never leaves the VM)",
    "FL_NODE_READY": "YES with READY (the community appliance's readiness attribute)",
    "READY": "YES once the SuperNode container runs (superlink role: once the SuperLink "
    "container runs and its Fleet and Control API ports answer): OneFlow's ready_status_gate",
}
"""Every attribute the agent publishes: the one table (docs/onegate.md renders it)."""

STATES = tuple(BootState)
READY_STATES = tuple(s for s in BootState if s in READY)
"""The states in which a node may report READY=YES (agent/outcome.py defines them)."""
READY_ATTRIBUTES = ("READY", "FL_NODE_READY")
"""The attributes that carry READY=YES: deleted first, set last."""

BASE64_SUFFIX = "_BASE64"
LIST_SEPARATOR = ";"
"""Joins list facts (names, UUIDs): ',' would force the value into base64."""

MAX_ERROR_MESSAGE = 200

_UNSAFE = re.compile(r'["\[\],\\]')
_ERROR_CLASS = re.compile(r"[a-z][a-z0-9_]*")
_ERROR_FIXES = str.maketrans({",": ";", '"': "'", "[": "(", "]": ")", "\\": "/"})


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
    own = {"FL_STATE", "FL_ERROR", *READY_ATTRIBUTES}
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
        deletes += list(READY_ATTRIBUTES)
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
    return name in READY_ATTRIBUTES or "READY=YES" not in compact


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
    """One state change, or several merged: attributes to set and attributes to remove."""

    updates: dict[str, str]
    deletes: tuple[str, ...]

    def merged(self, newer: Report) -> Report:
        """This report followed by `newer`, as one: the newer value of each attribute wins."""
        updates = {k: v for k, v in self.updates.items() if k not in newer.deletes}
        updates.update(newer.updates)
        deletes = [d for d in self.deletes if d not in newer.updates]
        deletes += [d for d in newer.deletes if d not in deletes]
        return Report(updates, tuple(deletes))

    def without(self, names: tuple[str, ...]) -> Report:
        """This report with `names` neither set nor deleted."""
        kept = {k: v for k, v in self.updates.items() if k not in names}
        return Report(kept, tuple(d for d in self.deletes if d not in names))

    def to_json(self) -> str:
        return json.dumps({"updates": self.updates, "deletes": list(self.deletes)})

    @classmethod
    def from_json(cls, text: str) -> Report:
        """ValueError unless `text` is a report this module wrote (a dict of str to str and a
        list of str): a file holding `null`, `[]` or garbage is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a report is a JSON object, not {type(data).__name__}")
        updates, deletes = data.get("updates"), data.get("deletes")
        if not isinstance(updates, dict) or not isinstance(deletes, list):
            raise ValueError("a report has an 'updates' object and a 'deletes' list")
        names = [*updates, *updates.values(), *deletes]
        if not all(isinstance(x, str) for x in names):
            raise ValueError("a report's names and values are strings")
        return cls(dict(updates), tuple(deletes))


def wire(report: Report, present: set[str] | None) -> tuple[str, tuple[str, ...]]:
    """The `data` text of the update and the names to delete, given what the VM holds.

    `present` is the VM's USER_TEMPLATE names; None when unknown, then every candidate is
    deleted (an absent one is harmless). Empty values become deletions. READY and
    FL_NODE_READY come first among the deletions and last among the updates.
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
    ordered = sorted(dict.fromkeys(candidates), key=lambda n: not _carries_ready(n))
    deletes = tuple(n for n in ordered if present is None or n in present)
    lines.sort(key=lambda line: _carries_ready(line.split("=", 1)[0]))
    return "\n".join(lines), deletes


def _carries_ready(name: str) -> bool:
    return name.removesuffix(BASE64_SUFFIX) in READY_ATTRIBUTES
