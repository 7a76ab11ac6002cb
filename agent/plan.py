"""The plan: GPU or CPU and why, the SuperNode container spec, and the actions that get there.

A pure function of its inputs: nothing here touches the system. `boot` observes the facts
(validation verdict, discovery, the image, host paths) and hands them over as plain values;
tests build them by hand. GPU or CPU is decided here and only here: the validation reports
what works, the engine falls back to the plan's CPU spec when it refuses the GPU request.

When the GPU path waits for an action (the toolkit install, the image pull) the plan runs that
action first and resumes the validation from the stage that waits (`Plan.resume_from`):
the GPU spec then runs when the resumed validation passes, else its CPU fallback.

`Plan.spec` is always the container that holds the GPUs (or would): the SuperNode, or with
FL_ISOLATION=process its ClientApp SuperExec (`flower-superexec`, the same image, so the same
Flower version: the same-major.minor rule of 1.30 on holds by construction). The SuperNode of
such a pair is `Plan.companion`: no GPUs, converged first; `companion_fallback` is the same
SuperNode with the CPU facts in its node config, for when the SuperExec falls back to CPU.
The pair's mode is the SuperExec's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from agent import __version__, flower, nodefacts
from agent.config import Config
from agent.container_resources import ContainerResources, container_resources
from agent.errors import Problem
from agent.instance import SUPERNODE, Instance
from agent.outcome import BootState, Mode, Verdict, problem

CONTAINER_NAME = SUPERNODE
"""The SuperNode container of the appliance's single agent (agent/instance.py names others)."""
CONTAINER_USER = "49999:49999"
FALLBACK_HOME = "/home/flwr"
"""HOME for an image that names no user: a tmpfs owned by 49999, since the image's own HOME
(root's) is not writable by it."""
DATA_MOUNT = "/app/data"
CA_MOUNT = "/app/tls/ca.pem"
NODE_KEY_MOUNT = "/app/node-key"
"""The node key directory (agent/nodeauth.py) as the SuperNode sees it, read-only."""
NODE_KEY_FILE = "node.key"
SUPEREXEC_ENTRYPOINT = ("flower-superexec",)
RESTART_POLICY = "unless-stopped"
LABEL_MANAGED = "fl-agent.managed"
LABEL_HASH = "fl-agent.spec-hash"
LABEL_VERSION = "fl-agent.version"
LABEL_MODE = "fl-agent.mode"


@dataclass(frozen=True)
class GpuVerdict:
    """What the validation found, reduced to what the plan needs."""

    verdict: Verdict
    uuids: tuple[str, ...] = ()  # the GPUs (or MIG devices) to hand to the container
    request_all: bool = True  # FL_CUDA_VISIBLE_DEVICES=all: count -1, else device_ids
    problem: Problem | None = None  # why it FAILED
    failed_stage: str | None = None


@dataclass(frozen=True)
class ImageFacts:
    """The SuperNode image as the engine has it, read once per boot."""

    reference: str
    present: bool
    user: str | None = None  # Config.User ("" when the image names none); None when absent
    env: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict:
        return {"reference": self.reference, "present": self.present, "user": self.user}


