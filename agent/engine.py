"""Every Docker Engine API call the agent makes, and the one classifier of its errors.

The agent speaks the Engine API itself: HTTP/1.1 over the engine's socket, one connection per
request (`Connection: close`). The docker SDK costs ~95 ms of imports (requests, urllib3, ...)
per boot, more than a converged boot's whole work, and `http.client` another ~25 ms (email,
ssl) for the few lines of HTTP a local socket needs. Paths carry no version prefix, so the
engine answers in its own API version (`docker version` shows it); the request bodies use
fields every engine since API 1.40 (Docker 19.03, DeviceRequests) accepts.

Lifecycle owner of the SuperNode: Docker's restart policy (`unless-stopped`), and nothing else.
The agent runs once per boot and converges; it never runs `docker start -a` under a systemd
unit (a unit and a policy fight after a SuperLink restart and leave the node dead). The
SuperNode exits with code 0 when its SuperLink restarts: `unless-stopped` brings back any exit
the agent did not ask for (`on-failure` would not), and survives an engine restart. No systemd
daemon-reload is ever triggered here: running GPU containers lose their GPU on a reload under
the systemd cgroup driver.

Probe containers (the validation's container and framework stages) are always removed: the
engine raises a GPU refusal at *start*, after create succeeded, which would otherwise leave a
container in state `created` behind.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from agent import log
from agent.command import Runner, run_command
from agent.container_resources import RLIMIT_REFUSED
from agent.errors import AgentError, Problem
from agent.gpu.refusals import (
    CDI_GENERATE,
    REGENERATE_CDI_SPEC,
    RESTART_ENGINE,
    Refusal,
    classify_refusal,
    next_step,
)
from agent.outcome import ConvergeAction, Mode, problem
from agent.plan import LABEL_HASH, ContainerSpec, ImageFacts
from agent.supernode_status import SupernodeStatus, classify

DEFAULT_HOST = "unix:///var/run/docker.sock"
REPAIR_TIMEOUT_S = 120
REPAIR_COMMANDS = {
    RESTART_ENGINE: ["systemctl", "restart", "docker"],
    REGENERATE_CDI_SPEC: CDI_GENERATE.split(),
}
PROBE_LABEL = "fl-agent.validation"
PROBE_WAIT_S = 120
LOG_LIMIT = 4000
LOG_TAIL_LINES = 50
VERSION_MISMATCH_LINES = (
    "runtime version mismatch",
    "Federation does not exist",
    "unrecognized arguments",
)
# What a probe's own output may say beyond a GPU refusal (agent/gpu/refusals.py has those).
_PROBE_ERRORS: tuple[tuple[str, str], ...] = (
    ("Failed to initialize NVML: Insufficient Permissions", "nvml_no_permission"),
    ("executable file not found", "container_tool_missing"),
)


class ErrorKind(StrEnum):
    ENGINE_GONE = "engine_gone"  # no answer: not running, restarting, or it went away
    IMAGE_MISSING = "image_missing"
    GPU_REFUSED = "gpu_refused"  # the engine or the toolkit's hook refused the GPU request
    START_FAILED = "start_failed"  # the engine answered and refused (4xx, or a 5xx such as
    # an OCI runtime error at start)


class EngineError(Exception):
    """An Engine API call that failed; `status` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def kind(self) -> ErrorKind:
        text = self.message.lower()
        if self.status == 404 and "no such image" in text:
            return ErrorKind.IMAGE_MISSING
        if self.status is None:
            return ErrorKind.ENGINE_GONE
        from agent.gpu.refusals import classify_refusal

        if classify_refusal(self.message) is not None:
            return ErrorKind.GPU_REFUSED
        return ErrorKind.START_FAILED


