"""Finding and parsing the OpenNebula context (context.sh) and the OneGate token.

context.sh is never executed. oned writes it with one grammar (src/vm/VirtualMachineContext.cc):
comment lines starting with ``#``, blank lines, and ``KEY='value'`` records where the value is
raw text (newlines included) and a single quote inside it is written as the four characters
``'\\''``. This module parses exactly that grammar, so the result equals what ``bash`` reads when
it sources the file, and rejects anything else with its line number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import AgentError, Problem
from agent.paths import Root

if TYPE_CHECKING:
    from agent.command import RunResult

MAX_CONTEXT_BYTES = 4 * 1024 * 1024
MAX_TOKEN_BYTES = 4096
ONE_CONTEXT_STAGE_FILES = ("context.sh.network", "context.sh.local")
CONTEXT_LABEL = "CONTEXT"

_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_ONE_ENV_TOKEN = re.compile(r'^export TOKENTXT="(.*)"$')


class Secret:
    """A string that never shows itself in repr, str, logs or JSON."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Context:
    """What the agent read: the raw variables exactly as written, where from, and the token."""

    variables: dict[str, str]
    source: str
    token: Secret | None = field(default=None, compare=False)
    token_source: str | None = None

    @property
    def platform(self) -> Platform:
        return read_platform(self.variables, self.token)


@dataclass(frozen=True)
class Platform:
    """What OpenNebula gives every VM beside the FL configuration: OneGate's endpoint, the VM
    id, the token and REPORT_READY. Read even when FL_* values are invalid, so that such a
    boot can still report FAILED. An invalid value is left out (None) and named in `problems`.
    """

    onegate_endpoint: str | None = None
    vmid: str | None = None
    token: Secret | None = field(default=None, repr=False, compare=False)
    report_ready: bool = False
    problems: tuple[Problem, ...] = ()
    ips: tuple[str, ...] = ()  # the NICs' addresses (ETHn_IP, ETHn_IP6), NIC order
    hostname: str | None = None  # SET_HOSTNAME, when it is a host name


_NIC_ADDRESS = re.compile(r"ETH([0-9]{1,3})_(IP|IP6)")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def nic_addresses(variables: dict[str, str]) -> tuple[str, ...]:
    """The VM's addresses as one-context names them: ETH<n>_IP then ETH<n>_IP6 per NIC, NICs
    in number order (aliases left out); a value that is not an IP address is skipped."""
    import ipaddress

    found = []
    for name, value in variables.items():
        match = _NIC_ADDRESS.fullmatch(name)
        if match is None or not value.strip():
            continue
        try:
            address = str(ipaddress.ip_address(value.strip()))
        except ValueError:
            continue
        found.append(((int(match[1]), match[2] == "IP6"), address))
    return tuple(dict.fromkeys(address for _, address in sorted(found)))


def context_hostname(variables: dict[str, str]) -> str | None:
    """SET_HOSTNAME when it is a valid host name (one-context sets the VM's name from it)."""
    value = variables.get("SET_HOSTNAME", "").strip()
    return value.lower() if _HOSTNAME.fullmatch(value) else None


def read_platform(variables: dict[str, str], token: Secret | None) -> Platform:
    """The platform values, each checked: an invalid one is left out and named."""
    problems: list[Problem] = []
    endpoint = variables.get("ONEGATE_ENDPOINT", "").strip() or None
    reason = endpoint_error(endpoint) if endpoint is not None else None
    if reason is not None:
        problems.append(
            _invalid(
                "ONEGATE_ENDPOINT",
                variables["ONEGATE_ENDPOINT"],
                "http(s)://host:port, as oned.conf's ONEGATE_ENDPOINT",
                reason,
            )
        )
        endpoint = None
    vmid = variables.get("VMID", "").strip() or None
    if vmid is not None and not re.fullmatch(r"[0-9]{1,10}", vmid):
        problems.append(_invalid("VMID", variables["VMID"], "a VM id (digits)"))
        vmid = None
    if token is not None and not all(" " <= ch <= "~" for ch in token.reveal()):
        problems.append(
            Problem(
                "invalid_value",
                "ONEGATE_TOKEN",
                "the OneGate token holds characters other than printable ASCII (value not shown)",
                "accepted: the token OpenNebula generated (token.txt of the context CD); check "
                "that nothing rewrote it",
            )
        )
        token = None  # it goes into an HTTP header: never a broken one
    return Platform(
        onegate_endpoint=endpoint.rstrip("/") if endpoint else None,
        vmid=vmid,
        token=token,
        report_ready=variables.get("REPORT_READY", "").strip().upper() == "YES",
        problems=tuple(problems),
        ips=nic_addresses(variables),
        hostname=context_hostname(variables),
    )


