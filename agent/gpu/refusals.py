"""Why the engine refused a GPU container, and what to do: CPU, a repair and one retry, or raise.

The engine, runc and the NVIDIA toolkit refuse a GPU container at *start* with a text that
nests each layer's message (dockerd: "failed to create shim task: OCI runtime create failed:
runc create failed: ... error during container init: <runc>: <hook stderr>: unknown"). The
table matches the innermost, most specific wording first and the generic wrappers last.

runc words a failing OCI hook in two ways: up to 1.1 "error running hook #0: error running
hook: exit status 1, stdout: ..., stderr: ..." (libcontainer/configs/config.go); from 1.2
"error running prestart hook #0: exit status 1, stdout: ..., stderr: ..." (the hook's kind
named). Both mean the toolkit's hook refused: the GPU is not usable, the node may run on CPU.

Repairs, each tried once at boot:
- `restart_engine`: "could not select device driver" with capabilities [[gpu]]: dockerd
  registers its NVIDIA device driver only when it starts with nvidia-container-runtime-hook (or,
  from moby 29, nvidia-cdi-hook) on its PATH; an engine started before the toolkit was
  installed never has it.
- `regenerate_cdi_spec`: the CDI spec names devices or driver files that are gone (a driver
  update, a MIG change: nvidia-cdi-refresh regenerates on driver events, not MIG changes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import Problem
from agent.outcome import PROBLEMS

RESTART_ENGINE = "restart_engine"
REGENERATE_CDI_SPEC = "regenerate_cdi_spec"
CDI_SPEC = "/var/run/cdi/nvidia.yaml"
CDI_GENERATE = f"nvidia-ctk cdi generate --output={CDI_SPEC}"
TOOLKIT_MODE_FIX = (
    'set `mode = "legacy"` (or "auto") under [nvidia-container-runtime] in '
    "/etc/nvidia-container-runtime/config.toml: Docker's --gpus runs the legacy hook, which "
    "refuses every other mode"
)


@dataclass(frozen=True)
class RefusalClass:
    name: str  # the Problem name
    pattern: re.Pattern[str]
    cause: str
    fix: str
    repair: str | None = None  # RESTART_ENGINE | REGENERATE_CDI_SPEC | None (CPU or raise)


def _class(name: str, pattern: str, cause: str, fix: str, repair: str | None = None):
    return RefusalClass(name, re.compile(pattern, re.IGNORECASE), cause, fix, repair)


def _catalogued(name: str, pattern: str) -> RefusalClass:
    """A class whose cause and fix are agent/outcome.py's (one definition of each name)."""
    return _class(name, pattern, *PROBLEMS[name])


# Most specific first: the hook's own stderr, then the runtime's, then the engine's wrappers.
REFUSALS: tuple[RefusalClass, ...] = (
    _class(
        "cdi_spec_stale",
        r"unresolvable CDI devices",
        "the CDI spec does not list the requested devices: it predates a driver or MIG change "
        "(nvidia-cdi-refresh does not follow MIG changes) or was never generated",
        f"`{CDI_GENERATE}`, then start the container again",
        REGENERATE_CDI_SPEC,
    ),
    _class(
        "cdi_spec_stale",
        r"failed to fulfil mount request: open \S*(?:nvidia|cuda)\S*: no such file or directory",
        "the CDI spec names driver files of a previous driver version",
        f"`{CDI_GENERATE}`, then start the container again",
        REGENERATE_CDI_SPEC,
    ),
    _class(
        "toolkit_cdi_mode",
        r"invoking the NVIDIA Container Runtime Hook directly",
        "the toolkit's mode is not legacy (cdi, jit-cdi or csv): its hook refuses --gpus",
        TOOLKIT_MODE_FIX,
    ),
    _class(
        "cuda_requirement_unmet",
        r"requirement error: unsatisfied condition",
        "the image's NVIDIA_REQUIRE_CUDA is not met by this driver",
        "install a driver that meets the image's requirement, or use an image built for the "
        "driver's CUDA version (or set NVIDIA_DISABLE_REQUIRE=true if the image carries "
        "cuda-compat)",
    ),
    _class(
        "cuda_requirement_invalid",
        r"requirement error: invalid expression|failed to get version",
        "the image's NVIDIA_REQUIRE_* or CUDA_VERSION cannot be parsed by the toolkit",
        "fix the image's NVIDIA_REQUIRE_CUDA / CUDA_VERSION, or set NVIDIA_DISABLE_REQUIRE=true",
    ),
    _class(
        "nvml_library_not_found",
        r"load library failed: libnvidia-ml\.so\.1",
        "the toolkit's hook cannot load NVML: the driver's userspace is not installed",
        "install the NVIDIA driver in the VM image",
    ),
    _catalogued("gpu_driver_not_loaded", r"nvml error: driver not loaded"),
    _class(
        "engine_cdi_disabled",
        r'could not select device driver "cdi"',
        "the engine was asked for CDI devices but its CDI support is off",
        'enable CDI in /etc/docker/daemon.json (`"features": {"cdi": true}`) and restart '
        "docker, or request GPUs with --gpus",
    ),
    _class(
        "gpu_runtime_unavailable",
        r"could not select device driver",
        "the Docker engine has no NVIDIA device driver: it started before "
        "nvidia-container-runtime-hook was on its PATH (toolkit installed after dockerd)",
        "restart the engine once (`systemctl restart docker`): dockerd registers the driver "
        "only at start",
        RESTART_ENGINE,
    ),
    _catalogued(
        "toolkit_not_configured",
        r"unknown or invalid runtime name: nvidia|Unknown runtime specified nvidia",
    ),
    _class(
        "cdi_injection_failed",
        r"CDI device injection failed|failed to inject CDI devices",
        "the engine or the toolkit could not apply the CDI spec",
        f"check the spec (`nvidia-ctk cdi list`); regenerate it with `{CDI_GENERATE}`",
    ),
    _class(
        "gpu_hook_failed",
        r"error running (?:prestart |createRuntime |createContainer )?hook #\d+|"
        r"nvidia-container-cli: ",
        "the NVIDIA toolkit's OCI hook refused the container",
        "read the hook's message (stderr above); `nvidia-container-cli -k -d /dev/tty info` "
        "shows what it sees",
    ),
)


@dataclass(frozen=True)
class Refusal:
    """A GPU refusal: its class (with the repair, if any) and the Problem to report."""

    refusal_class: RefusalClass
    problem: Problem

    @property
    def repair(self) -> str | None:
        return self.refusal_class.repair


def classify_refusal(text: str, subject: str = "container") -> Refusal | None:
    """The class of an engine/runtime/hook refusal of a GPU request; None: not a GPU refusal."""
    for refusal_class in REFUSALS:
        if refusal_class.pattern.search(text):
            message = f"{refusal_class.cause}: {_short(text)}"
            problem = Problem(refusal_class.name, subject, message, refusal_class.fix)
            return Refusal(refusal_class, problem)
    return None


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def next_step(refusal: Refusal | None, *, at_boot: bool, repairs_done: frozenset[str]) -> str:
    """What the engine code does after a refused GPU start: "repair" (then start once more),
    "cpu" (fall back) or "raise" (not a GPU refusal).

    A repair runs once per boot: restarting dockerd only at boot (a periodic run must not stop
    the running containers of a healthy node), regenerating the CDI spec whenever needed.
    """
    if refusal is None:
        return "raise"
    repair = refusal.repair
    if repair is None or repair in repairs_done:
        return "cpu"
    if repair == RESTART_ENGINE and not at_boot:
        return "cpu"
    return "repair"