def gpu_problem(text: str, subject: str = "container") -> Problem:
    """The cause and fix behind an engine, toolkit-hook or probe message about a GPU
    container: the GPU refusal classes of agent/gpu/refusals.py first."""
    from agent.gpu.refusals import classify_refusal

    refusal = classify_refusal(text, subject)
    if refusal is not None:
        return refusal.problem
    for pattern, name in _PROBE_ERRORS:
        if pattern.lower() in text.lower():
            return problem(name, subject, _short(text))
    return problem("container_gpu_failed", subject, _short(text))


class _Response:
    """One HTTP/1.1 response read off the socket: status, headers, then a body framed by
    Content-Length, by chunks, or by the end of the connection (the request says close)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")
        status = self._file.readline().split(None, 2)
        if len(status) < 2 or not status[1].isdigit():
            raise OSError(f"not an HTTP answer: {b' '.join(status)[:80]!r}")
        self.status = int(status[1])
        headers: dict[bytes, bytes] = {}
        while (line := self._file.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self._chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
        length = headers.get(b"content-length")
        self._length = int(length) if length and length.isdigit() else None

    def chunks(self) -> Iterator[bytes]:
        if not self._chunked:
            yield self._file.read() if self._length is None else self._file.read(self._length)
            return
        while size := int(self._file.readline().split(b";")[0].strip() or b"0", 16):
            yield self._file.read(size)
            self._file.readline()

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self) -> Iterator[bytes]:
        rest = b""
        for chunk in self.chunks():
            *whole, rest = (rest + chunk).split(b"\n")
            yield from whole
        if rest:
            yield rest


class Engine:
    """The Engine API at `host` (DOCKER_HOST's forms unix:///path and tcp://host:port)."""

    def __init__(self, host: str = DEFAULT_HOST, timeout_s: float = 60.0) -> None:
        scheme, _, rest = host.partition("://")
        if scheme == "unix" and rest:
            self._address: str | tuple[str, int] = rest
        elif scheme in ("tcp", "http") and rest.rpartition(":")[2].isdigit():
            name, _, port = rest.rstrip("/").rpartition(":")
            self._address = (name or "localhost", int(port))
        else:
            raise EngineError(f"DOCKER_HOST {host!r}: only unix:// and tcp:// are supported")
        self.host = host
        self.timeout_s = timeout_s

    @classmethod
    def from_env(cls, timeout_s: float = 60.0) -> Engine:
        return cls(os.environ.get("DOCKER_HOST") or DEFAULT_HOST, timeout_s)

    # --- transport

    def _connect(self, timeout: float) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self._address, str) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self._address)
        except OSError:
            sock.close()
            raise
        return sock

    @contextmanager
    def _open(self, method: str, path: str, *, query=None, body=None, timeout=None):
        data = json.dumps(body).encode() if body is not None else b""
        url = path + (
            "?" + "&".join(f"{k}={_q(str(v))}" for k, v in query.items()) if query else ""
        )
        head = (
            f"{method} {url} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        try:
            sock = self._connect(timeout or self.timeout_s)
        except OSError as exc:
            raise EngineError(f"no answer from {self.host}: {exc}") from None
        try:
            sock.sendall(head.encode() + data)
            response = _Response(sock)
            if response.status >= 400:
                raise EngineError(_message(response.read()), response.status)
            yield response
        except OSError as exc:
            raise EngineError(f"the engine at {self.host} went away: {exc}") from None
        except ValueError as exc:  # a malformed chunk size or status from a buggy engine
            raise EngineError(f"the engine at {self.host} answered garbage: {exc}") from None
        finally:
            sock.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        with self._open(method, path, **kwargs) as response:
            raw = response.read()
            # inside the response: malformed JSON is an EngineError like a malformed frame
            return json.loads(raw) if raw.lstrip()[:1] in (b"{", b"[") else None

    # --- calls

    def ping(self) -> None:
        self._call("GET", "/_ping", timeout=min(self.timeout_s, 5.0))

    def info(self) -> dict:
        return self._call("GET", "/info")

    def image(self, reference: str) -> ImageFacts:
        """The image's facts; `present=False` when the engine does not have it."""
        try:
            attrs = self._call("GET", f"/images/{_q(reference)}/json") or {}
        except EngineError as exc:
            if exc.status == 404:
                return ImageFacts(reference, False)
            raise
        config = attrs.get("Config") or {}
        labels = config.get("Labels") or {}
        return ImageFacts(
            reference,
            True,
            config.get("User") or "",
            tuple(config.get("Env") or ()),
            tuple(sorted(labels.items())),
        )

    def pull_stream(self, reference: str) -> Iterator[dict]:
        """The engine's progress messages while it pulls; EngineError on the first error."""
        from agent.config import parse_image_reference

        parsed = parse_image_reference(reference)
        if parsed is None:
            raise EngineError(f"{reference!r} is not an image reference", 400)
        query = {"fromImage": parsed.name, "tag": parsed.pull_tag}
        with self._open("POST", "/images/create", query=query, timeout=600) as response:
            for line in response.lines():
                if not line.strip():
                    continue
                chunk = json.loads(line)
                if "error" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    raise EngineError(detail.get("message") or chunk["error"], 500)
                yield chunk

    def inspect(self, name_or_id: str) -> dict | None:
        try:
            return self._call("GET", f"/containers/{_q(name_or_id)}/json")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, body: dict, name: str) -> str:
        return self._call("POST", "/containers/create", query={"name": name}, body=body)["Id"]

    def start(self, container_id: str) -> None:
        self._call("POST", f"/containers/{_q(container_id)}/start")

    def stop(self, container_id: str, timeout_s: int = 5) -> None:
        self._call(
            "POST",
            f"/containers/{_q(container_id)}/stop",
            query={"t": timeout_s},
            timeout=self.timeout_s + timeout_s,
        )

    def remove(self, container_id: str) -> None:
        try:
            self._call("DELETE", f"/containers/{_q(container_id)}", query={"force": 1})
        except EngineError as exc:
            if exc.status != 404:
                raise

    def wait(self, container_id: str, timeout_s: float) -> int:
        result = self._call("POST", f"/containers/{_q(container_id)}/wait", timeout=timeout_s)
        return int((result or {}).get("StatusCode", -1))

    def restart(self, container_id: str, timeout_s: int = 10) -> None:
        """Stop (SIGTERM, SIGKILL after `timeout_s`) and start again: the engine builds the
        container's runtime spec anew, so the NVIDIA prestart hook runs again; same id, log."""
        self._call(
            "POST",
            f"/containers/{_q(container_id)}/restart",
            query={"t": timeout_s},
            timeout=self.timeout_s + timeout_s,
        )

    def exec(
        self, container_id: str, argv: list[str], *, timeout_s: float = 30.0
    ) -> tuple[int, str]:
        """Run `argv` in the running container; (exit code, stdout and stderr together)."""
        body = {"Cmd": argv, "AttachStdout": True, "AttachStderr": True, "Tty": False}
        exec_id = self._call("POST", f"/containers/{_q(container_id)}/exec", body=body)["Id"]
        start = {"Detach": False, "Tty": False}
        with self._open("POST", f"/exec/{exec_id}/start", body=start, timeout=timeout_s) as answer:
            output = _demultiplex(answer.read())
        code = (self._call("GET", f"/exec/{exec_id}/json") or {}).get("ExitCode")
        return (-1 if code is None else int(code)), output

    def logs(
        self,
        container_id: str,
        tail: int | None = None,
        *,
        since: str | None = None,
        timestamps: bool = False,
    ) -> str:
        """The container's log; `since`: from that instant on (Unix seconds, with nanoseconds
        after a dot; the engine keeps lines at that very instant); `timestamps`: each line
        starts with its RFC 3339 time and a space."""
        query: dict[str, Any] = {"stdout": 1, "stderr": 1}
        if tail is not None:
            query["tail"] = tail
        if since is not None:
            query["since"] = since
        if timestamps:
            query["timestamps"] = 1
        with self._open("GET", f"/containers/{_q(container_id)}/logs", query=query) as response:
            return _demultiplex(response.read())

    def image_tags(self, repository: str) -> tuple[str, ...]:
        """The tags of the local images of `repository` (`fl-agent/supernode`: 1.42.0, ...)."""
        query = {"filters": json.dumps({"reference": [repository]})}
        tags = []
        for image in self._call("GET", "/images/json", query=query) or ():
            for ref in (image.get("RepoTags") or ()) if isinstance(image, dict) else ():
                name, _, tag = str(ref).rpartition(":")
                if name == repository and tag:
                    tags.append(tag)
        return tuple(sorted(set(tags)))

    def containers(self, label: str) -> list[str]:
        """The ids of every container (running or not) with this label (`key` or `key=value`)."""
        query = {"all": 1, "filters": json.dumps({"label": [label]})}
        return [c["Id"] for c in self._call("GET", "/containers/json", query=query) or ()]


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@")


