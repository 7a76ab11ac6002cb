"""The Engine API client's own parts, without an engine: HTTP framing over a real socket pair,
the log stream's frames, DOCKER_HOST forms and the error classifier."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from agent import engine
from agent.engine import Engine, EngineError, ErrorKind


def answer(raw: bytes) -> engine._Response:
    """The client's view of `raw` sent by a server over a real socket (then closed)."""
    client, server = socket.socketpair()

    def serve() -> None:
        server.sendall(raw)
        server.close()

    thread = threading.Thread(target=serve)
    thread.start()
    response = engine._Response(client)
    thread.join()
    return response


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_a_body_by_content_length():
    body = json.dumps({"Id": "abc"}).encode()
    raw = b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    response = answer(raw)
    assert response.status == 201 and json.loads(response.read()) == {"Id": "abc"}


def test_a_chunked_stream_gives_its_lines_across_chunk_borders():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        b'{"status":"Pulling"}\n{"sta', b'tus":"Done"}\n', b'{"error":"x"}'
    )
    lines = list(answer(raw).lines())
    assert lines == [b'{"status":"Pulling"}', b'{"status":"Done"}', b'{"error":"x"}']


def test_a_body_until_the_connection_closes_and_no_body_at_all():
    assert answer(b"HTTP/1.1 200 OK\r\n\r\nOK").read() == b"OK"
    assert answer(b"HTTP/1.1 204 No Content\r\n\r\n").read() == b""


def test_not_http_is_an_error():
    with pytest.raises(OSError):
        answer(b"SSH-2.0-OpenSSH_9.2\r\n")


def test_log_frames_of_a_container_without_a_tty():
    frames = b"".join(
        struct.pack(">BxxxI", stream, len(text)) + text
        for stream, text in ((1, b"out line\n"), (2, b"err line\n"))
    )
    assert engine._demultiplex(frames) == "out line\nerr line\n"
    assert engine._demultiplex(b"raw tty output\n") == "raw tty output\n"


@pytest.mark.parametrize(
    "host", ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "tcp://engine:2376"]
)
def test_docker_host_forms(host):
    assert Engine(host).host == host


@pytest.mark.parametrize("host", ["ssh://user@host", "npipe:////./pipe/docker", "tcp://nopor"])
def test_unsupported_docker_host_is_a_clear_error(host):
    with pytest.raises(EngineError, match="only unix:// and tcp://"):
        Engine(host)


def test_an_engine_that_does_not_answer_is_engine_gone():
    with pytest.raises(EngineError) as info:
        Engine("unix:///nonexistent/docker.sock").ping()
    assert info.value.kind is ErrorKind.ENGINE_GONE


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (None, "connection refused", ErrorKind.ENGINE_GONE),
        (404, "No such image: x:1", ErrorKind.IMAGE_MISSING),
        (500, 'could not select device driver "" with capabilities: [[gpu]]',
         ErrorKind.GPU_REFUSED),
        (500, "OCI runtime create failed: ... error running hook #0: ...", ErrorKind.GPU_REFUSED),
        (500, "OCI runtime create failed: exec: no such file", ErrorKind.START_FAILED),
        (409, "Conflict. The container name is already in use", ErrorKind.START_FAILED),
    ],
)  # fmt: skip
def test_the_one_classifier(status, message, kind):
    assert EngineError(message, status).kind is kind


def test_quoting_keeps_references_and_escapes_the_rest():
    assert engine._q("registry:5000/repo/name:tag") == "registry:5000/repo/name:tag"
    assert engine._q('{"label":["a=b"]}') == "%7B%22label%22:%5B%22a%3Db%22%5D%7D"


def test_the_engine_is_reached_from_agent_engine_only():
    """No module of the agent imports the docker SDK; only agent/engine.py opens sockets."""
    import re
    from pathlib import Path

    package = Path(engine.__file__).parent
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import docker|from docker)\b", text, re.M), path
        if path.name != "engine.py":
            assert "AF_UNIX" not in text and "socket.socket(" not in text, path


def test_a_stale_cdi_spec_is_regenerated_once_through_the_runner():
    from agent.command import RunResult
    from agent.engine import GpuRepairs
    from agent.gpu.refusals import CDI_GENERATE, classify_refusal

    calls = []

    def runner(argv, *, timeout):
        calls.append(argv)
        return RunResult(0, "")

    refusal = classify_refusal("failed to create task: unresolvable CDI devices nvidia.com/gpu=0")
    repairs = GpuRepairs(at_boot=False, runner=runner)
    assert repairs.attempt(None, refusal)  # no engine restart: any run may regenerate
    assert not repairs.attempt(None, refusal)  # once
    assert calls == [CDI_GENERATE.split()]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # chunk size not hex
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{oops",  # JSON that is not
    ],
)
def test_garbage_from_the_engine_is_an_engine_error_not_a_traceback(tmp_path, raw):
    path = str(tmp_path / "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(raw)
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(EngineError, match="garbage"):
            Engine(f"unix://{path}", timeout_s=5).info()
    finally:
        thread.join()
        listener.close()


class _RestartingNode:
    """The engine's view of a refused SuperNode left to its restart policy: its log says the
    key was refused until the SuperLink registers it (after `refusals` looks)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.looks = 0

    def logs(self, container_id: str, tail: int = 50) -> str:
        self.looks += 1
        lines = ["INFO : Starting Flower SuperNode", "[code: 2004] Failed to activate SuperNode"]
        if self.looks > self.refusals:
            lines += ["INFO : Starting Flower SuperNode", "INFO : SuperNode ID: 77"]
        return "\n".join(lines)

    def inspect(self, container_id: str) -> dict:
        return {"State": {"Running": True}}


def _refused(*names: str) -> engine.ConvergeResult:
    from agent.outcome import ConvergeAction
    from agent.plan import ContainerSpec, Mode

    spec = ContainerSpec("img", (), (), Mode.CPU, "runc")
    problems = tuple(engine.problem(n, spec.name) for n in names)
    return engine.ConvergeResult(ConvergeAction.CREATED, "cid", spec, problems=problems)


def _waited(node, result, wait_s: float = 60.0) -> engine.ConvergeResult:
    clock = iter(range(0, 10_000, 2))
    return engine.await_registration(
        node, result, wait_s, sleep=lambda s: None, clock=lambda: float(next(clock))
    )


def test_a_refused_node_key_waits_for_its_registration():
    node = _RestartingNode(refusals=3)
    connected = _waited(node, _refused("node_auth_rejected"))
    assert connected.running and connected.problems == () and node.looks == 4
    assert "SuperNode ID: 77" in connected.log_tail[-1]


def test_a_key_never_registered_ends_refused_after_the_wait():
    node = _RestartingNode(refusals=10**6)
    result = _refused("node_auth_rejected")
    assert _waited(node, result, wait_s=20.0) is result and node.looks == 9


@pytest.mark.parametrize(
    "names", [(), ("supernode_crash_loop",), ("node_auth_rejected", "supernode_crash_loop")]
)
def test_only_a_refused_key_alone_is_waited_for(names):
    node = _RestartingNode(refusals=0)
    result = _refused(*names)
    assert _waited(node, result) is result and node.looks == 0
