"""Cap the GPU memory one ClientApp process may take, from `FL_GPU_MEMORY_FRACTION`.

The agent passes the operator's fraction (0 < f <= 1) into the SuperNode container's
environment; the cap has to be set inside every ClientApp process, before it allocates.

PyTorch: `torch.cuda.set_per_process_memory_fraction` caps the *caching allocator* of this
process. It is a soft limit, not isolation: the CUDA context, cuBLAS/cuDNN workspaces and
other non-allocator memory are not counted (pytorch#69688, pytorch#58466), so nvidia-smi shows
more than the fraction. Leave headroom; real isolation needs MIG or a GPU per node.

TensorFlow grabs all GPU memory by default; with a fraction and a known total (NVML) each GPU
gets a logical device of that size, otherwise memory growth is turned on so the process takes
only what it uses. The total is that of the devices this process sees: the MIG slice named in
CUDA_VISIBLE_DEVICES (or the MIG devices of a MIG-mode GPU), not the parent GPU NVML lists.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from agent.clientapp.device import DeviceChoice

LOG = logging.getLogger("flwr.fl_agent")
ENV_FRACTION = "FL_GPU_MEMORY_FRACTION"


@dataclass(frozen=True)
class MemoryLimit:
    """What was done about GPU memory: `applied` is True only when a cap is in force."""

    framework: str  # "torch", "tensorflow" or "none"
    fraction: float | None
    applied: bool
    detail: str


def parse_fraction(environ: Mapping[str, str]) -> tuple[float | None, str | None]:
    """(fraction, None), (None, None) when unset, or (None, why) when the value is unusable."""
    raw = environ.get(ENV_FRACTION, "").strip()
    if not raw:
        return None, None
    try:
        value = float(raw)
    except ValueError:
        return None, f"{ENV_FRACTION}={raw!r} is not a number"
    if not 0.0 < value <= 1.0:
        return None, f"{ENV_FRACTION}={raw} is outside (0, 1]"
    return value, None


def installed_framework() -> str:
    """The deep-learning framework this environment has: torch first, then tensorflow."""
    for name in ("torch", "tensorflow"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "none"


def apply_memory_limit(
    choice: DeviceChoice, environ: Mapping[str, str] | None = None, framework: str | None = None
) -> MemoryLimit:
    """Apply the agent's fraction to the chosen GPU (a no-op on the CPU) and log the outcome."""
    env = os.environ if environ is None else environ
    fw = framework or installed_framework()
    fraction, problem = parse_fraction(env)
    if problem:
        limit = MemoryLimit(fw, None, False, f"{problem}: no cap set")
    elif not choice.is_gpu:
        limit = MemoryLimit(fw, fraction, False, "CPU device: no GPU memory to cap")
    elif fw == "torch":
        limit = _torch(choice, fraction)
    elif fw == "tensorflow":
        limit = _tensorflow(fraction, env)
    else:
        limit = MemoryLimit(fw, fraction, False, "neither torch nor tensorflow is installed")
    LOG.info("gpu memory: %s", limit.detail)
    return limit


def _torch(choice: DeviceChoice, fraction: float | None) -> MemoryLimit:
    if fraction is None:
        return MemoryLimit("torch", None, False, f"{ENV_FRACTION} unset: whole GPU allowed")
    import torch

    index = int(choice.torch_device.partition(":")[2] or 0)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    total_mib = torch.cuda.get_device_properties(index).total_memory / 2**20
    detail = (
        f"torch caching allocator capped at {fraction:g} of {total_mib:.0f} MiB "
        f"({fraction * total_mib:.0f} MiB; soft limit: CUDA context and library workspaces "
        "are not counted)"
    )
    return MemoryLimit("torch", fraction, True, detail)


def _tensorflow(fraction: float | None, environ: Mapping[str, str]) -> MemoryLimit:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return MemoryLimit("tensorflow", fraction, False, "tensorflow sees no GPU")
    total_mib = visible_memory_mib(environ) if fraction is not None else None
    if fraction is not None and total_mib:
        limit_mib = int(fraction * total_mib)
        config = [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mib)]
        for gpu in gpus:
            tf.config.set_logical_device_configuration(gpu, config)
        return MemoryLimit(
            "tensorflow", fraction, True, f"tensorflow limited to {limit_mib} MiB per GPU"
        )
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    why = "no fraction set" if fraction is None else "GPU memory size unknown (no NVML)"
    return MemoryLimit("tensorflow", fraction, False, f"tensorflow memory growth on ({why})")


def visible_memory_mib(environ: Mapping[str, str]) -> float | None:
    """The smallest memory of the devices this process sees, in MiB, via NVML (nvidia-ml-py).

    CUDA_VISIBLE_DEVICES with GPU-/MIG- UUIDs names them; otherwise every GPU, a MIG-mode GPU
    counting as its MIG devices (CUDA runs on a slice, never on the MIG-mode parent).
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        totals = [
            pynvml.nvmlDeviceGetMemoryInfo(h).total for h in _visible_handles(pynvml, environ)
        ]
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
    return min(totals) / 2**20 if totals else None


def _visible_handles(nv, environ: Mapping[str, str]) -> list:
    named = [
        entry.strip()
        for entry in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if entry.strip().startswith(("GPU-", "MIG-"))
    ]
    if named:
        return [nv.nvmlDeviceGetHandleByUUID(uuid) for uuid in named]
    handles = []
    for index in range(nv.nvmlDeviceGetCount()):
        gpu = nv.nvmlDeviceGetHandleByIndex(index)
        handles.extend(_mig_handles(nv, gpu) or [gpu])
    return handles


def _mig_handles(nv, gpu) -> list:
    try:
        if nv.nvmlDeviceGetMigMode(gpu)[0] != 1:
            return []
    except nv.NVMLError:
        return []
    found = []
    for slot in range(nv.nvmlDeviceGetMaxMigDeviceCount(gpu)):
        try:
            found.append(nv.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot))
        except nv.NVMLError:
            continue
    return found
