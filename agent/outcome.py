"""States, exit codes, fixed value sets and the problem catalogue: one source for each.

A boot reports its progress through `BootState` (OneGate's FL_STATE, the state file, the
appliance report) and ends in one of `TERMINAL`; a node in `READY` may say READY=YES. Every
command maps its result onto `ExitCode`. The problem names below are a public contract: they
are FL_ERROR's class in OneGate and the `name` of a problem in the state file, so each one is
written here once, with its cause and its fix.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.errors import Problem


class BootState(StrEnum):
    BOOTING = "BOOTING"
    CONFIGURING = "CONFIGURING"
    VALIDATING = "VALIDATING"
    INSTALLING_TOOLKIT = "INSTALLING_TOOLKIT"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"


TERMINAL = frozenset({BootState.RUNNING, BootState.DEGRADED, BootState.FAILED})
READY = frozenset({BootState.RUNNING, BootState.DEGRADED})
"""The states in which a node may report READY=YES: its SuperNode container runs."""


class ExitCode(IntEnum):
    """One table of exit codes for every command (documented in the README)."""

    OK = 0  # RUNNING / valid / verdict as asked
    FAILED = 1  # FAILED, or a verdict other than what the config asks for
    INVALID = 2  # invalid context or configuration
    DEGRADED = 3  # running on CPU after a GPU failure
    NOT_BUILT = 4  # a command whose issue has not landed yet


def exit_code(state: BootState, *, invalid_config: bool = False) -> ExitCode:
    """The exit code of a boot that ends (or, dry, would end) in `state`."""
    if invalid_config:
        return ExitCode.INVALID
    return {BootState.RUNNING: ExitCode.OK, BootState.DEGRADED: ExitCode.DEGRADED}.get(
        state, ExitCode.FAILED
    )


class Verdict(StrEnum):
    """The GPU validation's verdict."""

    PASSED = "PASSED"
    FAILED = "FAILED"
    CPU_ONLY = "CPU_ONLY"


class Mode(StrEnum):
    """How the SuperNode runs (NONE: nothing runs)."""

    GPU = "GPU"
    CPU = "CPU"
    NONE = "NONE"


class StageStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


class ConvergeAction(StrEnum):
    """What converging did to the SuperNode container."""

    CREATED = "created"
    REPLACED = "replaced"
    STARTED = "started"
    UNCHANGED = "unchanged"


