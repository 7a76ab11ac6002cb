"""Device and GPU-memory helpers for ClientApps, run inside the SuperNode image.

Pure stdlib plus torch or tensorflow imported lazily: the image carries `agent/__init__.py`
and this package only, none of the agent's own dependencies. Typical use, first thing in a
ClientApp's handler:

    from agent.clientapp import apply_memory_limit, select_device

    choice = select_device()          # CUDA when available and allowed, else CPU
    apply_memory_limit(choice)        # FL_GPU_MEMORY_FRACTION, a soft cap
    model.to(choice.torch_device)
"""

from agent.clientapp.device import DeviceChoice, gpu_forbidden, select_device
from agent.clientapp.memory import MemoryLimit, apply_memory_limit, parse_fraction

__all__ = [
    "DeviceChoice",
    "MemoryLimit",
    "apply_memory_limit",
    "gpu_forbidden",
    "parse_fraction",
    "select_device",
]