def _q(part: str) -> str:
    """Percent-encode what is not safe in a path or a query value."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in part.encode())


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("message") or raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace").strip()


def _demultiplex(raw: bytes) -> str:
    """A log stream of a container without a TTY: 8-byte frame headers (stream, size)."""
    out, pos = [], 0
    while pos + 8 <= len(raw) and raw[pos] in (0, 1, 2) and raw[pos + 1 : pos + 4] == b"\0\0\0":
        (size,) = struct.unpack(">I", raw[pos + 4 : pos + 8])
        out.append(raw[pos + 8 : pos + 8 + size])
        pos += 8 + size
    if pos < len(raw):  # a TTY container's raw stream
        out.append(raw[pos:])
    return b"".join(out).decode("utf-8", "replace")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- connecting


def connect(*, timeout_s: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> Engine:
    """The engine once it answers; bounded exponential backoff, else `docker_unavailable`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    while True:
        try:
            engine = Engine.from_env()
            engine.ping()
            return engine
        except EngineError as exc:
            last = exc.message
        if time.monotonic() + delay > deadline:
            raise AgentError(
                problem(
                    "docker_unavailable",
                    "docker",
                    f"no answer within {timeout_s:.0f} s: {_short(last, 200)}",
                )
            )
        log.get("engine").info("waiting for the docker engine", retry_in_s=delay)
        sleep(delay)
        delay = min(delay * 2, 5.0)


