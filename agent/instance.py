"""Which agent instance this is: the one place that names its containers and local port.

An appliance runs one agent and leaves this unset: the containers are `flower-supernode` and
`flower-superexec`, and the SuperNode's local ClientAppIO/Runtime API is Flower's own default,
127.0.0.1:9094. Several SuperNode agents on one Docker engine (a test, a demo on one machine:
each with its own `--root`) share the host network and the container namespace; each gets a
number N (`fl-agent --instance N`, or FL_AGENT_INSTANCE=N in its environment, 1 to
MAX_INSTANCE): its containers are named `flower-supernode-N` / `flower-superexec-N` and its
local API moves to 127.0.0.1:(INSTANCE_PORT_BASE + N), a range no Flower default uses
(8000, 9091 to 9095, 9099).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from agent.errors import AgentError, Problem

ENV = "FL_AGENT_INSTANCE"
MAX_INSTANCE = 99
SUPERNODE = "flower-supernode"
SUPEREXEC = "flower-superexec"
SUPERLINK = "flower-superlink"
"""The superlink role's container: one per machine, whatever the instance."""
DEFAULT_LOCAL_PORT = 9094
"""flower-supernode's own default ClientAppIO/Runtime API port."""
INSTANCE_PORT_BASE = 39100


@dataclass(frozen=True)
class Instance:
    """An agent instance: None is the appliance's single agent."""

    number: int | None = None

    def _suffixed(self, base: str) -> str:
        return base if self.number is None else f"{base}-{self.number}"

    @property
    def supernode(self) -> str:
        """The SuperNode container's name."""
        return self._suffixed(SUPERNODE)

    @property
    def superexec(self) -> str:
        """The ClientApp SuperExec container's name (FL_ISOLATION=process)."""
        return self._suffixed(SUPEREXEC)

    @property
    def local_api_address(self) -> str:
        """Where the SuperNode serves its ClientAppIO/Runtime API (and its SuperExec dials)."""
        port = DEFAULT_LOCAL_PORT if self.number is None else INSTANCE_PORT_BASE + self.number
        return f"127.0.0.1:{port}"


def parse(text: str | None) -> Instance:
    """`text` (the --instance value or FL_AGENT_INSTANCE) as an Instance; unset/empty is the
    appliance's. Raises ValueError for anything but 1..MAX_INSTANCE in ASCII digits."""
    if text is None or text.strip() == "":
        return Instance()
    value = text.strip()
    if re.fullmatch(r"[0-9]{1,2}", value) and 1 <= int(value) <= MAX_INSTANCE:
        return Instance(int(value))
    raise ValueError(f"{ENV} must be a number from 1 to {MAX_INSTANCE}, not {value[:20]!r}")


def current() -> Instance:
    """This process's instance, from its environment (the CLI sets it from --instance);
    AgentError (invalid_value) when that is not one."""
    try:
        return parse(os.environ.get(ENV))
    except ValueError as exc:
        raise AgentError(Problem("invalid_value", ENV, str(exc), "unset it")) from None
