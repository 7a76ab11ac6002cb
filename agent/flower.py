"""The Flower versions the agent supports and each one's command-line contract.

One table, keyed by major.minor, is the single source of truth for the arguments of
`flower-supernode`, `flower-superlink`, the ClientApp `flower-superexec` and the `flwr supernode
register/unregister` calls of node authentication, the SuperLink's ports and the image naming.
Facts: docs/flower-versions.md (real --help of 1.25.0 and 1.42.0 in
tests/fixtures/flower-help/, the wheels' parsers for the rows between).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

DEFAULT_FLOWER_VERSION = "1.42.0"
"""The version the appliance image bakes when /etc/fl-agent/flower-version does not say."""

SUPPORTED_MIN = (1, 25)
SUPPORTED_MAX = (1, 42)
IMAGE_REPOSITORY = "fl-agent/supernode"
"""Derived SuperNode images: flwr/supernode:<version> plus the ClientApp's dependencies."""

_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})\.([0-9]{1,6})")  # ASCII digits, bounded


@dataclass(frozen=True)
class FlowerRelease:
    """What one range of Flower releases expects from the agent (and from a local test setup).

    Verified by running 1.25.0 and 1.42.0 (their --help texts are recorded under
    tests/fixtures/flower-help/); the rows between come from the wheels' source and the release
    notes (docs/flower-versions.md).
    """

    first: tuple[int, int]
    last: tuple[int, int]
    fleet_port: int
    fleet_transport: str
    note: str
    control_port: int = 9093
    """Where the `flwr` CLI reaches the SuperLink's Control API (HTTP on 8000 from 1.37)."""
    runtime_host_port: bool = False
    """From 1.35 the Runtime API is HTTP, bound by --host/--port on both sides: the SuperNode's
    (--clientappio-api-address is rejected) and the SuperLink's on 8000
    (--serverappio-api-address is rejected)."""
    cli_config_toml: bool = True
    """`flwr` reads SuperLink connections from $FLWR_HOME/config.toml (1.26 on), not from the
    app's [tool.flwr.federations] (which it then rewrites in place)."""
    superlink_flags: tuple[str, ...] = ()
    """Extra flags for a local SuperLink whose apps' dependencies are preinstalled."""
    superexec_address_flag: str = "--runtime-api-address"
    """How `flower-superexec` names the API it pulls tasks from (--appio-api-address to 1.35)."""
    superexec_plugin_type: bool = False
    """`--plugin-type clientapp` is required up to 1.37; hidden and ignored from 1.38."""
    superlink_storage_dir: bool = False
    """`flower-superlink --storage-dir` (where FABs are kept, default under $HOME/.flwr) exists up
    to 1.28; from 1.29 everything lives in --database."""
    node_auth: str = "register"
    """SuperNode authentication: "register" = SuperLink --enable-supernode-auth (TLS and the
    gRPC-rere fleet type required, the default), keys registered with `flwr supernode register`
    over the Control API, SuperNode --auth-supernode-private-key (OpenSSH EC key). Every row
    has it; --auth-list-public-keys is refused by all of them. "none" would mean no mechanism."""


_NO_UV_SYNC = ("--disable-runtime-dependency-installation",)
_APPIO = "--appio-api-address"

RELEASES: tuple[FlowerRelease, ...] = (
    FlowerRelease(
        (1, 25),
        (1, 25),
        9092,
        "grpc-rere",
        "Fleet API over gRPC on 9092",
        cli_config_toml=False,
        superexec_address_flag=_APPIO,
        superexec_plugin_type=True,
        superlink_storage_dir=True,
    ),
    FlowerRelease(
        (1, 26),
        (1, 28),
        9092,
        "grpc-rere",
        "Fleet API over gRPC on 9092",
        superexec_address_flag=_APPIO,
        superexec_plugin_type=True,
        superlink_storage_dir=True,
    ),
    FlowerRelease(
        (1, 29),
        (1, 34),
        9092,
        "grpc-rere",
        "SuperLink's --storage-dir gone (FABs kept in --database)",
        superexec_address_flag=_APPIO,
        superexec_plugin_type=True,
    ),
    FlowerRelease(
        (1, 35),
        (1, 35),
        9092,
        "grpc-rere",
        "Runtime API over HTTP by --host/--port",
        runtime_host_port=True,
        superlink_flags=_NO_UV_SYNC,
        superexec_address_flag=_APPIO,
        superexec_plugin_type=True,
    ),
    FlowerRelease(
        (1, 36),
        (1, 36),
        9092,
        "grpc-rere",
        "SuperExec's --appio-api-address renamed --runtime-api-address",
        runtime_host_port=True,
        superlink_flags=_NO_UV_SYNC,
        superexec_plugin_type=True,
    ),
    FlowerRelease(
        (1, 37),
        (1, 37),
        9092,
        "grpc-rere",
        "Control API over HTTP on the SuperLink's port 8000",
        control_port=8000,
        runtime_host_port=True,
        superlink_flags=_NO_UV_SYNC,
        superexec_plugin_type=True,
    ),
    FlowerRelease(
        (1, 38),
        (1, 39),
        9092,
        "grpc-rere",
        "SuperExec's --plugin-type hidden (execution follows the task type)",
        control_port=8000,
        runtime_host_port=True,
        superlink_flags=_NO_UV_SYNC,
    ),
    FlowerRelease(
        (1, 40),
        (1, 42),
        8000,
        "http",
        "Fleet API over HTTP on the SuperLink's shared port 8000; --grpc-rere/--grpc-adapter gone",
        control_port=8000,
        runtime_host_port=True,
        superlink_flags=_NO_UV_SYNC,
    ),
)