def wait_ready(engine: Engine, timeout_s: float, *, poll_s: float = 0.5) -> bool:
    """Whether the engine answers within `timeout_s` (after a restart)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            engine.ping()
            return True
        except EngineError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


# --- the image


def pull(engine: Engine, reference: str, *, attempts: int = 3, sleep=time.sleep) -> Problem | None:
    """Pull the image with progress in the logs; a problem when it cannot be had."""
    logger = log.get("engine")
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            for chunk in engine.pull_stream(reference):
                if chunk.get("status") and "progressDetail" not in chunk:
                    logger.info("pull", image=reference, status=chunk["status"])
            return None
        except EngineError as exc:
            error = exc.message
            logger.warning("pull failed", image=reference, attempt=attempt, error=error[:200])
            if attempt < attempts:
                sleep(2.0 * attempt)
    return problem("image_pull_failed", reference, _short(error))


def missing_image(reference: str) -> Problem:
    fix = (
        f"`docker pull {reference}` (or load it from the appliance image), or set "
        "FL_SUPERNODE_IMAGE to an image that is present"
    )
    return problem("supernode_image_missing", reference, fix=fix)


# --- the SuperNode container


@dataclass(frozen=True)
class ConvergeResult:
    action: ConvergeAction
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
            "action": str(self.action),
            "container_id": self.container_id,
            "mode": str(self.spec.mode) if self.spec else None,
            "spec_hash": self.spec.spec_hash if self.spec else None,
            "gpu_start_error": self.gpu_start_error,
            "problems": [p.to_dict() for p in self.problems],
            "log_tail": list(self.log_tail),
        }


def create_body(spec: ContainerSpec) -> dict:
    """The Engine API's create body for the spec (device request: count -1 XOR device ids)."""
    host: dict[str, Any] = {
        "Binds": [f"{b.source}:{b.target}:{b.mode}" for b in spec.binds],
        "CapDrop": list(spec.cap_drop),
        "SecurityOpt": list(spec.security_opt),
        "RestartPolicy": {"Name": spec.restart_policy, "MaximumRetryCount": 0},
        "NetworkMode": spec.network_mode,
        "Privileged": False,
    }
    if spec.tmpfs:
        host["Tmpfs"] = dict(spec.tmpfs)
    if spec.resources is not None:
        host.update(spec.resources.host_config())
    if spec.runtime:
        host["Runtime"] = spec.runtime
    if spec.mode == Mode.GPU:
        all_gpus = spec.gpu_count == -1
        host["DeviceRequests"] = [device_request(None if all_gpus else spec.gpu_device_ids)]
    body: dict[str, Any] = {
        "Image": spec.image,
        "Cmd": list(spec.command),
        "Env": [f"{k}={v}" for k, v in spec.environment],
        "Labels": spec.labels,
        "HostConfig": host,
    }
    if spec.user:
        body["User"] = spec.user
    if spec.entrypoint is not None:
        body["Entrypoint"] = list(spec.entrypoint)
    return body