def endpoint_error(url: str) -> str | None:
    """Why the HTTP stack would refuse `url` as the OneGate endpoint (None: it would not)."""
    import urllib.parse

    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        return "not http(s)://host[:port]"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError as exc:
        return str(exc)
    host = parts.hostname or ""
    if not host or (":" not in host and not all(0 < len(x) <= 63 for x in host.split("."))):
        return f"host {host!r} is not a host name or address"
    return None


def _invalid(name: str, raw: str, accepted: str, why: str = "") -> Problem:
    shown = repr(raw if len(raw) <= 40 else raw[:37] + "...")
    message = f"invalid value {shown}" + (f": {why}" if why else "")
    return Problem("invalid_value", name, message, f"accepted: {accepted}")


def _problem(line: int, message: str, source: str) -> AgentError:
    return AgentError(
        Problem(
            name="context_syntax",
            subject=f"{source}:{line}",
            message=message,
            fix="context.sh must be exactly as oned writes it: comment lines and KEY='value' "
            "records, a quote inside a value written as '\\''",
        )
    )


def parse_context(data: bytes, source: str = "context.sh") -> dict[str, str]:
    """Parse context.sh bytes into {name: value}; raise AgentError naming the line on bad input."""
    if len(data) > MAX_CONTEXT_BYTES:
        raise AgentError(
            Problem(
                "context_too_large",
                source,
                f"{len(data)} bytes, more than the {MAX_CONTEXT_BYTES} a context may have",
                "check that the file is the VM's context.sh",
            )
        )
    nul = data.find(b"\0")
    if nul >= 0:
        raise _problem(data.count(b"\n", 0, nul) + 1, "binary data (a NUL byte)", source)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _problem(
            data.count(b"\n", 0, exc.start) + 1, "text that is not UTF-8", source
        ) from None
    return _Parser(data, source).parse()


class _Parser:
    """A single pass over the bytes; `pos` is the offset, `line` the 1-based line number."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.source = source
        self.pos = 0
        self.line = 1

    def parse(self) -> dict[str, str]:
        result: dict[str, str] = {}
        while self.pos < len(self.data):
            start_line = self.line
            end = self.data.find(b"\n", self.pos)
            end = len(self.data) if end < 0 else end
            text = self.data[self.pos : end]
            if text == b"" or text.startswith(b"#"):
                self._advance_to(end)
                continue
            name, value = self._record(start_line)
            result[name] = value
        return result

    def _advance_to(self, end: int) -> None:
        """Skip a blank or comment line: to just past its newline, or to EOF."""
        self.pos = end + 1
        self.line += 1

    def _record(self, start_line: int) -> tuple[str, str]:
        match = _NAME.match(self.data, self.pos)
        if not match:
            raise _problem(
                start_line, f"expected NAME='value', found {self._preview()}", self.source
            )
        name = match.group().decode()
        self.pos = match.end()
        if self.data[self.pos : self.pos + 2] != b"='":
            raise _problem(
                start_line,
                f"{name}: expected ='value' after the name, found {self._preview()}",
                self.source,
            )
        self.pos += 1
        parts: list[bytes] = []
        while True:
            parts.append(self._quoted(name, start_line))
            if self.data[self.pos : self.pos + 3] == b"\\''":
                parts.append(b"'")
                self.pos += 2
                continue
            break
        self._end_of_record(name)
        return name, b"".join(parts).decode()

    def _quoted(self, name: str, start_line: int) -> bytes:
        """Read one '...' segment starting at the opening quote."""
        close = self.data.find(b"'", self.pos + 1)
        if close < 0:
            raise _problem(start_line, f"{name}: unterminated quote", self.source)
        segment = self.data[self.pos + 1 : close]
        self.line += segment.count(b"\n")
        self.pos = close + 1
        return segment

    def _end_of_record(self, name: str) -> None:
        if self.pos == len(self.data):
            return
        if self.data[self.pos : self.pos + 1] == b"\n":
            self.pos += 1
            self.line += 1
            return
        raise _problem(
            self.line,
            f"{name}: unexpected text after the closing quote: {self._preview()}",
            self.source,
        )

    def _preview(self) -> str:
        end = self.data.find(b"\n", self.pos)
        snippet = self.data[self.pos : end if end >= 0 else len(self.data)][:40]
        return repr(snippet.decode("utf-8", "replace"))


# --- rendering, the way oned writes it (used by tests, the demo and the one-context hook) ---


def render_context(variables: dict[str, str]) -> str:
    """Render variables as oned does: header comment, keys sorted by byte order, '\\'' quoting."""
    lines = ["# Context variables generated by OpenNebula\n"]
    for name in sorted(variables, key=lambda k: k.encode()):
        value = variables[name].replace("'", "'\\''")
        lines.append(f"{name}='{value}'\n")
    return "".join(lines)


