"""How the NVIDIA Container Toolkit and Docker serve a `--gpus` request, per version: pure rules.

Mode resolution (nvidia-container-toolkit internal/info/auto.go, v1.14.0 to v1.18.x):
- the config's `mode` (default "auto") is used as written unless it is "auto";
- "auto": "cdi" when the container asks only for fully qualified CDI names
  (NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0); "csv" on Tegra boards; otherwise the caller's
  default: "legacy" up to 1.17; from 1.18 the nvidia *runtime* defaults to "jit-cdi" while the
  hook keeps "legacy";
- "jit-cdi" exists from 1.18; an older runtime refuses it ("invalid runtime mode").

Docker's `--gpus` (a DeviceRequest) never goes through the nvidia runtime: moby registers an
NVIDIA device driver when dockerd starts, only if `nvidia-container-runtime-hook` is on its
PATH (moby <= 28: daemon/nvidia_linux.go init(); moby 29: also `nvidia-cdi-hook`, which makes
the driver try CDI injection first, daemon/devices_nvidia_linux.go). The driver adds the hook as
an OCI prestart hook; the hook resolves the mode with "legacy" as its default and refuses every
other mode ("invoking the NVIDIA Container Runtime Hook directly ... is not supported").
So "configured for --gpus" means the hook was on dockerd's PATH when dockerd started;
`runtimes.nvidia` in daemon.json is needed only for `--runtime=nvidia`. The two timestamps that
decide it (the running dockerd's start, the hook file's change time) are read at the end.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from agent.paths import Root

LEGACY, CDI, JIT_CDI, CSV, AUTO = "legacy", "cdi", "jit-cdi", "csv", "auto"
MODES = (AUTO, LEGACY, CDI, JIT_CDI, CSV)
HOOK = "nvidia-container-runtime-hook"
CDI_HOOK = "nvidia-cdi-hook"
_VERSION = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True)
class ModeResolution:
    mode: str  # what the component runs in
    ok: bool  # the component accepts it (for the hook: it serves the request)
    reason: str


@dataclass(frozen=True)
class GpusPath:
    """How Docker serves `--gpus` on this machine."""

    registered: bool  # dockerd has an NVIDIA device driver
    injection: str | None  # "hook" (the toolkit's prestart hook) | "cdi-then-hook" | None
    hook: ModeResolution | None  # the hook's verdict, when the hook is in the path
    ok: bool
    reason: str
    restart_engine: bool = False  # the hook is there now but dockerd started without it


def series(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a toolkit version such as "1.17.8" or "1.18.0-1"."""
    match = _VERSION.search(version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def resolve_mode(
    configured: str | None,
    toolkit_version: str | None,
    *,
    component: str = "runtime",
    platform: str = "nvml",
    only_cdi_devices: bool = False,
) -> ModeResolution:
    """The mode the toolkit's `component` ("runtime" or "hook") resolves for one container.

    platform: "nvml" (a discrete GPU with NVML, also WSL) or "tegra".
    """
    requested = (configured or AUTO).strip()
    version = series(toolkit_version)
    if requested != AUTO:
        mode, how = requested, f"mode = {requested!r} in config.toml"
    elif only_cdi_devices:
        mode, how = CDI, "auto: the container asks only for CDI device names"
    elif platform == "tegra":
        mode, how = CSV, "auto: Tegra platform"
    elif component == "runtime" and version is not None and version >= (1, 18):
        mode, how = JIT_CDI, "auto: the 1.18+ runtime defaults to jit-cdi"
    else:
        mode, how = LEGACY, "auto: legacy"
    if mode not in MODES[1:]:
        return ModeResolution(mode, False, f"{how}: not a toolkit mode")
    if mode == JIT_CDI and version is not None and version < (1, 18):
        return ModeResolution(mode, False, f"{how}: jit-cdi needs toolkit 1.18 or newer")
    if component == "hook" and mode != LEGACY:
        return ModeResolution(
            mode, False, f"{how}: the hook (Docker --gpus) runs only in legacy mode and refuses"
        )
    return ModeResolution(mode, True, how)


def gpus_path(
    *,
    hook_on_path: bool,
    hook_at_engine_start: bool,
    cdi_hook_at_engine_start: bool = False,
    moby_major: int | None = None,
    configured_mode: str | None = None,
    toolkit_version: str | None = None,
    skip_mode_detection: bool = False,
) -> GpusPath:
    """What `docker run --gpus` does here.

    hook_on_path: nvidia-container-runtime-hook is on dockerd's PATH now;
    hook_at_engine_start: it was there when the running dockerd started (see started_before);
    skip_mode_detection: `skip-mode-detection = true` under [nvidia-container-runtime-hook].
    """
    cdi_first = cdi_hook_at_engine_start and (moby_major or 0) >= 29
    if not hook_at_engine_start and not cdi_first:
        if hook_on_path:
            return GpusPath(
                False,
                None,
                None,
                False,
                f"{HOOK} is installed but dockerd started before it: no NVIDIA device driver "
                "until dockerd restarts",
                restart_engine=True,
            )
        return GpusPath(False, None, None, False, f"{HOOK} is not on dockerd's PATH")
    hook = resolve_mode(configured_mode, toolkit_version, component="hook")
    if skip_mode_detection:
        hook = ModeResolution(hook.mode, True, "skip-mode-detection: the hook does not check")
    if cdi_first:
        reason = "moby 29 with nvidia-cdi-hook: CDI injection first, the hook if that fails"
        return GpusPath(True, "cdi-then-hook", hook, True, reason)
    return GpusPath(True, "hook", hook, hook.ok, hook.reason)


def started_before(engine_started_at: float | None, installed_at: float | None) -> bool:
    """The engine started after the file appeared (both as epoch seconds); unknown -> True.

    The hook binary's change time is when the package put it there; a dockerd whose process
    started earlier has not looked it up.
    """
    if engine_started_at is None or installed_at is None:
        return True
    return installed_at <= engine_started_at


def process_started_at(root: Root, pid: int) -> float | None:
    """A process's start as epoch seconds: /proc/<pid>/stat field 22 (clock ticks after boot)
    plus /proc/stat's btime."""
    try:
        stat = root.proc.joinpath(str(pid), "stat").read_text()
        boot = next(
            int(line.split()[1])
            for line in root.proc.joinpath("stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat.rpartition(")")[2].split()  # after "(comm)", which may hold spaces
    try:
        ticks = int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def installed_at(root: Root, path: str | None) -> float | None:
    """When a file under the root was put in place (its change time), or None."""
    if not path:
        return None
    try:
        return root.path(path).stat().st_ctime
    except OSError:
        return None