class ActionKind(StrEnum):
    PULL_IMAGE = "pull_image"
    INSTALL_TOOLKIT = "install_toolkit"  # then the validation resumes from the toolkit stage
    WRITE_VALIDATION = "write_validation"  # the stage markers and validation.json
    WRITE_CA = "write_ca"
    PREPARE_DATA_DIR = "prepare_data_dir"  # created when absent; never chmod-ed otherwise
    DEV_CHAR_LINKS = "dev_char_links"  # /dev/char links of the NVIDIA nodes (boot, GPU present)
    NODE_KEY = "node_key"  # the node's key pair (created once, kept); its public key published
    REMOVE_CONTAINER = "remove_container"  # left from FL_ISOLATION=process or another FL_ROLE
    CONVERGE = "converge"  # the spec, with the CPU fallback when the engine refuses the GPU
    WRITE_PIN = "write_pin"  # the SuperLink identity learned at first use, once the node runs
    ENSURE_TLS = "ensure_tls"  # superlink role: its CA and server certificate (or the operator's)
    PREPARE_STATE_DIR = "prepare_state_dir"  # superlink role: its database and control dirs
    OPEN_FIREWALL = "open_firewall"  # superlink role: its Fleet API port in the image's firewall
    WAIT_SERVING = "wait_serving"  # superlink role: the fleet port answers before READY
    REGISTER_NODES = "register_nodes"  # superlink role: the service's SuperNode keys
    RECORD = "record"  # state file, appliance report, OneGate's terminal report


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str = ""  # the image, the path, the container

    def to_dict(self) -> dict[str, str]:
        return {"kind": str(self.kind), "target": self.target}


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
    mode: Mode  # GPU | CPU
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
    resources: ContainerResources | None = None  # shm and ulimits (agent/container_resources.py)
    entrypoint: tuple[str, ...] | None = None  # None: the image's own (flower-supernode)

    @property
    def spec_hash(self) -> str:
        data = asdict(self)
        for optional in ("resources", "entrypoint"):  # a spec without them hashes as before
            if data[optional] is None:
                del data[optional]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def labels(self) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_HASH: self.spec_hash,
            LABEL_VERSION: __version__,
            LABEL_MODE: str(self.mode),
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["spec_hash"] = self.spec_hash
        data["labels"] = self.labels
        data["environment"] = dict(self.environment)
        return data


@dataclass(frozen=True)
class Plan:
    """The decision: which spec to run, what to fall back to, and the actions, in order."""

    mode: Mode  # NONE: nothing can run
    reason: str
    degraded: bool
    spec: ContainerSpec | None
    fallback: ContainerSpec | None = None  # CPU spec, when a GPU start failure may fall back
    problems: tuple[Problem, ...] = field(default=())
    actions: tuple[Action, ...] = ()
    resume_from: str | None = None  # the validation stage that runs again after an action
    companion: ContainerSpec | None = None  # FL_ISOLATION=process: the SuperNode (no GPUs)
    companion_fallback: ContainerSpec | None = None  # that SuperNode once the SuperExec is CPU

    @classmethod
    def nothing(cls, problems: tuple[Problem, ...]) -> Plan:
        """No config to plan from: only the record is left to do."""
        reason = problems[0].message if problems else "no configuration"
        return cls(
            Mode.NONE, reason, False, None, problems=problems, actions=(Action(ActionKind.RECORD),)
        )

    @property
    def state(self) -> BootState:
        """The state the boot ends in when every action does what it should."""
        if self.spec is None:
            return BootState.FAILED
        return BootState.DEGRADED if self.degraded else BootState.RUNNING

    def has(self, kind: ActionKind) -> bool:
        return any(a.kind == kind for a in self.actions)

    def to_dict(self) -> dict:
        return {
            "mode": str(self.mode),
            "reason": self.reason,
            "degraded": self.degraded,
            "spec": self.spec.to_dict() if self.spec else None,
            "fallback": self.fallback.to_dict() if self.fallback else None,
            "problems": [p.to_dict() for p in self.problems],
            "actions": [a.to_dict() for a in self.actions],
            "resume_from": self.resume_from,
        } | self._companions()

    def _companions(self) -> dict:
        """Only for a pair: a plan without one reads as before."""
        if self.companion is None:
            return {}
        fallback = self.companion_fallback
        return {
            "companion": self.companion.to_dict(),
            "companion_fallback": fallback.to_dict() if fallback else None,
        }


