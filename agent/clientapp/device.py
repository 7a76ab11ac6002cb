"""Choose the device a ClientApp trains on: the GPU when one is there and allowed, else the CPU.

Runs inside the SuperNode (or SuperExec) container, in the ClientApp's own process, so it reads
only the environment the agent gave that container and imports nothing but the stdlib and,
lazily, torch. The agent's contract (see agent/plan.py, the container spec):
- `FL_GPU_MODE=CPU` - the agent decided on CPU mode: never touch CUDA, whatever is visible.
- `CUDA_VISIBLE_DEVICES` empty, `void`, `none` or `-1` - no GPU is meant to be visible.
- `NVIDIA_VISIBLE_DEVICES` `void` or `none` - the container toolkit injected no GPU, unless the
  agent said `FL_GPU_MODE=GPU`: CDI injection (the toolkit's CDI specs from 1.17, Docker's CDI
  path) sets `NVIDIA_VISIBLE_DEVICES=void` in a container that does have the GPU, so under the
  agent its GPU mode and CUDA decide, not that variable.
Otherwise CUDA is used when torch reports it available.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

LOG = logging.getLogger("flwr.fl_agent")

_HIDDEN = ("", "void", "none", "-1")


@dataclass(frozen=True)
class DeviceChoice:
    """The device picked, and why; `torch_device` is what `torch.device(...)` takes."""

    kind: str  # "cuda" or "cpu"
    torch_device: str  # "cuda:0" or "cpu"
    name: str  # the GPU's name, or "cpu"
    reason: str

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"


def gpu_forbidden(environ: Mapping[str, str]) -> str | None:
    """Why the environment rules the GPU out, or None when it allows one."""
    if environ.get("FL_GPU_MODE", "").strip().upper() == "CPU":
        return "FL_GPU_MODE=CPU: the agent runs this node in CPU mode"
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is not None and cuda.strip().lower() in _HIDDEN:
        return f"CUDA_VISIBLE_DEVICES={cuda!r} hides every GPU"
    nvidia = environ.get("NVIDIA_VISIBLE_DEVICES")
    agent_gpu = environ.get("FL_GPU_MODE", "").strip().upper() == "GPU"
    if not agent_gpu and nvidia is not None and nvidia.strip().lower() in ("void", "none"):
        return f"NVIDIA_VISIBLE_DEVICES={nvidia} injects no GPU"
    return None


def select_device(environ: Mapping[str, str] | None = None) -> DeviceChoice:
    """Pick CUDA device 0 (of those visible) when allowed and available, else the CPU; log it."""
    env = os.environ if environ is None else environ
    forbidden = gpu_forbidden(env)
    choice = _cpu(forbidden) if forbidden else _probe_cuda()
    LOG.info("device selected: %s (%s): %s", choice.torch_device, choice.name, choice.reason)
    return choice


def _cpu(reason: str) -> DeviceChoice:
    return DeviceChoice(kind="cpu", torch_device="cpu", name="cpu", reason=reason)


def _probe_cuda() -> DeviceChoice:
    import torch

    if not torch.cuda.is_available():
        build = torch.version.cuda
        why = f"torch {torch.__version__} is a CPU build" if build is None else "no CUDA device"
        return _cpu(f"CUDA not available ({why})")
    name = torch.cuda.get_device_name(0)
    count = torch.cuda.device_count()
    return DeviceChoice(
        kind="cuda",
        torch_device="cuda:0",
        name=name,
        reason=f"CUDA available: {count} visible GPU(s), CUDA {torch.version.cuda}",
    )
