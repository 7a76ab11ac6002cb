"""The appliance's FL_* variables as OpenNebula user inputs: one table for VM and service templates.

A user input is ``M|O`` (mandatory/optional) ``|type|description|options|default`` (OpenNebula
VM template reference, "User Inputs"; the same strings go into a OneFlow template's
``user_inputs``). Types used here: ``list`` (options comma-separated), ``text``, ``text64``
(the value is base64-encoded by the front-end), ``number`` and ``number-float``.
An empty default leaves the variable empty, which the agent reads as unset (issue 2, section 4).
Names, accepted forms and defaults follow agent/config.py.

One appliance image runs either role (FL_ROLE), so its VM template asks every input. A OneFlow
service asks each input once where it means something: the shared ones at service level, the
SuperLink's own TLS material at the superlink role, the SuperNode-only ones at the supernode role;
FL_ROLE itself is set by the role (agent/one/service.py), never asked there.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent import flower
from agent.config import DEFAULT_DATA_DIR, ISOLATIONS, LOG_LEVELS, ROLES


@dataclass(frozen=True)
class UserInput:
    name: str
    description: str
    kind: str = "text"
    options: tuple[str, ...] = ()
    default: str = ""

    def spec(self) -> str:
        """The ``O|type|description|options|default`` string."""
        return "|".join(("O", self.kind, self.description, ",".join(self.options), self.default))


def _choice(name: str, description: str, options: tuple[str, ...], default: str) -> UserInput:
    return UserInput(name, description, "list", options, default)


INPUTS: tuple[UserInput, ...] = (
    _choice(
        "FL_ROLE", "What this VM runs: a SuperNode or the federation's SuperLink", ROLES, ROLES[0]
    ),
    _choice(
        "FL_GPU_ENABLED", "Use a GPU (AUTO: when one validates)", ("YES", "NO", "AUTO"), "AUTO"
    ),
    _choice("FL_GPU_REQUIRED", "Fail instead of falling back to CPU", ("YES", "NO"), "NO"),
    UserInput(
        "FL_CUDA_VISIBLE_DEVICES",
        "GPUs for the ClientApp: all or comma list of indices / GPU-uuid / MIG-uuid (empty: all)",
    ),
    UserInput(
        "FL_GPU_MEMORY_FRACTION",
        "GPU memory fraction per process 0 < f <= 1 (empty: no limit)",
        kind="number-float",
    ),
    UserInput("FL_SUPERLINK_ADDRESS", "SuperLink host:port (empty: found through OneGate)"),
    UserInput(
        "FL_NODE_CONFIG",
        "Flower node config: space-separated key=value (empty: partition id from OneGate)",
    ),
    UserInput(
        "FLOWER_VERSION",
        f"Flower version X.Y.Z from {flower.supported_range()} (empty: the image's)",
    ),
    UserInput("FL_SUPERNODE_IMAGE", "SuperNode image reference (empty: from the version)"),
    _choice("FL_ISOLATION", "ClientApp isolation", ISOLATIONS, ISOLATIONS[0]),
    _choice("FL_LOG_LEVEL", "Log level", LOG_LEVELS, "INFO"),
    UserInput(
        "FL_MAX_RETRIES", "SuperLink connection retries (0: unlimited)", "number", default="0"
    ),
    UserInput(
        "FL_MAX_WAIT_TIME",
        "Seconds to wait for the SuperLink (0: unlimited)",
        "number",
        default="0",
    ),
    _choice("FL_TLS_ENABLED", "TLS to the SuperLink", ("YES", "NO"), "YES"),
    UserInput(
        "FL_SSL_CA_CERT",
        "CA certificate in PEM: a SuperNode's trust (empty: from OneGate), "
        "a SuperLink's issuer of FL_SSL_CERT",
        "text64",
    ),
    UserInput(
        "FL_SSL_CERT",
        "SuperLink only: server certificate in PEM, issued by FL_SSL_CA_CERT (empty: generated)",
        "text64",
    ),
    UserInput("FL_SSL_KEY", "SuperLink only: the key of FL_SSL_CERT in PEM", "text64"),
    _choice(
        "FL_NODE_AUTH",
        "SuperNode authentication (keys of the service's own SuperNodes)",
        ("YES", "NO"),
        "YES",
    ),
    _choice(
        "FL_TOOLKIT_INSTALL", "Install the NVIDIA Container Toolkit", ("AUTO", "NEVER"), "AUTO"
    ),
    UserInput("FL_DATA_DIR", "Data directory mounted into the SuperNode", default=DEFAULT_DATA_DIR),
)

SHARED_INPUTS = ("FLOWER_VERSION", "FL_TLS_ENABLED", "FL_LOG_LEVEL", "FL_NODE_AUTH")
"""Inputs that mean the same to the SuperLink and the SuperNodes: asked once per service."""

_SUPERLINK_ONLY = ("FL_SSL_CERT", "FL_SSL_KEY")
ROLE_INPUTS: dict[str, tuple[str, ...]] = {
    "superlink": ("FL_SSL_CA_CERT", *_SUPERLINK_ONLY),
    "supernode": tuple(
        i.name for i in INPUTS if i.name not in (*SHARED_INPUTS, *_SUPERLINK_ONLY, "FL_ROLE")
    ),
}
"""Inputs asked at each role of a service, besides SHARED_INPUTS."""


def by_name(names: tuple[str, ...]) -> dict[str, str]:
    """name -> spec for the inputs named, in table order."""
    return {i.name: i.spec() for i in INPUTS if i.name in names}