@dataclass(frozen=True)
class Established:
    """What the last boot established, for a periodic re-convergence: no validation runs on
    GPUs in use, so the mode stays the last boot's unless a loss is confirmed."""

    mode: Mode  # GPU | CPU
    uuids: tuple[str, ...] = ()  # the GPUs the container was given (empty with request_all)
    request_all: bool = True
    problem: Problem | None = None  # why the last boot ran DEGRADED on CPU
    lost: tuple[str, ...] = ()  # GPUs confirmed lost since (the watch's record, host NVML)

    @property
    def gpu(self) -> GpuVerdict:
        """The verdict the re-convergence plans with, in place of a validation's."""
        if self.mode == Mode.GPU and not self.lost:
            return GpuVerdict(Verdict.PASSED, self.uuids, self.request_all)
        if self.mode == Mode.GPU:
            lost = problem("gpu_lost_confirmed", ";".join(self.lost))
            return GpuVerdict(Verdict.FAILED, problem=lost, failed_stage="nvml")
        if self.problem is not None:
            return GpuVerdict(Verdict.FAILED, problem=self.problem)
        return GpuVerdict(Verdict.CPU_ONLY)


@dataclass(frozen=True)
class PlanInputs:
    """Facts gathered before planning."""

    gpu: GpuVerdict
    superlink: str | None
    node_config: str | None
    data_dir_host: str
    image: ImageFacts
    ca_pem: str | None = None  # to write to ca_host_path
    ca_host_path: str | None = None
    data_dir_exists: bool = True
    pin_path: str | None = None  # where to pin the SuperLink's identity, when there is news
    validated: bool = False  # a validation report exists (FL_GPU_ENABLED is not NO)
    toolkit_tried: bool = False  # the toolkit install ran already: no second one
    blocking: tuple[Problem, ...] = ()  # what stops the node before any spec (discovery)
    memory_bytes: int | None = None  # the VM's MemTotal: sizes the GPU SuperNode's /dev/shm
    gpu_present: bool = False  # an NVIDIA GPU on the PCI bus (its /dev/char links are made)
    periodic: bool = False  # a re-convergence after boot: no toolkit repair, no /dev/char links
    established: Established | None = None  # set when periodic: the last boot's mode
    node_key_dir: str | None = None  # the node key directory under the root (SuperNode auth)
    node_facts: nodefacts.GpuNodeFacts | None = None  # None: FL_NODE_FACTS=NO
    instance: Instance = field(default_factory=Instance)  # container names, local API port
    leftover_superexec: bool = False  # a SuperExec of this agent exists (inspected by observe)
    other_role: tuple[str, ...] = ()  # the superlink role's container, left by an FL_ROLE change


def make_plan(config: Config, inputs: PlanInputs) -> Plan:
    """Decide GPU or CPU, build the container spec(s) and list the actions.

    A periodic re-convergence (`inputs.established`) plans with the last boot's mode in place of
    a validation's verdict; no periodic plan installs the toolkit (that restarts dockerd) nor
    makes the /dev/char links (the boot and the udev rule do).
    """
    if inputs.established is not None and config.wants_gpu:
        inputs = replace(inputs, gpu=inputs.established.gpu)
    validation = (Action(ActionKind.WRITE_VALIDATION),) if inputs.validated else ()
    record = (Action(ActionKind.RECORD),)
    blocking = inputs.blocking
    if not blocking and not inputs.superlink:
        none = "none configured and none discovered through OneGate"
        blocking = (problem("superlink_not_found", "FL_SUPERLINK_ADDRESS", none),)
    if blocking:
        return Plan(
            Mode.NONE,
            blocking[0].message,
            False,
            None,
            problems=blocking,
            actions=validation + record,
        )
    decided = _decide(config, inputs)
    resume = _resume_from(config, inputs)
    if resume is not None:
        gpu = _spec(config, inputs, True)
        fallback = None if config.gpu_required else _spec(config, inputs, False)
        why = f"GPU once the {resume} stage passes after the {_WAITS[resume]}"
        decided = Plan(Mode.GPU, why, False, gpu, fallback)
    decided = _paired(config, inputs, decided)
    return replace(
        decided,
        actions=_actions(config, inputs, decided, resume, validation) + record,
        resume_from=resume,
    )


