"""The GPU seen from inside a container: one short-lived container with the device request.

The SuperNode image itself is started the way the SuperNode will be (a docker SDK
DeviceRequest: `count=-1` for all, else the UUIDs as `device_ids`, never both) with its
entrypoint replaced by a probe command. Whatever happens, every container this module created
is removed: the engine raises GPU refusals at *start*, after create succeeded, which would
otherwise leave a container in state `created` behind (gpu-stack.md section 0.3).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from agent.errors import Problem

LABEL = "fl-agent.validation"
WAIT_S = 120
LOG_LIMIT = 4000
_UUID_IN_LIST = re.compile(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)")
_REQUIRE = re.compile(r"cuda>=(\d+)\.(\d+)")

_TOOLKIT_FIX = (
    "install the NVIDIA Container Toolkit (FL_TOOLKIT_INSTALL=AUTO does it at boot, or "
    "`fl-agent validate --repair`), then `nvidia-ctk runtime configure --runtime=docker` and "
    "`systemctl restart docker`: dockerd registers its GPU driver only when it starts"
)
# (pattern in the engine's or the hook's message, problem name, cause, fix)
_ENGINE_ERRORS: tuple[tuple[str, str, str, str], ...] = (
    (
        "could not select device driver",
        "gpu_runtime_unavailable",
        "the Docker engine has no GPU device driver: nvidia-container-runtime-hook was not on "
        "dockerd's PATH when dockerd started (toolkit missing, or dockerd not restarted)",
        _TOOLKIT_FIX,
    ),
    (
        "unknown or invalid runtime name",
        "toolkit_not_configured",
        "the engine does not know the nvidia runtime",
        "`nvidia-ctk runtime configure --runtime=docker` and `systemctl restart docker`",
    ),
    (
        "driver not loaded",
        "gpu_driver_not_loaded",
        "the toolkit's hook found no loaded NVIDIA kernel module",
        "load the driver (`modprobe nvidia`) and read the kernel log if it fails",
    ),
    (
        "libnvidia-ml.so.1: cannot open",
        "nvml_library_not_found",
        "the toolkit's hook cannot load NVML: the driver's userspace is not installed",
        "install the NVIDIA driver in the VM image",
    ),
    (
        "unsatisfied condition: cuda>=",
        "cuda_driver_too_old",
        "the image requires a newer CUDA than the driver supports",
        "install a newer NVIDIA driver, or use an image built for the driver's CUDA version",
    ),
    (
        "unresolvable CDI devices",
        "cdi_spec_missing",
        "the engine asked for CDI devices that no CDI spec describes",
        "`nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml` (nvidia-cdi-refresh does "
        "this at boot), then retry",
    ),
    (
        "invoking the NVIDIA Container Runtime Hook directly",
        "toolkit_cdi_mode",
        "the toolkit runs in CDI mode, where the legacy hook behind DeviceRequests refuses",
        'set `mode = "legacy"` (or "auto") under [nvidia-container-runtime] in '
        "/etc/nvidia-container-runtime/config.toml, or request GPUs through CDI",
    ),
    (
        "Failed to initialize NVML: Insufficient Permissions",
        "nvml_no_permission",
        "NVML inside the container was refused (SELinux labels)",
        "run containers with `label=disable` or fix the SELinux policy",
    ),
    (
        "executable file not found",
        "container_tool_missing",
        "the probe command is not in the container: the toolkit did not inject its utilities "
        "or the image lacks the interpreter",
        "check NVIDIA_DRIVER_CAPABILITIES includes utility; use an image with python",
    ),
)


@dataclass(frozen=True)
class ProbeRun:
    """One probe container's end: it exited (code, output), or the engine refused it."""

    exit_code: int | None  # None: the engine refused or the wait failed
    output: str
    problem: Problem | None = None


def device_request(uuids: tuple[str, ...] | None):
    """All GPUs (count -1) or exactly these UUIDs; the engine refuses both at once."""
    from docker.types import DeviceRequest

    if uuids is None:
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=list(uuids), capabilities=[["gpu"]])


def classify_engine_error(text: str, subject: str = "container") -> Problem:
    """The cause and fix behind an engine or toolkit-hook error message."""
    for pattern, name, cause, fix in _ENGINE_ERRORS:
        if pattern.lower() in text.lower():
            return Problem(name, subject, f"{cause}: {_short(text)}", fix)
    return Problem(
        "container_gpu_failed",
        subject,
        f"the GPU container failed: {_short(text)}",
        "read the message; `docker run --rm --gpus all <image> nvidia-smi` reproduces it",
    )


def run_probe(
    client, image: str, argv: list[str], uuids: tuple[str, ...] | None, *, wait_s: int = WAIT_S
) -> ProbeRun:
    """Run `argv` in `image` with the GPU request; always remove what was created."""
    from docker.errors import APIError, DockerException
    from requests.exceptions import RequestException

    run_id = uuid.uuid4().hex[:12]
    try:
        container = client.containers.create(
            image,
            entrypoint=argv[:1],
            command=argv[1:],
            name=f"fl-agent-validate-{run_id}",
            labels={LABEL: run_id},
            environment={"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
            device_requests=[device_request(uuids)],
            network_disabled=True,
        )
        container.start()
        status = container.wait(timeout=wait_s)
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        return ProbeRun(int(status.get("StatusCode", -1)), output[-LOG_LIMIT:])
    except APIError as exc:
        return ProbeRun(None, _short(exc.explanation or str(exc)), _engine_problem(exc))
    except (DockerException, RequestException) as exc:
        problem = Problem(
            "container_probe_failed",
            "container",
            f"the probe container did not finish within {wait_s}s or the engine failed: "
            f"{_short(str(exc))}",
            "check `systemctl status docker` and the engine's log",
        )
        return ProbeRun(None, str(exc)[:LOG_LIMIT], problem)
    finally:
        remove_probes(client, run_id)


def remove_probes(client, run_id: str | None = None) -> None:
    """Remove probe containers (this run's, or every one when run_id is None)."""
    from docker.errors import DockerException

    wanted = f"{LABEL}={run_id}" if run_id else LABEL
    try:
        for container in client.containers.list(all=True, filters={"label": wanted}):
            try:
                container.remove(force=True)
            except DockerException:
                continue
    except DockerException:
        return


def listed_uuids(nvidia_smi_l: str) -> tuple[str, ...]:
    """The GPU and MIG UUIDs in `nvidia-smi -L` output, in order."""
    return tuple(_UUID_IN_LIST.findall(nvidia_smi_l))


def image_cuda_requirement(env: list[str] | None) -> tuple[int, int] | None:
    """The `cuda>=X.Y` of the image's NVIDIA_REQUIRE_CUDA, which the toolkit enforces."""
    for item in env or ():
        key, _, value = item.partition("=")
        if key == "NVIDIA_REQUIRE_CUDA":
            match = _REQUIRE.search(value)
            return (int(match.group(1)), int(match.group(2))) if match else None
    return None


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


def _engine_problem(exc) -> Problem:
    if getattr(exc, "status_code", None) == 404 and "no such image" in str(exc).lower():
        return Problem("image_missing", "container", _short(str(exc)), "load the image locally")
    return classify_engine_error(exc.explanation or str(exc))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