def device_request(uuids: tuple[str, ...] | None) -> dict:
    """All GPUs (count -1) or exactly these UUIDs; the engine refuses both at once."""
    return {
        "Driver": "",
        "Count": -1 if uuids is None else 0,
        "DeviceIDs": list(uuids) if uuids is not None else [],
        "Capabilities": [["gpu"]],
        "Options": {},
    }


@dataclass
class GpuRepairs:
    """The repairs a refused GPU start may get (agent/gpu/refusals.py next_step): each once,
    the engine restart only at boot; `runner` runs their commands (agent/command.py)."""

    at_boot: bool = False
    runner: Runner = run_command
    done: set[str] = field(default_factory=set)

    def attempt(self, engine: Engine, refusal: Refusal | None) -> bool:
        """Run the repair the refusal calls for when next_step says so; True: start again."""
        step = next_step(refusal, at_boot=self.at_boot, repairs_done=frozenset(self.done))
        if step != "repair" or refusal is None or refusal.repair is None:
            return False
        self.done.add(refusal.repair)
        argv = REPAIR_COMMANDS[refusal.repair]
        result = self.runner(argv, timeout=REPAIR_TIMEOUT_S)
        log.get("engine").warning(
            "GPU start refused: repaired", repair=refusal.repair, rc=result.returncode
        )
        if refusal.repair == RESTART_ENGINE:
            return result.ok and wait_ready(engine, REPAIR_TIMEOUT_S)
        return result.ok


def converge(
    engine: Engine,
    spec: ContainerSpec,
    *,
    fallback: ContainerSpec | None = None,
    stability_s: float = 3.0,
    reconnect_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    repairs: GpuRepairs | None = None,
) -> ConvergeResult:
    """Bring the container to `spec`; if the engine goes away mid-way, wait for it once and
    converge again. Problems come back in the result, never as exceptions. A refused GPU start
    gets its repair once (`repairs`; none by default) and one more start, else the fallback."""
    repairs = repairs or GpuRepairs()
    for attempt in (1, 2):
        try:
            return _converge(engine, spec, fallback, stability_s, sleep, repairs)
        except EngineError as exc:
            if exc.kind is not ErrorKind.ENGINE_GONE:
                failed = problem("container_start_failed", spec.name, _short(exc.message))
                return ConvergeResult(ConvergeAction.CREATED, None, spec, problems=(failed,))
            if attempt == 2:
                gone = problem("docker_unavailable", "docker", _short(exc.message))
                return ConvergeResult(ConvergeAction.CREATED, None, spec, problems=(gone,))
            log.get("engine").warning("docker engine went away, waiting", error=exc.message[:200])
            try:
                engine = connect(timeout_s=reconnect_s, sleep=sleep)
            except AgentError as gone:
                return ConvergeResult(ConvergeAction.CREATED, None, spec, problems=gone.problems)
    raise AssertionError("unreachable")


