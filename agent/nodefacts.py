"""The node's GPU facts in the SuperNode's --node-config, for a ServerApp strategy to read.

Keys (documented in the README, "GPU facts in the node config"), TOML values:

| key | value |
|---|---|
| `fl-mode` | `"gpu"` or `"cpu"`: how the node's ClientApps run |
| `fl-gpu-count` | GPUs (or MIG devices) given to the node; 0 on CPU |
| `fl-gpu-model` | the first given GPU's product name (GPU mode only) |
| `fl-gpu-memory-mib` | the smallest given GPU's (or MIG device's) memory in MiB (GPU mode) |
| `fl-mig` | true when the node was given MIG devices (GPU mode) |
| `fl-mig-profile` | the given MIG devices' profile, "1g.10gb" (GPU mode, MIG devices only) |
| `fl-cuda-version` | the highest CUDA version the driver supports, "12.4" (GPU mode) |

A ServerApp reads them per node: `context.node_config["fl-gpu-count"]` in a ClientApp, or the
node's config in the strategy's `configure_train` (README). The operator's FL_NODE_CONFIG
keys win over these; FL_NODE_FACTS=NO leaves them out. The facts come from the boot's
validation report (its dict form, the same that the state file keeps), so a periodic
re-convergence, which reads the last boot's report, builds the same node config: the
container is not replaced for nothing. The MIG profile is named as NVIDIA's tools name it
(agent/gpu/nvml.py mig_profile_name); MIG devices of different profiles give each distinct
profile once, in NVML's order, separated by spaces ("1g.10gb 3g.40gb": a profile has no
space, and the value stays one TOML string). A device whose profile NVML did not give is left
out of it; when none has one, the key is left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agent.config import node_config_pairs, validate_node_config

_SAFE_TEXT = re.compile(r"[^A-Za-z0-9 ._()+/-]")
MAX_TEXT = 64
"""A product name or version is short; anything longer is cut."""


@dataclass(frozen=True)
class GpuNodeFacts:
    """What the validation found about the GPUs the node is given (count 0: none)."""

    count: int = 0
    model: str | None = None
    memory_mib: int | None = None
    mig: bool = False
    cuda_version: str | None = None
    mig_profile: str | None = None  # "1g.10gb", or distinct profiles space-separated


def from_validation(validation: dict[str, Any] | None) -> GpuNodeFacts:
    """The facts of the GPUs the validation selected (all it saw when it selected all)."""
    validation = _object(validation)
    nvml = _object(_object(validation.get("facts")).get("nvml"))
    gpus = [g for g in _list(nvml.get("gpus")) if isinstance(g, dict) and g.get("uuid")]
    if not gpus:
        return GpuNodeFacts()
    selected = {s for s in _list(validation.get("selected")) if isinstance(s, str)}
    migs = [
        m
        for g in gpus
        for m in _list(g.get("mig_devices"))
        if isinstance(m, dict) and m.get("uuid") in selected
    ]
    chosen = [g for g in gpus if not selected or g["uuid"] in selected] or gpus
    memories = [m.get("memory_total") for m in migs] or [g.get("memory_total") for g in chosen]
    known = [m for m in memories if isinstance(m, int) and m > 0]
    return GpuNodeFacts(
        count=len(selected) if selected else len(gpus),
        model=_text((chosen[0] if not migs else gpus[0]).get("name")),
        memory_mib=min(known) // 2**20 if known else None,
        mig=bool(migs),
        cuda_version=_text(nvml.get("cuda_version")),
        mig_profile=_mig_profiles(migs),
    )


def _object(value: Any) -> dict[str, Any]:
    """The recorded validation is read back from the state file: any level may have another
    shape (an older version, a hand edit); what is not an object counts as empty."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _mig_profiles(migs: list[dict[str, Any]]) -> str | None:
    """The distinct profiles of these MIG devices in their order, space-separated."""
    names = [m.get("profile") for m in migs]
    distinct = dict.fromkeys(n for n in names if isinstance(n, str) and n)
    return " ".join(distinct) or None


def node_config_facts(facts: GpuNodeFacts, gpu: bool) -> dict[str, str]:
    """The keys and their TOML values for a node running in GPU (`gpu`) or CPU mode."""
    if not gpu:
        return {"fl-mode": '"cpu"', "fl-gpu-count": "0"}
    values = {"fl-mode": '"gpu"', "fl-gpu-count": str(facts.count)}
    if facts.model:
        values["fl-gpu-model"] = _toml_text(facts.model)
    if facts.memory_mib is not None:
        values["fl-gpu-memory-mib"] = str(facts.memory_mib)
    values["fl-mig"] = "true" if facts.mig else "false"
    if facts.mig and facts.mig_profile:
        values["fl-mig-profile"] = _toml_text(facts.mig_profile)
    if facts.cuda_version:
        values["fl-cuda-version"] = _toml_text(facts.cuda_version)
    return values


def _toml_text(text: str) -> str:
    """A TOML basic string Flower's node-config reader takes whole: it cuts a value at its
    next `"`, so quotes, backslashes and control characters are dropped, not escaped."""
    return json.dumps(_SAFE_TEXT.sub("", text)[:MAX_TEXT].strip())


def merged_node_config(base: str | None, facts: dict[str, str]) -> str | None:
    """`base` (the operator's FL_NODE_CONFIG or the discovered partition) with the facts whose
    keys it does not set; `base` unchanged if the merge would not be a valid node config."""
    own = {key for key, _ in node_config_pairs(base or "")}
    added = " ".join(f"{k}={v}" for k, v in facts.items() if k not in own)
    if not added:
        return base
    merged = f"{base} {added}" if base else added
    return merged if validate_node_config(merged) is None else base
