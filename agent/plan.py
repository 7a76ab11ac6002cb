"""The plan: GPU or CPU and why, and the SuperNode container spec. A pure function of its inputs.

Nothing here touches the system. `boot` gathers the facts (validation verdict, discovery,
image user, host paths) and hands them over as plain values; tests build them by hand.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from agent import __version__, flower
from agent.config import Config
from agent.errors import Problem

CONTAINER_NAME = "flower-supernode"
CONTAINER_USER = "49999:49999"
FALLBACK_HOME = "/home/flwr"
"""HOME for an image that names no user: a tmpfs owned by 49999, since the image's own HOME
(root's) is not writable by it."""
DATA_MOUNT = "/app/data"
CA_MOUNT = "/app/tls/ca.pem"
RESTART_POLICY = "unless-stopped"
LABEL_MANAGED = "fl-agent.managed"
LABEL_HASH = "fl-agent.spec-hash"
LABEL_VERSION = "fl-agent.version"
LABEL_MODE = "fl-agent.mode"


@dataclass(frozen=True)
class GpuVerdict:
    """What the validation decided, reduced to what the plan needs."""

    verdict: str  # PASSED | FAILED | CPU_ONLY
    uuids: tuple[str, ...] = ()  # the GPUs (or MIG devices) to hand to the container
    request_all: bool = True  # FL_CUDA_VISIBLE_DEVICES=all: count -1, else device_ids
    problem: Problem | None = None  # why it FAILED


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    mode: str = "ro"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the container is created with. Its hash labels the container."""

    image: str
    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    mode: str  # GPU | CPU
    runtime: str | None  # None: the engine's default (GPU); "runc" forces CPU
    gpu_count: int | None = None  # -1 for all; None when device_ids or CPU
    gpu_device_ids: tuple[str, ...] = ()
    binds: tuple[Bind, ...] = ()
    user: str | None = None  # None: the image's own non-root user
    tmpfs: tuple[tuple[str, str], ...] = ()  # (path, mount options)
    name: str = CONTAINER_NAME
    cap_drop: tuple[str, ...] = ("ALL",)
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)
    restart_policy: str = RESTART_POLICY
    network_mode: str = "host"

    @property
    def spec_hash(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_HASH: self.spec_hash,
            LABEL_VERSION: __version__,
            LABEL_MODE: self.mode,
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["spec_hash"] = self.spec_hash
        data["labels"] = self.labels
        data["environment"] = dict(self.environment)
        return data


@dataclass(frozen=True)
class Plan:
    """The decision: which spec to run, and what to fall back to when the GPU start fails."""

    mode: str  # GPU | CPU | NONE (nothing can run)
    reason: str
    degraded: bool
    spec: ContainerSpec | None
    fallback: ContainerSpec | None = None  # CPU spec, when a GPU start failure may fall back
    problems: tuple[Problem, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "degraded": self.degraded,
            "spec": self.spec.to_dict() if self.spec else None,
            "fallback": self.fallback.to_dict() if self.fallback else None,
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass(frozen=True)
class PlanInputs:
    """Facts gathered before planning."""

    gpu: GpuVerdict
    superlink: str | None
    node_config: str | None
    data_dir_host: str
    ca_host_path: str | None = None
    image_user: str | None = None  # the image's Config.User


def make_plan(config: Config, inputs: PlanInputs) -> Plan:
    """Decide GPU or CPU and build the container spec(s)."""
    if not inputs.superlink:
        problem = Problem(
            "superlink_not_found",
            "FL_SUPERLINK_ADDRESS",
            "no SuperLink address: none configured and none discovered through OneGate",
            "set FL_SUPERLINK_ADDRESS=host:port, or deploy the node in a OneFlow service "
            "whose superlink role publishes FL_ENDPOINT",
        )
        return Plan("NONE", problem.message, False, None, problems=(problem,))
    cpu = _spec(config, inputs, gpu=False)
    verdict = inputs.gpu
    if verdict.verdict == "PASSED":
        fallback = None if config.gpu_required else cpu
        return Plan("GPU", "the GPU stack validated", False, _spec(config, inputs, True), fallback)
    if verdict.verdict == "CPU_ONLY":
        why = "FL_GPU_ENABLED=NO" if config.gpu_enabled == "NO" else "no NVIDIA GPU in this VM"
        return Plan("CPU", why, False, cpu)
    problem = verdict.problem or Problem("gpu_validation_failed", "validation", "GPU path failed")
    if config.gpu_required:
        return Plan(
            "NONE", f"FL_GPU_REQUIRED=YES and {problem.message}", False, None, problems=(problem,)
        )
    return Plan(
        "CPU", f"GPU path failed, running on CPU: {problem.message}", True, cpu, problems=(problem,)
    )


def _spec(config: Config, inputs: PlanInputs, gpu: bool) -> ContainerSpec:
    binds = [Bind(inputs.data_dir_host, DATA_MOUNT, "ro")]
    ca = None
    if config.tls_enabled and inputs.ca_host_path:
        binds.append(Bind(inputs.ca_host_path, CA_MOUNT, "ro"))
        ca = CA_MOUNT
    command = flower.supernode_args(
        superlink=inputs.superlink or "",
        insecure=not config.tls_enabled,
        root_certificates=ca,
        isolation=config.isolation,
        node_config=inputs.node_config,
        max_retries=config.max_retries,
        max_wait_time=config.max_wait_time,
        version=config.flower_version,
    )
    env = {
        "FLWR_LOG_LEVEL": config.log_level,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FL_GPU_MODE": "GPU" if gpu else "CPU",
    }
    if gpu:
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility"
        if inputs.gpu.uuids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(inputs.gpu.uuids)
        if config.gpu_memory_fraction is not None:
            env["FL_GPU_MEMORY_FRACTION"] = repr(config.gpu_memory_fraction)
    else:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
        env["CUDA_VISIBLE_DEVICES"] = ""
    user = None if numeric_non_root(inputs.image_user) else CONTAINER_USER
    tmpfs: tuple[tuple[str, str], ...] = ()
    if user:
        env["HOME"] = FALLBACK_HOME
        tmpfs = ((FALLBACK_HOME, "uid=49999,gid=49999,mode=0700"),)
    use_all = gpu and (inputs.gpu.request_all or not inputs.gpu.uuids)
    return ContainerSpec(
        image=config.supernode_image,
        command=tuple(command),
        environment=tuple(sorted(env.items())),
        mode="GPU" if gpu else "CPU",
        runtime=None if gpu else "runc",
        gpu_count=-1 if use_all else None,
        gpu_device_ids=inputs.gpu.uuids if gpu and not use_all else (),
        binds=tuple(binds),
        user=user,
        tmpfs=tmpfs,
    )


def numeric_non_root(user: str | None) -> bool:
    """The image's user is a numeric, non-zero uid (and gid, when given): kept as it is.

    Anything else runs as 49999: a name may map to uid 0 in the image's /etc/passwd, and the
    runtime reads `0000`, `+0` or `root:root` as root too.
    """
    match = re.fullmatch(r"([0-9]{1,10})(?::([0-9]{1,10}))?", user or "")
    return match is not None and all(int(n) != 0 for n in match.groups() if n is not None)
