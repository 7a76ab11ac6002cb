"""Bringing the SuperNode container to the planned spec on the Docker engine (docker SDK).

Lifecycle owner: Docker's restart policy (`unless-stopped`), and nothing else. The agent runs
once per boot and converges; it never runs `docker start -a` under a systemd unit. The peer
appliance had both a unit and a policy, which fought after a SuperLink restart and left the node
dead. The SuperNode exits with code 0 when its SuperLink restarts: `unless-stopped` brings back
any exit the agent did not ask for (`on-failure` would not), and survives an engine restart.
No systemd daemon-reload is ever triggered here: running GPU containers lose their GPU on a
reload under the systemd cgroup driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import log
from agent.errors import AgentError, Problem
from agent.plan import LABEL_HASH, ContainerSpec

GPU_START_ERRORS = (
    "could not select device driver",
    "nvidia-container-cli",
    "unknown or invalid runtime name: nvidia",
    "error running hook",
)
VERSION_MISMATCH_LINES = (
    "runtime version mismatch",
    "Federation does not exist",
    "unrecognized arguments",
)


@dataclass(frozen=True)
class ConvergeResult:
    action: str  # created | replaced | started | unchanged
    container_id: str | None
    spec: ContainerSpec | None  # the spec that runs (the fallback after a GPU start failure)
    gpu_start_error: str | None = None
    problems: tuple[Problem, ...] = field(default=())
    log_tail: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.container_id is not None and not self.problems

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "container_id": self.container_id,
            "mode": self.spec.mode if self.spec else None,
            "spec_hash": self.spec.spec_hash if self.spec else None,
            "gpu_start_error": self.gpu_start_error,
            "problems": [p.to_dict() for p in self.problems],
            "log_tail": list(self.log_tail),
        }


def connect(*, timeout_s: float = 60.0, sleep: Callable[[float], None] = time.sleep):
    """A docker client once the engine answers; bounded exponential backoff."""
    import docker
    from docker.errors import DockerException

    deadline = time.monotonic() + timeout_s
    delay = 0.25
    last = ""
    while True:
        try:
            # from_env asks the engine for its API version: that round trip is the check
            return docker.from_env(timeout=60)
        except DockerException as exc:
            last = str(exc)
        if time.monotonic() + delay > deadline:
            raise AgentError(
                Problem(
                    "docker_unavailable",
                    "docker",
                    f"the Docker engine did not answer within {timeout_s:.0f} s: {last[:200]}",
                    "check `systemctl status docker` and /var/run/docker.sock",
                )
            )
        log.get("supernode").info("waiting for the docker engine", retry_in_s=delay)
        sleep(delay)
        delay = min(delay * 2, 5.0)


def image_user(client, image: str) -> str | None:
    """The image's configured user (Config.User), None when the image is absent."""
    from docker.errors import ImageNotFound

    try:
        return client.images.get(image).attrs.get("Config", {}).get("User") or ""
    except ImageNotFound:
        return None


