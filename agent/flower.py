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

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class FlowerRelease:
    """What one range of Flower releases expects from the agent."""

    first: tuple[int, int]
    last: tuple[int, int]
    fleet_port: int
    fleet_transport: str
    note: str


RELEASES: tuple[FlowerRelease, ...] = (
    FlowerRelease((1, 25), (1, 39), 9092, "grpc-rere", "SuperLink Fleet API over gRPC on 9092"),
    FlowerRelease(
        (1, 40),
        (1, 42),
        8000,
        "http",
        "Fleet API over HTTP on the SuperLink's shared port 8000; --grpc-rere/--grpc-adapter gone",
    ),
)


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = _VERSION.match(text)
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


def supernode_args(
    *,
    superlink: str,
    insecure: bool,
    root_certificates: str | None,
    isolation: str,
    node_config: str | None,
    max_retries: int,
    max_wait_time: int,
    clientappio_address: str = "127.0.0.1:9094",
) -> list[str]:
    """The `flower-supernode` argv (after the entrypoint); every supported release takes these.

    0 for retries or wait time means unlimited, which is flower-supernode's own default, so
    the flag is left out. Values are single argv elements: no shell ever sees them.
    """
    if insecure:
        args = ["--insecure"]
    elif root_certificates:
        args = ["--root-certificates", root_certificates]
    else:
        args = []  # TLS against the system's trusted CAs
    args += ["--superlink", superlink, "--isolation", isolation]
    args += ["--clientappio-api-address", clientappio_address]
    if node_config:
        args += ["--node-config", node_config]
    if max_retries:
        args += ["--max-retries", str(max_retries)]
    if max_wait_time:
        args += ["--max-wait-time", str(max_wait_time)]
    return args
