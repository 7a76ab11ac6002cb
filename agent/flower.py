"""The Flower versions the agent supports and each one's `flower-supernode` contract.

One table, keyed by major.minor, is the single source of truth for the SuperNode's arguments,
the SuperLink's fleet port and the image naming. Facts: ENVIRONMENT.md "Flower" and
reference/user-pain.md section 7.
"""

from __future__ import annotations

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

    Verified by running 1.25.0 and 1.42.0; the rows between come from the wheels' source and the
    release notes (docs/flower-versions.md).
    """

    first: tuple[int, int]
    last: tuple[int, int]
    fleet_port: int
    fleet_transport: str
    note: str
    control_port: int = 9093
    """Where the `flwr` CLI reaches the SuperLink's Control API (HTTP on 8000 from 1.37)."""
    runtime_host_port: bool = False
    """SuperNode's ClientAppIO/Runtime API set by --host/--port; --clientappio-api-address is
    rejected from 1.35 on."""
    cli_config_toml: bool = True
    """`flwr` reads SuperLink connections from $FLWR_HOME/config.toml (1.26 on), not from the
    app's [tool.flwr.federations] (which it then rewrites in place)."""
    superlink_flags: tuple[str, ...] = ()
    """Extra flags for a local SuperLink whose apps' dependencies are preinstalled."""


_NO_UV_SYNC = ("--disable-runtime-dependency-installation",)

RELEASES: tuple[FlowerRelease, ...] = (
    FlowerRelease(
        (1, 25), (1, 25), 9092, "grpc-rere", "Fleet API over gRPC on 9092", cli_config_toml=False
    ),
    FlowerRelease((1, 26), (1, 34), 9092, "grpc-rere", "Fleet API over gRPC on 9092"),
    FlowerRelease(
        (1, 35),
        (1, 36),
        9092,
        "grpc-rere",
        "SuperNode Runtime API by --host/--port",
        runtime_host_port=True,
        superlink_flags=_NO_UV_SYNC,
    ),
    FlowerRelease(
        (1, 37),
        (1, 39),
        9092,
        "grpc-rere",
        "Control API over HTTP on the SuperLink's port 8000",
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
) -> list[str]:
    """The `flower-supernode` argv (after the entrypoint) for Flower `version` (X.Y.Z).

    The ClientAppIO (Runtime) API address is spelled per release: --clientappio-api-address
    up to 1.34, --host/--port from 1.35. 0 for retries or wait time means unlimited, which is
    flower-supernode's own default, so the flag is left out. Values are single argv elements:
    no shell ever sees them.
    """
    if insecure:
        args = ["--insecure"]
    elif root_certificates:
        args = ["--root-certificates", root_certificates]
    else:
        args = []  # TLS against the system's trusted CAs
    args += ["--superlink", superlink, "--isolation", isolation]
    release = release_for(version)
    if release is None:
        raise ValueError(f"Flower {version} is outside {supported_range()}")
    if release.runtime_host_port:
        host, _, port = clientappio_address.rpartition(":")
        args += ["--host", host, "--port", port]
    else:
        args += ["--clientappio-api-address", clientappio_address]
    if node_config:  # one argument: a value is never read as a flag of its own
        args.append(f"--node-config={node_config}")
    if max_retries:
        args += ["--max-retries", str(max_retries)]
    if max_wait_time:
        args += ["--max-wait-time", str(max_wait_time)]
    return args
