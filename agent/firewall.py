"""Inbound ports the appliance's firewall opens for the superlink role.

The image's firewall (systemd/fl-agent-firewall.nft, its own nftables table `inet fl_agent`)
denies every inbound port but SSH; it loads the drop-ins in /etc/fl-agent/firewall.d/ with
itself. A SuperLink's SuperNodes dial its Fleet API port from other VMs, so the superlink role
writes its drop-in there (kept across reboots: the firewall loads it before the network is up)
and, on the live system, adds the port to the loaded set at once with the same `nft -f`.

Only the Fleet API port is opened. The Control API (runs, node registration) has no user
authentication in this setup: up to 1.39 it listens on a port of its own, which stays closed
(operators reach it from the VM, or open it with a drop-in of their own); from 1.40 it shares
port 8000 with the Fleet API, as Flower serves them, so whoever reaches the Fleet API reaches
it too: limit who reaches the SuperLink VM with OpenNebula security groups.
"""

from __future__ import annotations

from pathlib import Path

from agent.atomicfile import write_atomic
from agent.command import Runner, run_command
from agent.errors import Problem
from agent.outcome import problem
from agent.paths import Root

DROP_IN = "/etc/fl-agent/firewall.d/superlink.nft"
TABLE = ("inet", "fl_agent")
NFT_TIMEOUT_S = 30


def drop_in_text(ports: tuple[int, ...]) -> str:
    """The drop-in adding `ports` to the table's inbound TCP set."""
    elements = ", ".join(str(p) for p in sorted(set(ports)))
    return (
        "# fl-agent superlink role: the Fleet API port SuperNodes dial (agent/firewall.py)\n"
        f"add element {' '.join(TABLE)} inbound_tcp {{ {elements} }}\n"
    )


def open_ports(root: Root, ports: tuple[int, ...], runner: Runner | None) -> Problem | None:
    """Write the drop-in under `root`; with a `runner` (the live system only), add the ports
    to the loaded table too. A table that is not loaded (firewall off, nft absent) is left as
    it is: nothing to open. A failure is a problem for the record, never an exception."""
    path = root.path(DROP_IN)
    text = drop_in_text(ports)
    try:
        if not _same(path, text):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text, mode=0o644, backup=True)
    except OSError as exc:
        return problem("firewall_not_opened", DROP_IN, str(exc.strerror or exc))
    if runner is None or not _table_loaded(runner):
        return None
    done = runner(["nft", "-f", str(path)], timeout=NFT_TIMEOUT_S)
    if done.ok:
        return None
    return problem("firewall_not_opened", DROP_IN, (done.output or "nft failed").strip()[:300])


def live_runner(root: Root) -> Runner | None:
    """The command runner on the live system (root `/`); none on a fixture root, whose
    firewall is the host's."""
    return run_command if root.prefix.resolve() == Path("/") else None


def _table_loaded(runner: Runner) -> bool:
    return runner(["nft", "list", "table", *TABLE], timeout=NFT_TIMEOUT_S).ok


def _same(path: Path, text: str) -> bool:
    try:
        return path.read_text() == text
    except (OSError, UnicodeDecodeError):
        return False
