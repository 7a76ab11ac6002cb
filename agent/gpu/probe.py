"""What GPU probes print, parsed: `nvidia-smi -L` and the torch probe's JSON line. The probe
containers themselves are `agent.engine.run_probe`; the image's NVIDIA_REQUIRE_* are judged by
`agent.gpu.cuda`."""

from __future__ import annotations

import json
import re

_UUID_IN_LIST = re.compile(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)")


def listed_uuids(nvidia_smi_l: str) -> tuple[str, ...]:
    """The GPU and MIG UUIDs in `nvidia-smi -L` output, in order."""
    return tuple(_UUID_IN_LIST.findall(nvidia_smi_l))


# Printed as one JSON line by the framework probe; runs inside the SuperNode image.
TORCH_PROBE = """
import json
out = {"torch": None}
try:
    import torch
    out.update(torch=torch.__version__, cuda_build=torch.version.cuda)
    out["available"] = bool(torch.cuda.is_available())
    out["count"] = torch.cuda.device_count() if out["available"] else 0
    out["names"] = [torch.cuda.get_device_name(i) for i in range(out["count"])]
    if out["available"]:
        torch.ones(1, device="cuda").add_(1)
except ImportError as exc:
    out["import_error"] = str(exc)
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print("FLAGENT-PROBE " + json.dumps(out))
"""


def parse_torch_probe(output: str) -> dict | None:
    """The probe's JSON line, or None when it printed none."""
    for line in reversed(output.splitlines()):
        if line.startswith("FLAGENT-PROBE "):
            try:
                return json.loads(line.removeprefix("FLAGENT-PROBE "))
            except ValueError:
                return None
    return None