def _converge(engine, spec, fallback, stability_s, sleep, repairs) -> ConvergeResult:
    """Absent: create. Same hash and running: nothing. Stopped: start. Other hash: replace."""
    existing = engine.inspect(spec.name)
    if existing is not None:
        labels = (existing.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_HASH) == spec.spec_hash:
            if (existing.get("State") or {}).get("Running"):
                return ConvergeResult(ConvergeAction.UNCHANGED, existing["Id"], spec)
            engine.start(existing["Id"])
            restarts = existing.get("RestartCount", 0)
            return _settle(
                engine, existing["Id"], spec, ConvergeAction.STARTED, restarts, stability_s, sleep
            )
        engine.remove(existing["Id"])
    action = ConvergeAction.REPLACED if existing is not None else ConvergeAction.CREATED
    return _create_and_start(engine, spec, fallback, action, stability_s, sleep, repairs)


def _create_and_start(engine, spec, fallback, action, stability_s, sleep, repairs):
    try:
        container_id = _create_started(engine, spec)
    except EngineError as exc:
        if spec.mode != Mode.GPU or exc.kind is not ErrorKind.GPU_REFUSED:
            raise
        log.get("engine").warning("GPU start failed", error=exc.message[:300])
        refusal = classify_refusal(exc.message, spec.name)
        if repairs.attempt(engine, refusal):
            return _create_and_start(engine, spec, fallback, action, stability_s, sleep, repairs)
        if fallback is None:
            refused = refusal.problem if refusal else problem("gpu_start_failed", spec.name)
            return ConvergeResult(action, None, spec, exc.message, (refused,))
        result = _create_and_start(engine, fallback, None, action, stability_s, sleep, repairs)
        return ConvergeResult(
            result.action,
            result.container_id,
            result.spec,
            exc.message,
            result.problems,
            result.log_tail,
        )
    return _settle(engine, container_id, spec, action, 0, stability_s, sleep)


def _create_started(engine, spec: ContainerSpec) -> str:
    """Create and start the container (removed again when the start fails). An engine that may
    not raise the ulimits (RLIMIT_REFUSED) gets the spec without them, labelled with the
    planned spec's hash so the next boot finds it unchanged."""
    body = create_body(spec)
    try:
        return _start_new(engine, body, spec.name)
    except EngineError as exc:
        if RLIMIT_REFUSED not in exc.message or spec.resources is None:
            raise
        log.get("engine").warning("ulimits refused, started without", error=exc.message[:300])
        reduced = create_body(replace(spec, resources=spec.resources.without_ulimits()))
        return _start_new(engine, {**reduced, "Labels": body["Labels"]}, spec.name)


def _start_new(engine, body: dict, name: str) -> str:
    container_id = engine.create(body, name)
    try:
        engine.start(container_id)
    except EngineError:
        engine.remove(container_id)
        raise
    return container_id


