"""The root prefix: every path the agent reads or writes on the system goes through here.

Tests point the root at a fixture tree, so no test touches the machine's own system files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "FL_AGENT_ROOT"


@dataclass(frozen=True)
class Root:
    """A root prefix under which absolute system paths are resolved."""

    prefix: Path = Path("/")

    @classmethod
    def from_env(cls, explicit: str | None = None) -> Root:
        """`--root` wins, then $FL_AGENT_ROOT, then `/`."""
        value = explicit or os.environ.get(ROOT_ENV) or "/"
        return cls(Path(value))

    def path(self, system_path: str | os.PathLike[str]) -> Path:
        """Map an absolute system path (`/etc/docker/daemon.json`) under the prefix."""
        relative = str(system_path).lstrip("/")
        return self.prefix / relative if relative else self.prefix

    # Well-known locations, one place for each.
    @property
    def one_context_dir(self) -> Path:
        return self.path("/var/run/one-context")

    @property
    def state_dir(self) -> Path:
        return self.path("/var/lib/fl-agent")

    @property
    def run_dir(self) -> Path:
        return self.path("/run/fl-agent")

    @property
    def validations_dir(self) -> Path:
        return self.path("/run/fl-agent/validations")

    @property
    def docker_daemon_json(self) -> Path:
        return self.path("/etc/docker/daemon.json")

    @property
    def sys(self) -> Path:
        return self.path("/sys")

    @property
    def proc(self) -> Path:
        return self.path("/proc")

    @property
    def dev(self) -> Path:
        return self.path("/dev")