# --- sources ---

Runner = Callable[[Sequence[str]], "RunResult"]


def _run(argv: Sequence[str]) -> RunResult:
    from agent.command import run_command

    return run_command(argv, timeout=30, merge_stderr=False)


def load_context(
    root: Root,
    context_file: Path | None = None,
    *,
    runner: Runner = _run,
) -> Context:
    """Read the context from the first source that has one (see the README for the order)."""
    if context_file is not None:
        return _from_file(root, Path(context_file), "--context-file")
    for name in ONE_CONTEXT_STAGE_FILES:
        path = root.one_context_dir / name
        if path.is_file():
            return _from_file(root, path, str(path))
    if root.prefix == Path("/"):
        device = find_context_device(runner=runner)
        if device:
            return _from_cd(root, device, runner)
    raise AgentError(
        Problem(
            "context_missing",
            "context",
            "no context found: no --context-file, no context.sh under "
            f"{root.one_context_dir}, no CD labelled {CONTEXT_LABEL}",
            "attach a context CD (CONTEXT section of the VM template) or pass --context-file",
        )
    )


def _read_bytes(path: Path, label: str) -> bytes:
    """At most one byte past the limit (a device such as /dev/zero never ends)."""
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_CONTEXT_BYTES + 1)
    except OSError as exc:
        raise AgentError(
            Problem(
                "context_unreadable",
                label,
                exc.strerror or str(exc),
                "run the agent as root; one-context keeps its copies mode 0400",
            )
        ) from None


def _from_file(root: Root, path: Path, label: str) -> Context:
    variables = parse_context(_read_bytes(path, label), label)
    token, token_source = _find_token(root, path.parent / "token.txt", variables)
    return Context(variables, label, token, token_source)


def _find_token(
    root: Root, token_file: Path, variables: dict[str, str]
) -> tuple[Secret | None, str | None]:
    """token.txt beside the context, then TOKENTXT from one_env, then ONEGATE_TOKEN."""
    try:
        with token_file.open("rb") as handle:
            text = handle.read(MAX_TOKEN_BYTES).decode(errors="replace").strip()
        if text:
            return Secret(text), str(token_file)
    except OSError:
        pass
    one_env = root.one_context_dir / "one_env"
    try:
        with one_env.open(errors="replace") as handle:
            first = handle.readline(MAX_TOKEN_BYTES).rstrip("\n")
        match = _ONE_ENV_TOKEN.match(first)
        if match and match.group(1).strip():
            return Secret(match.group(1).strip()), str(one_env)
    except OSError:
        pass
    value = variables.get("ONEGATE_TOKEN", "").strip()
    if value:
        return Secret(value), "ONEGATE_TOKEN"
    return None, None


def find_context_device(candidates: Sequence[str] = (), *, runner: Runner = _run) -> str | None:
    """The block device (or image file) labelled CONTEXT, as one-contextd finds it.

    Without candidates, ask blkid to search by label (loop devices excluded, as one-contextd
    does); with candidates, probe each one's label.
    """
    if not candidates:
        found = runner(["blkid", "-l", "-t", f"LABEL={CONTEXT_LABEL}", "-o", "device"])
        devices = [d for d in found.output.split() if not d.startswith("/dev/loop")]
        return devices[0] if found.returncode == 0 and devices else None
    for device in candidates:
        probe = runner(["blkid", "-o", "value", "-s", "LABEL", device])
        if probe.returncode == 0 and probe.output.strip() == CONTEXT_LABEL:
            return device
    return None


def _from_cd(root: Root, device: str, runner: Runner) -> Context:
    """Mount the context CD read-only, read context.sh and token.txt, always unmount."""
    import tempfile

    mount_dir = Path(tempfile.mkdtemp(prefix="fl-agent-context."))
    try:
        mounted = runner(["mount", "-o", "ro", device, str(mount_dir)])
        if mounted.returncode != 0:
            raise AgentError(
                Problem(
                    "context_mount_failed",
                    device,
                    mounted.stderr.strip() or "mount failed",
                    "check that the context CD is attached and iso9660 is supported",
                )
            )
        try:
            return _from_file(root, mount_dir / "context.sh", f"{device}:context.sh")
        finally:
            runner(["umount", "-l", str(mount_dir)])
    finally:
        os.rmdir(mount_dir)
