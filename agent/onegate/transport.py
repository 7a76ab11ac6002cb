"""HTTP to OneGate: one process-wide backoff per endpoint, and a run that stops asking once
the server has said no for good.

- Connection errors, timeouts and 5xx are retried inside each call's deadline. The backoff
  outlives the call: the failures of earlier requests of this process count, every wait is
  drawn with full jitter (U(0, d), d = base * 2**failures, capped), and a call whose deadline
  ends before the next allowed request gives up without sending one. So during an outage
  each agent probes at growing random intervals, and after it a herd does not come back at
  once (bench/onegate_herd.py measures it).
- A 401 ends OneGate traffic for the rest of the run (the process): every later request would
  get the same answer. A 403 ends the route it came from (a permission off in the server's
  `:permissions:`), or all traffic when the server refuses its own host name. The report is
  kept on disk for the next run (the re-send timer, the next boot).
- Redirects are never followed, so the token never goes to another host.
- Every server answer is text until checked: a body that is not the JSON object expected is a
  named error, not a traceback.
- A body is read in chunks, never whole: over MAX_BODY_BYTES it is `onegate_answer_too_large`.
  An answer still arriving at the call's deadline, from a server dripping bytes each inside
  the per-read timeout, is `onegate_too_slow` once its status line has come; before that it is
  no answer (out of time, `onegate_unreachable`, as when nothing comes). requests' per-read
  timeouts cannot bound a whole answer, so the sockets of the call's requests are recorded as
  they are used (`_Watch`, through the connection class of the session's pools) and a timer
  shuts them down at the deadline, which ends a read blocked in one. Either error is an answer
  not had: kept for a later run like no answer at all. Only identity-encoded bodies are asked
  for, so the bound is on what the server sends, not on what it inflates to.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agent import __version__, log
from agent.errors import AgentError, Problem

MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest OneGate answer read. The biggest is GET /service: each VM of the service in it
with its USER_TEMPLATE (a few KB with the attributes fl-agent publishes, the SuperLink's CA
among them), so a 1,000-VM service answers a few MB; 16 MiB leaves room for more and bounds
what a broken or hostile server costs."""
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """Full jitter: after n failures in a row, wait U(0, min(cap, base * 2**n))."""

    base_s: float = 2.0
    cap_s: float = 30.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0

    def delay(self, failures: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap_s, self.base_s * (2**failures)))


@dataclass
class _Backoff:
    failures: int = 0
    not_before: float = 0.0


@dataclass
class _Stops:
    """What this run no longer asks: '*' (everything) or a route such as 'PUT /vm'."""

    routes: dict[str, OneGateError]