HTTP_PORT = 8000
"""The SuperLink's HTTP port (Runtime API from 1.35, Control from 1.37, Fleet from 1.40)."""
SERVERAPPIO_PORT = 9091
"""The SuperLink's ServerAppIO API (gRPC) up to 1.34."""
SUPERLINK_DATABASE = "superlink.db"

SUPEREXEC_SAME_MINOR_FROM = (1, 30)


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.fullmatch(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def supported_range() -> str:
    return f"{SUPPORTED_MIN[0]}.{SUPPORTED_MIN[1]}.0 to {SUPPORTED_MAX[0]}.{SUPPORTED_MAX[1]}.x"


def release_for(version: str) -> FlowerRelease | None:
    """The table row for X.Y.Z, or None when the version is malformed or outside the range."""
    parsed = parse_version(version)
    if parsed is None:
        return None
    minor = parsed[:2]
    return next((r for r in RELEASES if r.first <= minor <= r.last), None)


def default_image(version: str) -> str:
    return f"{IMAGE_REPOSITORY}:{version}"


def same_minor(a: str, b: str) -> bool:
    """SuperNode and SuperExec must share major.minor from 1.30 on."""
    pa, pb = parse_version(a), parse_version(b)
    return pa is not None and pb is not None and pa[:2] == pb[:2]


def superexec_compatible(supernode: str, superexec: str) -> bool:
    """With --isolation process: from 1.30 the SuperNode rejects a SuperExec of another
    major.minor ("runtime version mismatch"); older releases did not check."""
    parsed = parse_version(supernode)
    if parsed is None or parse_version(superexec) is None:
        return False
    return parsed[:2] < SUPEREXEC_SAME_MINOR_FROM or same_minor(supernode, superexec)


def supernode_args(
    *,
    version: str,
    superlink: str,
    insecure: bool,
    root_certificates: str | None,
    isolation: str,
    node_config: str | None,
    max_retries: int,
    max_wait_time: int,
    clientappio_address: str = "127.0.0.1:9094",
    auth_private_key: str | None = None,
) -> list[str]:
    """The `flower-supernode` argv (after the entrypoint) for Flower `version` (X.Y.Z).

    The ClientAppIO (Runtime) API address is spelled per release: --clientappio-api-address
    up to 1.34, --host/--port from 1.35. 0 for retries or wait time means unlimited, which is
    flower-supernode's own default, so the flag is left out. `auth_private_key` is the path (as
    the SuperNode sees it) of the node's OpenSSH EC private key (agent/nodeauth.py). Values are
    single argv elements: no shell ever sees them.
    """
    if insecure:
        args = ["--insecure"]
    elif root_certificates:
        args = ["--root-certificates", root_certificates]
    else:
        args = []  # TLS against the system's trusted CAs
    args += ["--superlink", superlink, "--isolation", isolation]
    release = _release(version)
    if release.runtime_host_port:
        host, _, port = clientappio_address.rpartition(":")
        args += ["--host", host, "--port", port]
    else:
        args += ["--clientappio-api-address", clientappio_address]
    if auth_private_key:
        args += ["--auth-supernode-private-key", auth_private_key]
    if node_config:  # one argument: a value is never read as a flag of its own
        args.append(f"--node-config={node_config}")
    if max_retries:
        args += ["--max-retries", str(max_retries)]
    if max_wait_time:
        args += ["--max-wait-time", str(max_wait_time)]
    return args


def _release(version: str) -> FlowerRelease:
    release = release_for(version)
    if release is None:
        raise ValueError(f"Flower {version} is outside {supported_range()}")
    return release


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fleet_endpoint(version: str, host: str) -> str:
    """The address SuperNodes of `version` dial (`--superlink`, published as FL_ENDPOINT)."""
    return _host_port(host, _release(version).fleet_port)


def control_endpoint(version: str, host: str) -> str:
    """The address the `flwr` CLI reaches the Control API at (runs, node registration)."""
    return _host_port(host, _release(version).control_port)


@dataclass(frozen=True)
class ServerTlsPaths:
    """The SuperLink's TLS files as the SuperLink process sees them."""

    ca_cert: str
    cert: str
    key: str


def superlink_args(
    *,
    version: str,
    tls: ServerTlsPaths | None,
    state_dir: str,
    node_auth: bool,
    bind_host: str = "0.0.0.0",
) -> list[str]:
    """The `flower-superlink` argv for a SuperLink that SuperNodes on other VMs reach.

    Every API listens on `bind_host` (1.35 on, the HTTP API defaults to 127.0.0.1, out of
    reach). `state_dir` (persistent, writable by the container's user) holds the SQLite
    database that keeps runs and registered nodes across restarts (in memory without it) and,
    up to 1.28, the FAB store. SuperNode authentication needs TLS in every release.
    """
    release = _release(version)
    if node_auth and tls is None:
        raise ValueError("SuperNode authentication needs TLS (flower-superlink refuses it)")
    if tls is None:
        args = ["--insecure"]
    else:
        args = ["--ssl-ca-certfile", tls.ca_cert, "--ssl-certfile", tls.cert]
        args += ["--ssl-keyfile", tls.key]
    args += ["--database", f"{state_dir}/{SUPERLINK_DATABASE}"]
    if release.superlink_storage_dir:
        args += ["--storage-dir", f"{state_dir}/ffs"]
    if node_auth:
        args.append("--enable-supernode-auth")
    if release.runtime_host_port:
        args += ["--host", bind_host, "--port", str(HTTP_PORT)]
    else:
        args += ["--serverappio-api-address", _host_port(bind_host, SERVERAPPIO_PORT)]
    if release.fleet_port != HTTP_PORT:
        args += ["--fleet-api-address", _host_port(bind_host, release.fleet_port)]
    if release.control_port != HTTP_PORT:
        args += ["--control-api-address", _host_port(bind_host, release.control_port)]
    return args + list(release.superlink_flags)


def superexec_args(*, version: str, runtime_address: str = "127.0.0.1:9094") -> list[str]:
    """The `flower-superexec` argv of the ClientApp SuperExec paired with a SuperNode run with
    `--isolation process`: it pulls ClientApp tasks from that SuperNode's ClientAppIO/Runtime
    API (the SuperNode's own, local and plain, as `supernode_args` binds it)."""
    release = _release(version)
    args = [release.superexec_address_flag, runtime_address, "--insecure"]
    if release.superexec_plugin_type:
        args += ["--plugin-type", "clientapp"]
    return args


def register_node_args(version: str, public_key: str, cli_dir: str) -> list[str]:
    """`flwr` argv registering a SuperNode's OpenSSH public key file.

    `cli_dir` holds the file `cli_connection` wrote: from 1.26 run it with FLWR_HOME=cli_dir,
    for 1.25 it is the app directory named on the command line. The JSON it prints is read by
    `registered_node_id` (the exit status is 0 even on failure).
    """
    return ["supernode", "register", public_key, *_where(version, cli_dir), "--format", "json"]


def unregister_node_args(version: str, node_id: int, cli_dir: str) -> list[str]:
    """`flwr` argv unregistering a SuperNode by the node id its registration returned."""
    where = _where(version, cli_dir)
    return ["supernode", "unregister", str(node_id), *where, "--format", "json"]


MAX_NODE_ID = 2**64 - 1
"""Flower's node ids are unsigned 64-bit integers."""


def registered_node_id(stdout: str) -> int | None:
    """The node id from `flwr supernode register --format json`, None when it failed or is not
    a node id (a JSON integer 1..2**64-1: never a bool, a float, a negative number that a later
    `unregister` argv would read as an option)."""
    try:
        return node_id_of(json.loads(stdout))
    except ValueError:
        return None


def node_id_of(answer: object) -> int | None:
    """The node id of register's parsed JSON answer (see `registered_node_id`)."""
    if not isinstance(answer, dict) or answer.get("success") is not True:
        return None
    node_id = answer.get("node-id")
    valid = type(node_id) is int and 0 < node_id <= MAX_NODE_ID
    return node_id if valid else None


CLI_CONNECTION = "fl-agent"


def _where(version: str, cli_dir: str) -> list[str]:
    if _release(version).cli_config_toml:
        return [CLI_CONNECTION]
    return [cli_dir, CLI_CONNECTION]


def cli_connection(version: str, address: str, root_certificates: str | None) -> tuple[str, str]:
    """Where the `flwr` CLI of `version` reads its SuperLink connection and that file's text:
    ("config.toml", ...) under $FLWR_HOME from 1.26, ("pyproject.toml", ...) of an app
    directory for 1.25 (a minimal app: the CLI only loads it for its federation table).
    """
    tls = (
        f"root-certificates = {json.dumps(root_certificates)}"
        if root_certificates
        else "insecure = true"
    )
    if _release(version).cli_config_toml:
        text = (
            f'[superlink]\ndefault = "{CLI_CONNECTION}"\n\n'
            f"[superlink.{CLI_CONNECTION}]\naddress = {json.dumps(address)}\n{tls}\n"
        )
        return "config.toml", text
    text = (
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "fl-agent-control"\nversion = "1.0.0"\n\n'
        '[tool.flwr.app]\npublisher = "fl-agent"\n\n'
        '[tool.flwr.app.components]\nserverapp = "none:app"\nclientapp = "none:app"\n\n'
        f'[tool.flwr.federations]\ndefault = "{CLI_CONNECTION}"\n\n'
        f"[tool.flwr.federations.{CLI_CONNECTION}]\naddress = {json.dumps(address)}\n{tls}\n"
    )
    return "pyproject.toml", text