def _paired(config: Config, inputs: PlanInputs, plan: Plan) -> Plan:
    """With FL_ISOLATION=process: the SuperNode companion of the SuperExec the plan runs."""
    if config.isolation != "process" or plan.spec is None:
        return plan
    gpu = plan.spec.mode == Mode.GPU
    fallback = _supernode(config, inputs, False, False) if gpu and plan.fallback else None
    companion = _supernode(config, inputs, gpu, False)
    return replace(plan, companion=companion, companion_fallback=fallback)


_WAITS = {"toolkit": "toolkit install", "container": "image pull"}


def _decide(config: Config, inputs: PlanInputs) -> Plan:
    cpu = _spec(config, inputs, gpu=False)
    verdict = inputs.gpu
    if verdict.verdict == Verdict.PASSED:
        fallback = None if config.gpu_required else cpu
        gpu = _spec(config, inputs, True)
        return Plan(Mode.GPU, "the GPU stack validated", False, gpu, fallback)
    if verdict.verdict == Verdict.CPU_ONLY:
        why = "FL_GPU_ENABLED=NO" if config.gpu_enabled == "NO" else "no NVIDIA GPU in this VM"
        return Plan(Mode.CPU, why, False, cpu)
    failed = verdict.problem or problem("gpu_validation_failed", "validation")
    if config.gpu_required:
        why = f"FL_GPU_REQUIRED=YES and {failed.message}"
        return Plan(Mode.NONE, why, False, None, problems=(failed,))
    why = f"GPU path failed, running on CPU: {failed.message}"
    return Plan(Mode.CPU, why, True, cpu, problems=(failed,))


def _resume_from(config: Config, inputs: PlanInputs) -> str | None:
    """The stage the validation resumes from after an action, when the GPU path waits."""
    verdict = inputs.gpu
    if verdict.verdict != Verdict.FAILED:
        return None
    if (
        verdict.failed_stage == "toolkit"
        and config.toolkit_install == "AUTO"
        and not inputs.toolkit_tried
        and not inputs.periodic
    ):
        return "toolkit"
    if verdict.failed_stage == "container" and not inputs.image.present:
        return "container"
    return None


def _actions(
    config: Config, inputs: PlanInputs, plan: Plan, resume: str | None, validation: tuple
) -> tuple[Action, ...]:
    if plan.spec is None:
        return validation
    actions = []
    if not inputs.image.present:
        actions.append(Action(ActionKind.PULL_IMAGE, config.supernode_image))
    if resume == "toolkit":
        actions.append(Action(ActionKind.INSTALL_TOOLKIT))
    actions += validation
    if config.tls_enabled and inputs.ca_pem and inputs.ca_host_path:
        actions.append(Action(ActionKind.WRITE_CA, inputs.ca_host_path))
    if not inputs.data_dir_exists:
        actions.append(Action(ActionKind.PREPARE_DATA_DIR, inputs.data_dir_host))
    if inputs.gpu_present and not inputs.periodic:
        actions.append(Action(ActionKind.DEV_CHAR_LINKS, "/dev/char"))
    if _uses_node_key(config, inputs):
        actions.append(Action(ActionKind.NODE_KEY, inputs.node_key_dir or ""))
    if inputs.leftover_superexec and plan.companion is None:
        actions.append(Action(ActionKind.REMOVE_CONTAINER, inputs.instance.superexec))
    actions += [Action(ActionKind.REMOVE_CONTAINER, name) for name in inputs.other_role]
    if plan.companion is not None:
        actions.append(Action(ActionKind.CONVERGE, plan.companion.name))
    actions.append(Action(ActionKind.CONVERGE, plan.spec.name))
    if inputs.pin_path:
        actions.append(Action(ActionKind.WRITE_PIN, inputs.pin_path))
    return tuple(actions)


def _uses_node_key(config: Config, inputs: PlanInputs) -> bool:
    return config.uses_node_key and bool(inputs.node_key_dir)