class _Watch:
    """The sockets one call's requests used, shut down once its deadline passes."""

    def __init__(self) -> None:
        self.expired = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            late = self.expired.is_set()
        if late:
            _shut(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # a read blocked in it returns at once


_WATCHING = threading.local()
"""The _Watch of the call running in this thread, for the connections its requests use."""


def _watched(connection_cls: type) -> type:
    """`connection_cls` that hands its socket to the running call's _Watch on every request
    (a new connection has one only once the request is sent; a reused one, the same)."""

    class Watched(connection_cls):
        def request(self, *args, **kwargs):
            super().request(*args, **kwargs)
            watch = getattr(_WATCHING, "watch", None)
            if watch is not None:
                watch.add(self.sock)

    return Watched


def _session(requests):
    """A requests Session whose pools' connections report to the running call's _Watch."""
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    pools = {}
    for scheme, pool in (("http", HTTPConnectionPool), ("https", HTTPSConnectionPool)):
        pools[scheme] = type(
            pool.__name__, (pool,), {"ConnectionCls": _watched(pool.ConnectionCls)}
        )
    adapter = requests.adapters.HTTPAdapter()
    adapter.poolmanager.pool_classes_by_scheme = pools
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


_BACKOFF: dict[tuple[str, str], _Backoff] = {}
_STOPPED: dict[tuple[str, str], _Stops] = {}
"""Process-wide, per (endpoint, VMID): every Reporter of the run shares them."""


def new_run(endpoint: str | None = None, vmid: str | None = None) -> None:
    """Forget the backoff and the stops (of one endpoint and VM, or all), as a new process
    would: tests, and the herd bench, whose simulated VMs share a process."""
    for table in (_BACKOFF, _STOPPED):
        for key in [k for k in table if endpoint is None or k == (endpoint, vmid)]:
            del table[key]


class OneGateError(AgentError):
    """A OneGate request that failed; `status` is the HTTP status (None: no answer)."""

    def __init__(self, problem: Problem, status: int | None = None, body: str = "") -> None:
        super().__init__(problem)
        self.status = status
        self.body = body

    @property
    def transient(self) -> bool:
        """Worth trying in a later run: no answer, a 5xx, a 401 (the token can be fixed), a
        redirect or `Host not permitted` (the server's configuration can be fixed)."""
        if self.status == 403:
            return "Host not permitted" in self.body
        status = self.status
        return status is None or status >= 500 or status == 401 or 300 <= status < 400


def problem_for(status: int | None, body: str, path: str, endpoint: str) -> Problem:
    subject = f"OneGate {endpoint}{path}"
    if status is None:
        return Problem(
            "onegate_unreachable",
            subject,
            f"no answer: {body}",
            "check ONEGATE_ENDPOINT (oned.conf) and that port 5030 is reachable from the VM",
        )
    if 300 <= status < 400:
        return Problem(
            "onegate_redirected",
            subject,
            f"HTTP {status}: a redirect, not followed (the token would go with it)",
            "set ONEGATE_ENDPOINT (oned.conf) to the OneGate server itself",
        )
    if status == 401:
        return Problem(
            "onegate_unauthorized",
            subject,
            "401 Not authorized: the token or VMID is wrong, or the VM was recreated",
            "set TOKEN=YES in the VM template's CONTEXT and check the owner's TOKEN_PASSWORD",
        )
    if status == 403 and "Host not permitted" in body:
        return Problem(
            "onegate_forbidden",
            subject,
            "403 Host not permitted: the OneGate server rejects its own host name",
            "server configuration: permit the host in onegate-server.conf (OpenNebula/one#7231)",
        )
    if status == 403:
        return Problem(
            "onegate_forbidden",
            subject,
            f"403 {body[:200]}",
            "a restricted attribute or an action disabled in onegate-server.conf",
        )
    return Problem("onegate_error", subject, f"HTTP {status}: {body[:200]}", "")


def malformed(path: str, endpoint: str, body: str, what: str) -> OneGateError:
    """A 200 answer that is not what the route returns."""
    problem = Problem(
        "onegate_bad_answer",
        f"OneGate {endpoint}{path}",
        f"the answer is not {what}",
        "check that ONEGATE_ENDPOINT is the OneGate server (and its version)",
    )
    return OneGateError(problem, 200, body[:200])


def unread(path: str, endpoint: str, what: str) -> OneGateError:
    """An answer given up while reading it: `what` is "too_large" or "too_slow"."""
    if what == "too_large":
        problem = Problem(
            "onegate_answer_too_large",
            f"OneGate {endpoint}{path}",
            f"the answer is over {MAX_BODY_BYTES} bytes: not read further",
            "check that ONEGATE_ENDPOINT is the OneGate server",
        )
    else:
        problem = Problem(
            "onegate_too_slow",
            f"OneGate {endpoint}{path}",
            "the answer was still arriving at the call's deadline",
            "check the network to ONEGATE_ENDPOINT and the OneGate server's load",
        )
    return OneGateError(problem)


def route(method: str, path: str) -> str:
    """'GET /vms/:id' for 'GET /vms/12': the unit a 403 ends."""
    return method + " " + re.sub(r"/\d+", "/:id", path.split("?")[0])


class Transport:
    """HTTP with retries inside a deadline; the token only ever goes into a header."""

    def __init__(
        self,
        endpoint: str,
        vmid: str,
        token,
        policy: RetryPolicy,
        rng: random.Random,
        sleep: Callable[[float], None],
    ) -> None:
        import requests

        self.requests = requests
        self.endpoint = endpoint
        self.policy = policy
        self.rng = rng
        self.sleep = sleep
        self.backoff = _BACKOFF.setdefault((endpoint, vmid), _Backoff())
        self.stops = _STOPPED.setdefault((endpoint, vmid), _Stops({}))
        self.session = _session(requests)
        self.session.trust_env = False  # no proxy or .netrc from the environment
        self.session.headers.update(
            {
                "X-ONEGATE-TOKEN": token.reveal(),
                "X-ONEGATE-VMID": vmid,
                "User-Agent": f"fl-agent/{__version__}",
                "Accept": "application/json",
                "Accept-Encoding": "identity",
            }
        )

    def stopped(self, method: str, path: str) -> OneGateError | None:
        return self.stops.routes.get("*") or self.stops.routes.get(route(method, path))

    def call(
        self,
        method: str,
        path: str,
        deadline: float,
        data: dict[str, str] | None = None,
        harmless: Callable[[int, str], bool] | None = None,
    ) -> str:
        """The body of a 2xx answer (or of an error `harmless` accepts); else OneGateError."""
        stopped = self.stopped(method, path)
        if stopped is not None:
            raise stopped
        failures = (
            self.requests.ConnectionError,
            self.requests.Timeout,
            self.requests.exceptions.ChunkedEncodingError,
        )
        error: OneGateError | None = None
        while True:
            wait = self.backoff.not_before - time.monotonic()
            if wait > 0:
                if time.monotonic() + wait >= deadline:
                    raise error or OneGateError(
                        problem_for(None, "backing off after failures", path, self.endpoint)
                    )
                self.sleep(wait)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise error or OneGateError(problem_for(None, "out of time", path, self.endpoint))
            timeout = (
                min(self.policy.connect_timeout_s, remaining),
                min(self.policy.read_timeout_s, remaining),
            )
            try:
                with self._watch(deadline) as watch:
                    resp = self.session.request(
                        method,
                        self.endpoint + path,
                        data=data,
                        timeout=timeout,
                        allow_redirects=False,
                        stream=True,
                    )
                    body = self._body(resp, watch, path)
            except failures as exc:  # before the body: no answer
                reason = "out of time" if watch.expired.is_set() else type(exc).__name__
                error = OneGateError(problem_for(None, reason, path, self.endpoint))
            else:
                if resp.status_code < 300 or (harmless and harmless(resp.status_code, body)):
                    self.backoff.failures, self.backoff.not_before = 0, 0.0
                    return body
                problem = problem_for(resp.status_code, body, path, self.endpoint)
                error = OneGateError(problem, resp.status_code, body)
                if resp.status_code < 500 or "Parse error" in body:
                    self._stop(method, path, error)
                    raise error
            self.backoff.failures += 1
            delay = self.policy.delay(self.backoff.failures, self.rng)
            self.backoff.not_before = time.monotonic() + delay
            log.get("onegate").debug(
                "onegate_retry", path=path, failures=self.backoff.failures, delay_s=round(delay, 3)
            )

    @contextlib.contextmanager
    def _watch(self, deadline: float) -> Iterator[_Watch]:
        """This call's requests, their sockets shut down at `deadline` (module docstring)."""
        watch = _Watch()
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), watch.expire)
        timer.daemon = True
        _WATCHING.watch = watch
        timer.start()
        try:
            yield watch
        finally:
            timer.cancel()
            _WATCHING.watch = None

    def _body(self, resp, watch: _Watch, path: str) -> str:
        """The answer's body as text, read in chunks up to MAX_BODY_BYTES and until the
        deadline; a read the network cuts short raises ConnectionError, as requests would. A
        body read whole leaves the connection for the next request."""
        from urllib3.exceptions import HTTPError

        chunks: list[bytes] = []
        size, whole = 0, False
        try:
            for chunk in resp.raw.stream(_CHUNK_BYTES, decode_content=False):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise unread(path, self.endpoint, "too_large")
                chunks.append(chunk)
            whole = not watch.expired.is_set()  # an end of a body shut down is no end
        except HTTPError as exc:
            if not watch.expired.is_set():
                raise self.requests.ConnectionError(type(exc).__name__) from None
        finally:
            if whole:
                resp.raw.release_conn()
            else:
                resp.close()
        if not whole:
            raise unread(path, self.endpoint, "too_slow")
        return b"".join(chunks).decode("utf-8", errors="replace").strip()

    def _stop(self, method: str, path: str, error: OneGateError) -> None:
        """A 401, a redirect or `Host not permitted` ends every request of this run; another
        403 ends its route."""
        if error.status == 403 and error.body.startswith("Attribute ("):
            return  # a restricted attribute: that report is refused, not the route
        if error.status == 403 and "Host not permitted" not in error.body:
            self.stops.routes[route(method, path)] = error
        elif error.status in (401, 403) or (error.status and 300 <= error.status < 400):
            self.stops.routes["*"] = error
        else:
            return
        log.get("onegate").error("onegate_stopped", problem=str(error.first))

    def get_json(self, path: str, deadline: float) -> dict:
        body = self.call("GET", path, deadline)
        try:
            data = json.loads(body)
        except ValueError:
            raise malformed(path, self.endpoint, body, "JSON") from None
        if not isinstance(data, dict):
            raise malformed(path, self.endpoint, body, "a JSON object")
        return data