def ensure_image(client, image: str, *, attempts: int = 3, sleep=time.sleep) -> Problem | None:
    """Use the image when it is local, else pull it with progress in the logs."""
    from docker.errors import APIError, ImageNotFound

    try:
        client.images.get(image)
        return None
    except ImageNotFound:
        pass
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    logger = log.get("supernode")
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            for chunk in client.api.pull(repo, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise APIError(chunk.get("errorDetail", {}).get("message", chunk["error"]))
                if chunk.get("status") and "progressDetail" not in chunk:
                    logger.info("pull", image=image, status=chunk["status"])
            return None
        except APIError as exc:
            error = str(getattr(exc, "explanation", None) or exc)
            logger.warning("pull failed", image=image, attempt=attempt, error=error[:200])
            if attempt < attempts:
                sleep(2.0 * attempt)
    return Problem(
        "image_pull_failed",
        image,
        f"the image is not local and could not be pulled: {error[:300]}",
        "pre-load the image in the appliance or make the registry "
        "reachable; check FL_SUPERNODE_IMAGE",
    )


def create_kwargs(spec: ContainerSpec) -> dict:
    """The docker SDK arguments for the spec (device request: count -1 XOR device_ids)."""
    from docker.types import DeviceRequest

    kwargs: dict = {
        "image": spec.image,
        "command": list(spec.command),
        "name": spec.name,
        "environment": dict(spec.environment),
        "labels": spec.labels,
        "cap_drop": list(spec.cap_drop),
        "security_opt": list(spec.security_opt),
        "restart_policy": {"Name": spec.restart_policy},
        "network_mode": spec.network_mode,
        "volumes": {b.source: {"bind": b.target, "mode": b.mode} for b in spec.binds},
        "privileged": False,
        "detach": True,
    }
    if spec.user:
        kwargs["user"] = spec.user
    if spec.tmpfs:
        kwargs["tmpfs"] = dict(spec.tmpfs)
    if spec.runtime:
        kwargs["runtime"] = spec.runtime
    if spec.mode == "GPU":
        request = (
            DeviceRequest(count=-1, capabilities=[["gpu"]])
            if spec.gpu_count == -1
            else DeviceRequest(device_ids=list(spec.gpu_device_ids), capabilities=[["gpu"]])
        )
        kwargs["device_requests"] = [request]
    return kwargs


def converge(
    client,
    spec: ContainerSpec,
    *,
    fallback: ContainerSpec | None = None,
    stability_s: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ConvergeResult:
    """Absent: create. Same hash and running: nothing. Stopped: start. Other hash: replace."""
    from docker.errors import NotFound

    try:
        existing = client.containers.get(spec.name)
    except NotFound:
        existing = None
    if existing is not None and existing.labels.get(LABEL_HASH) == spec.spec_hash:
        if existing.status == "running":
            return ConvergeResult("unchanged", existing.id, spec)
        existing.start()
        return _settle(client, existing, spec, "started", stability_s, sleep)
    action = "created"
    if existing is not None:
        existing.remove(force=True)
        action = "replaced"
    return _create_and_start(client, spec, fallback, action, stability_s, sleep)


def _create_and_start(client, spec, fallback, action, stability_s, sleep) -> ConvergeResult:
    from docker.errors import APIError

    container = client.containers.create(**create_kwargs(spec))
    try:
        container.start()
    except APIError as exc:
        message = str(getattr(exc, "explanation", None) or exc)
        container.remove(force=True)
        if spec.mode != "GPU" or not _is_gpu_error(message):
            raise
        log.get("supernode").warning("GPU start failed", error=message[:300])
        if fallback is None:
            return ConvergeResult(action, None, spec, message, (_gpu_problem(message),))
        result = _create_and_start(client, fallback, None, action, stability_s, sleep)
        return ConvergeResult(
            result.action,
            result.container_id,
            result.spec,
            message,
            result.problems,
            result.log_tail,
        )
    return _settle(client, container, spec, action, stability_s, sleep)


def _is_gpu_error(message: str) -> bool:
    return any(marker in message for marker in GPU_START_ERRORS)


def _gpu_problem(message: str) -> Problem:
    return Problem(
        "gpu_start_failed",
        "flower-supernode",
        f"the engine refused the GPU request: {message[:300]}",
        "run `fl-agent validate` for the failing stage; install "
        "the NVIDIA Container Toolkit and restart Docker",
    )


def _settle(client, container, spec, action, stability_s, sleep) -> ConvergeResult:
    """Running, and still running with no restart after the stability window: else a crash loop."""
    container.reload()
    restarts = container.attrs.get("RestartCount", 0)
    sleep(stability_s)
    container.reload()
    state = container.attrs.get("State", {})
    if (
        state.get("Running")
        and not state.get("Restarting")
        and container.attrs.get("RestartCount", 0) == restarts
    ):
        return ConvergeResult(action, container.id, spec)
    tail = tuple(container.logs(tail=20).decode(errors="replace").splitlines())
    container.stop(timeout=5)
    name = (
        "version_mismatch"
        if any(m in line for line in tail for m in VERSION_MISMATCH_LINES)
        else "supernode_crash_loop"
    )
    problem = Problem(
        name,
        spec.name,
        f"the container did not stay up (exit code "
        f"{state.get('ExitCode')}, restarts {container.attrs.get('RestartCount')})",
        "see the last log lines in `fl-agent status`; check the image and "
        "FLOWER_VERSION against the SuperLink",
    )
    return ConvergeResult(action, None, spec, problems=(problem,), log_tail=tail)