def _settle(engine, container_id, spec, action, restarts, stability_s, sleep) -> ConvergeResult:
    """Running, and still running with no restart after the stability window: else a crash
    loop (`restarts`: the count before the start; a created container has none)."""
    if stability_s > 0:
        sleep(stability_s)
    attrs = engine.inspect(container_id) or {}
    state = attrs.get("State") or {}
    if (
        state.get("Running")
        and not state.get("Restarting")
        and attrs.get("RestartCount", 0) == restarts
    ):
        return ConvergeResult(action, container_id, spec)
    tail = tuple(engine.logs(container_id, tail=20).splitlines())
    detail = f"exit code {state.get('ExitCode')}, restarts {attrs.get('RestartCount')}"
    if classify(list(tail)).status is SupernodeStatus.AUTH_REJECTED:
        # Left to its restart policy: it joins on its own once the SuperLink registers its key.
        refused = problem("node_auth_rejected", spec.name, detail)
        return ConvergeResult(action, container_id, spec, problems=(refused,), log_tail=tail)
    engine.stop(container_id)
    name = (
        "version_mismatch"
        if any(m in line for line in tail for m in VERSION_MISMATCH_LINES)
        else "supernode_crash_loop"
    )
    return ConvergeResult(
        action, None, spec, problems=(problem(name, spec.name, detail),), log_tail=tail
    )


def await_registration(
    engine: Engine,
    result: ConvergeResult,
    wait_s: float,
    *,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ConvergeResult:
    """A SuperNode whose key the SuperLink refused (`node_auth_rejected`), left to its restart
    policy: wait up to `wait_s` for it to connect once the SuperLink registers the key (in a
    OneFlow service the superlink role does so within seconds of the key's publication). The
    result without the problem once its log says CONNECTED; else the result as it was."""
    refused = [p for p in result.problems if p.name == "node_auth_rejected"]
    if not refused or len(refused) != len(result.problems) or result.container_id is None:
        return result
    deadline = clock() + wait_s
    while clock() < deadline:
        sleep(poll_s)
        try:
            tail = engine.logs(result.container_id, tail=LOG_TAIL_LINES).splitlines()
            running = ((engine.inspect(result.container_id) or {}).get("State") or {}).get(
                "Running"
            )
        except EngineError:
            continue  # the engine may be busy restarting it: look again
        if running and classify(tail).status is SupernodeStatus.CONNECTED:
            log.get("engine").info("node key registered: connected", container=result.spec.name)
            return replace(result, problems=(), log_tail=tuple(tail[-20:]))
    return result


# --- probe containers


@dataclass(frozen=True)
class ProbeRun:
    """One probe container's end: it exited (code, output), or the engine refused it."""

    exit_code: int | None  # None: the engine refused or the wait failed
    output: str
    problem: Problem | None = None


def run_probe(
    engine: Engine,
    image: str,
    argv: list[str],
    uuids: tuple[str, ...] | None,
    *,
    wait_s: int = PROBE_WAIT_S,
) -> ProbeRun:
    """Run `argv` in `image` with the GPU request the SuperNode gets; always remove it."""
    run_id = os.urandom(6).hex()
    body = {
        "Image": image,
        "Entrypoint": argv[:1],
        "Cmd": argv[1:],
        "Labels": {PROBE_LABEL: run_id},
        "Env": ["NVIDIA_DRIVER_CAPABILITIES=compute,utility"],
        "NetworkDisabled": True,
        "HostConfig": {"DeviceRequests": [device_request(uuids)]},
    }
    try:
        container_id = engine.create(body, f"fl-agent-validate-{run_id}")
        engine.start(container_id)
        code = engine.wait(container_id, wait_s)
        return ProbeRun(code, engine.logs(container_id)[-LOG_LIMIT:])
    except EngineError as exc:
        if exc.kind is ErrorKind.IMAGE_MISSING:
            return ProbeRun(None, _short(exc.message), missing_image(image))
        if exc.status is not None:
            return ProbeRun(None, _short(exc.message), gpu_problem(exc.message))
        failed = problem("container_probe_failed", "container", _short(exc.message))
        return ProbeRun(None, exc.message[:LOG_LIMIT], failed)
    finally:
        remove_probes(engine, run_id)


def remove_probes(engine: Engine, run_id: str | None = None) -> None:
    """Remove probe containers (this run's, or every one when run_id is None)."""
    try:
        for container_id in engine.containers(f"{PROBE_LABEL}={run_id}" if run_id else PROBE_LABEL):
            try:
                engine.remove(container_id)
            except EngineError:
                continue
    except EngineError:
        return
