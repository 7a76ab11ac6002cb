"""Talking to oned the OpenNebula way, with every failure turned into a Problem.

Endpoint: ``--endpoint``, else ``$ONE_XMLRPC``, else http://localhost:2633/RPC2 (XML-RPC only).
Credentials: the file named by ``--auth``, else ``$ONE_AUTH``, else ``~/.one/one_auth``; its
first line is ``user:password`` (or ``user:token``), as for the ``one*`` commands. The session
string is a `Secret`: never printed, logged or put in a message.

pyone raises one exception class per oned error code (0x0100 authentication, 0x0200
authorization, 0x0400 no such object, 0x0800 action, 0x1000 API, 0x2000 internal;
pyone/server_xrpc.py); requests and xmlrpc.client raise the transport failures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.context import Secret
from agent.errors import AgentError, Problem

ENDPOINT_ENV = "ONE_XMLRPC"
AUTH_ENV = "ONE_AUTH"
DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
DEFAULT_TIMEOUT = 30.0


class OneInputError(AgentError):
    """What the operator gave is wrong (exit 2), as opposed to a failure of the call (exit 1)."""


def invalid_input(subject: str, message: str, fix: str = "") -> OneInputError:
    return OneInputError(Problem("invalid_input", subject, message, fix))


@dataclass(frozen=True)
class Connection:
    endpoint: str
    session: Secret
    auth_file: Path

    @property
    def shown_endpoint(self) -> str:
        """The endpoint without any user:password@ part."""
        return re.sub(r"^(\w+://)[^/@]*@", r"\1", self.endpoint)


def resolve(
    endpoint: str | None = None,
    auth_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Connection:
    """Flags first, then the environment, then the OpenNebula defaults."""
    env = os.environ if env is None else env
    url = endpoint or env.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    if not re.match(r"^https?://[^/\s]+", url):
        raise OneInputError(
            Problem(
                "one_endpoint_invalid",
                "endpoint",
                f"{url!r} is not an XML-RPC URL",
                "give http(s)://HOST:2633/RPC2 with --endpoint or $ONE_XMLRPC",
            )
        )
    path = Path(auth_file or env.get(AUTH_ENV) or (home or Path.home()) / ".one" / "one_auth")
    return Connection(url, _read_session(path), path)


def _read_session(path: Path) -> Secret:
    fix = f"put user:password on the first line of {path} (mode 600), or use --auth/$ONE_AUTH"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise OneInputError(
            Problem("one_auth_unreadable", str(path), f"cannot read credentials: {reason}", fix)
        ) from None
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    user, sep, password = line.partition(":")
    if not (user and sep and password):
        raise OneInputError(
            Problem("one_auth_invalid", str(path), "first line is not user:password", fix)
        )
    return Secret(line)


class OneClient:
    """pyone's XML-RPC client behind one `call` that raises AgentError, never pyone's exceptions."""

    def __init__(self, conn: Connection, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        import pyone

        self.conn = conn
        self._server = pyone.OneServer(
            conn.endpoint, session=conn.session.reveal(), protocol="xmlrpc"
        )
        # pyone's own `timeout` only sets the process-wide socket default, which requests
        # overrides (it passes timeout=None), so a silent oned would hang us: use a transport
        # that times out. xmlrpc.client.ServerProxy keeps its transport in __transport.
        self._server._ServerProxy__transport = _timed_transport(conn.endpoint, timeout)

    def call(self, method: str, *args: object) -> object:
        """``call("hostpool.info")`` runs XML-RPC ``one.hostpool.info(session)``."""
        target = self._server
        for part in method.split("."):
            target = getattr(target, part)
        try:
            return target(*args)
        except Exception as exc:
            raise translate(exc, f"one.{method}", self.conn) from None


def _timed_transport(endpoint: str, timeout: float | None) -> object:
    """pyone's requests-based XML-RPC transport, with a timeout on every request."""
    import xmlrpc.client

    import requests
    from pyone.server_xrpc import RequestsTransport

    class TimedTransport(RequestsTransport):
        def request(self, host, handler, request_body, verbose=False):
            url = self._build_url(host, handler)
            resp = requests.post(
                url, data=request_body, headers=self.headers, verify=True, timeout=timeout
            )
            if not resp.ok:
                raise xmlrpc.client.ProtocolError(url, resp.status_code, resp.reason, resp.headers)
            return self.parse_response(resp)

    transport = TimedTransport()
    transport.set_https(endpoint.startswith("https"))
    return transport


def translate(exc: Exception, method: str, conn: Connection) -> AgentError:
    """One clear Problem for whatever pyone, requests or xmlrpc.client raised."""
    import xmlrpc.client
    from xml.parsers.expat import ExpatError

    import pyone
    import requests

    where = conn.shown_endpoint
    by_class: list[tuple[type[BaseException], str, str, str]] = [
        (
            pyone.OneAuthenticationException,
            "one_authentication_failed",
            "authentication failed",
            f"check the user:password in {conn.auth_file}",
        ),
        (
            pyone.OneAuthorizationException,
            "one_not_authorized",
            "not authorized",
            "use a user or group allowed to do this (for example oneadmin)",
        ),
        (pyone.OneNoExistsException, "one_no_such_object", "no such object", "check the ID"),
        (pyone.OneActionException, "one_action_refused", "oned refused the action", ""),
        (pyone.OneApiException, "one_api_error", "oned rejected the call's arguments", ""),
        (pyone.OneInternalException, "one_internal_error", "oned internal error", ""),
    ]
    for cls, name, what, fix in by_class:
        if isinstance(exc, cls):
            error = OneInputError if cls is pyone.OneNoExistsException else AgentError
            return error(Problem(name, method, f"{what}: {exc}", fix))
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        message, fix = "no answer in time", "check that oned is running and not overloaded"
    elif isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        message = "server unreachable (connection failed)"
        fix = "check that oned runs there and the port is open, or set --endpoint / $ONE_XMLRPC"
    elif isinstance(exc, xmlrpc.client.ProtocolError):
        message = f"HTTP {exc.errcode} {exc.errmsg}".strip()
        fix = "is this oned's XML-RPC URL (http://HOST:2633/RPC2)?"
    elif isinstance(exc, ExpatError | xmlrpc.client.ResponseError | pyone.OneException):
        message, fix = f"not an oned answer: {exc}", "is this oned's XML-RPC URL?"
    else:
        raise exc
    return AgentError(Problem("one_unreachable", method, f"{where}: {message}", fix))