def _spec(config: Config, inputs: PlanInputs, gpu: bool) -> ContainerSpec:
    """The container that holds the GPUs (GPU spec) or would (its CPU fallback)."""
    if config.isolation != "process":
        return _supernode(config, inputs, gpu, True)
    command = flower.superexec_args(
        version=config.flower_version, runtime_address=inputs.instance.local_api_address
    )
    data = Bind(inputs.data_dir_host, DATA_MOUNT, "ro")
    return replace(
        _container(config, inputs, gpu, tuple(command), (data,)),
        name=inputs.instance.superexec,
        entrypoint=SUPEREXEC_ENTRYPOINT,
    )


def _supernode(config: Config, inputs: PlanInputs, gpu: bool, holds_gpu: bool) -> ContainerSpec:
    """The SuperNode: `gpu` is the node's mode (its node config facts), `holds_gpu` whether
    it is given the GPUs (not with FL_ISOLATION=process: its SuperExec is)."""
    binds = [Bind(inputs.data_dir_host, DATA_MOUNT, "ro")]
    ca = None
    if config.tls_enabled and inputs.ca_host_path:
        binds.append(Bind(inputs.ca_host_path, CA_MOUNT, "ro"))
        ca = CA_MOUNT
    key = None
    if _uses_node_key(config, inputs):
        binds.append(Bind(inputs.node_key_dir or "", NODE_KEY_MOUNT, "ro"))
        key = f"{NODE_KEY_MOUNT}/{NODE_KEY_FILE}"
    node_config = inputs.node_config
    if inputs.node_facts is not None:
        facts = nodefacts.node_config_facts(inputs.node_facts, gpu)
        node_config = nodefacts.merged_node_config(node_config, facts)
    command = flower.supernode_args(
        superlink=inputs.superlink or "",
        insecure=not config.tls_enabled,
        root_certificates=ca,
        isolation=config.isolation,
        node_config=node_config,
        max_retries=config.max_retries,
        max_wait_time=config.max_wait_time,
        version=config.flower_version,
        clientappio_address=inputs.instance.local_api_address,
        auth_private_key=key,
    )
    spec = _container(config, inputs, gpu and holds_gpu, tuple(command), tuple(binds))
    return replace(spec, name=inputs.instance.supernode)


def _container(
    config: Config, inputs: PlanInputs, gpu: bool, command: tuple[str, ...], binds: tuple
) -> ContainerSpec:
    """The hardened container of the node image, GPU or CPU: environment, user, resources."""
    env = {
        "FLWR_LOG_LEVEL": config.log_level,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FL_GPU_MODE": str(Mode.GPU if gpu else Mode.CPU),
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
    user = None if numeric_non_root(inputs.image.user) else CONTAINER_USER
    tmpfs: tuple[tuple[str, str], ...] = ()
    if user:
        env["HOME"] = FALLBACK_HOME
        tmpfs = ((FALLBACK_HOME, "uid=49999,gid=49999,mode=0700"),)
    use_all = gpu and (inputs.gpu.request_all or not inputs.gpu.uuids)
    return ContainerSpec(
        image=config.supernode_image,
        command=command,
        environment=tuple(sorted(env.items())),
        mode=Mode.GPU if gpu else Mode.CPU,
        runtime=None if gpu else "runc",
        gpu_count=-1 if use_all else None,
        gpu_device_ids=inputs.gpu.uuids if gpu and not use_all else (),
        binds=binds,
        user=user,
        resources=container_resources(inputs.memory_bytes) if gpu else None,
        tmpfs=tmpfs,
    )


def numeric_non_root(user: str | None) -> bool:
    """The image's user is a numeric, non-zero uid (and gid, when given): kept as it is.

    Anything else runs as 49999: a name may map to uid 0 in the image's /etc/passwd, and the
    runtime reads `0000`, `+0` or `root:root` as root too.
    """
    match = re.fullmatch(r"([0-9]{1,10})(?::([0-9]{1,10}))?", user or "")
    return match is not None and all(int(n) != 0 for n in match.groups() if n is not None)