_DOCKER_FIX = "check `systemctl status docker` and /var/run/docker.sock"
PROBLEMS: dict[str, tuple[str, str]] = {
    # the boot
    "boot_in_progress": (
        "another fl-agent boot holds the lock",
        "wait for it to finish (systemctl status fl-agent)",
    ),
    "state_write_failed": (
        "could not write the agent's state",
        "free space or fix permissions under /var/lib/fl-agent; the node itself is unaffected",
    ),
    "run_dir_unwritable": (
        "/run/fl-agent cannot be written",
        "/run must be a writable tmpfs (check `findmnt /run`)",
    ),
    "data_dir_unusable": (
        "cannot prepare the data directory",
        "FL_DATA_DIR must be a directory on a writable file system",
    ),
    "superlink_not_found": (
        "no SuperLink address",
        "set FL_SUPERLINK_ADDRESS=host:port, or deploy the node in a OneFlow service "
        "whose superlink role publishes FL_ENDPOINT",
    ),
    "ca_write_failed": (
        "the SuperLink's CA certificate could not be written for the container",
        "check /etc/fl-agent/tls: a writable directory with free space",
    ),
    "gpu_validation_failed": (
        "the GPU path failed",
        "run `fl-agent validate` for the failing stage",
    ),
    "validation_error": ("a validation stage crashed", "report a bug"),
    "flower_version_unpaired": (
        "no image of the Flower version the SuperLink runs",
        "set FLOWER_VERSION (and FL_SUPERNODE_IMAGE), or load a fl-agent/supernode image of the "
        "SuperLink's major.minor",
    ),
    "flower_version_mismatch": (
        "the SuperNode's Flower major.minor differs from the one its SuperLink publishes",
        "set FLOWER_VERSION to the SuperLink's major.minor, or unset it to pair automatically",
    ),
    "superlink_version_invalid": (
        "the SuperLink VM publishes an FL_VERSION that is not X.Y.Z: ignored",
        "check the SuperLink VM (its agent publishes X.Y.Z); the node runs its own version",
    ),
    "node_key_failed": (
        "the node's authentication key could not be created or read",
        "check /var/lib/fl-agent/node-key (a writable directory with free space)",
    ),
    "node_auth_rejected": (
        "the SuperLink refused this SuperNode: its public key is not registered",
        "in a OneFlow service the SuperLink registers its SuperNode role's keys (published as "
        "FL_NODE_PUBLIC_KEY) and the node joins on its own once registered; outside a service "
        "register the key in /var/lib/fl-agent/node-key/node.pub with `flwr supernode register`",
    ),
    # the watch (each retried at its next tick)
    "nvml_unreadable": (
        "NVML could not be read",
        "check the driver: `nvidia-smi` on the VM; the watch retries",
    ),
    "nvml_events_failed": (
        "waiting on NVML events failed",
        "check the driver: `nvidia-smi` on the VM; the watch opens the event set again",
    ),
    "supernode_log_unreadable": (
        "the SuperNode container's log could not be read",
        "check `docker ps -a` and `systemctl status docker`; the watch retries",
    ),
    "gpu_access_unchecked": (
        "the SuperNode container's GPU access could not be checked or repaired",
        "check `docker exec flower-supernode nvidia-smi -L`; the watch retries",
    ),
    "onegate_unavailable": (
        "the watch cannot report to OneGate",
        "check the context (ONEGATE_ENDPOINT, VMID, TOKEN=YES); the watch retries",
    ),
    "onegate_report_failed": (
        "a watch report to OneGate failed",
        "see the OneGate problem in the log; the watch sends it again",
    ),
    "watch_tick_failed": (
        "one observation of the watch failed",
        "report a bug with `journalctl -u fl-agent-watch`; the watch carries on",
    ),
    "gpu_lost_confirmed": (
        "a GPU the SuperNode was given is lost: NVML reports it lost or gone",
        "reboot the VM (a passthrough GPU is reset by a VM reboot, which validates it again); "
        "if it stays lost, the host's GPU needs service",
    ),
    # the superlink role
    "superlink_tls_failed": (
        "the SuperLink's CA or server certificate could not be written",
        "check /var/lib/fl-agent/tls: a writable directory with free space",
    ),
    "superlink_files_failed": (
        "the SuperLink's state or control directory could not be prepared",
        "check /var/lib/fl-agent: a writable file system with free space",
    ),
    "container_remove_failed": (
        "a container the agent no longer runs (an earlier FL_ISOLATION or FL_ROLE) could not be "
        "removed",
        "remove it with `docker rm -f <name>`; the next boot tries again",
    ),
    "firewall_not_opened": (
        "the SuperLink's Fleet API port could not be opened in the appliance's firewall",
        "check `nft list table inet fl_agent` and /etc/fl-agent/firewall.d/superlink.nft; "
        "`systemctl reload fl-agent-firewall` loads the drop-in",
    ),
    "superlink_not_serving": (
        "the SuperLink container runs but its Fleet or Control API port does not answer",
        "see `docker logs flower-superlink`; check that no other process holds the port",
    ),
    "node_registration_failed": (
        "a SuperNode key could not be registered or unregistered with the SuperLink",
        "see `docker logs flower-superlink`; the watch tries again at its next tick",
    ),
    "node_key_refused": (
        "a VM of the service's supernode role published a key that is not registered",
        "FL_NODE_PUBLIC_KEY must be the OpenSSH line of an EC (NIST curve) public key, as "
        "the SuperNode's agent publishes it",
    ),
    # the engine
    "docker_unavailable": ("the Docker engine does not answer", _DOCKER_FIX),
    "image_pull_failed": (
        "the image is not local and could not be pulled",
        "pre-load the image in the appliance or make the registry reachable; check "
        "FL_SUPERNODE_IMAGE",
    ),
    "supernode_image_missing": (
        "the SuperNode image is not present in the local engine",
        "pull the image (or load it from the appliance image), or set FL_SUPERNODE_IMAGE to "
        "an image that is present",
    ),
    "container_start_failed": (
        "the engine refused to create or start the container",
        "check the image and its arguments",
    ),
    "gpu_start_failed": (
        "the engine refused the GPU request",
        "run `fl-agent validate` for the failing stage; install the NVIDIA Container Toolkit "
        "and restart Docker",
    ),
    "supernode_crash_loop": (
        "the container did not stay up",
        "see the last log lines in `fl-agent status`; check the image and FLOWER_VERSION "
        "against the SuperLink",
    ),
    "version_mismatch": (
        "the SuperNode and the SuperLink disagree on the Flower version",
        "set FLOWER_VERSION (and the image) to the SuperLink's major.minor",
    ),
    "container_probe_failed": (
        "the probe container did not finish in time or the engine failed",
        "check `systemctl status docker` and the engine's log",
    ),
    # the GPU stack: names the validation and the toolkit share; the engine's refusals of a
    # GPU container are classified by agent/gpu/refusals.py, the probes' other answers here
    "toolkit_not_configured": (
        "Docker does not know the nvidia runtime",
        "`nvidia-ctk runtime configure --runtime=docker` and `systemctl restart docker`",
    ),
    "gpu_driver_not_loaded": (
        "the NVIDIA kernel module is not loaded",
        "`modprobe nvidia` and read the kernel log: 'Key was rejected by service' means Secure "
        "Boot refuses the module (enrol its MOK key or disable Secure Boot); no module for "
        "`uname -r` means DKMS did not build it (install the kernel headers, `dkms autoinstall`)",
    ),
    "cuda_driver_too_old": (
        "the image requires a newer CUDA than the driver supports",
        "install a newer NVIDIA driver, or use an image built for the driver's CUDA version",
    ),
    "nvml_no_permission": (
        "NVML inside the container was refused (SELinux labels)",
        "run containers with `label=disable` or fix the SELinux policy",
    ),
    "container_tool_missing": (
        "the probe command is not in the container: the toolkit did not inject its utilities "
        "or the image lacks the interpreter",
        "check NVIDIA_DRIVER_CAPABILITIES includes utility; use an image with python",
    ),
    "container_gpu_failed": (
        "the GPU container failed",
        "read the message; `docker run --rm --gpus all <image> nvidia-smi` reproduces it",
    ),
}


def problem(name: str, subject: str, detail: str = "", *, fix: str | None = None) -> Problem:
    """The catalogue's problem `name` about `subject`: its cause, then `detail` when given."""
    from agent.errors import Problem  # dataclasses: not for the CLI's start

    cause, default_fix = PROBLEMS[name]
    message = f"{cause}: {detail}" if detail else cause
    return Problem(name, subject, message, default_fix if fix is None else fix)
