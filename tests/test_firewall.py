"""The superlink role's Fleet API port in the image's firewall (agent/firewall.py): the drop-in
the firewall unit loads at boot, and `nft -f` of it on the live system when the table is loaded.
The runner stands in for `nft` (tests never touch the host's nftables); the appliance test
(tests/test_appliance.py) loads such a drop-in with the real firewall in a booted image."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent import firewall
from agent.command import RunResult
from agent.paths import Root

REPO = Path(__file__).resolve().parent.parent


class Nft:
    """Records argv; `list table` answers as nft does with or without the table loaded."""

    def __init__(self, loaded: bool = True, load_rc: int = 0) -> None:
        self.loaded, self.load_rc, self.calls = loaded, load_rc, []

    def __call__(self, argv, *, timeout):
        self.calls.append(list(argv))
        if argv[1] == "list":
            rc = 0 if self.loaded else 1
            return RunResult(rc, "" if self.loaded else "Error: No such file or directory")
        return RunResult(self.load_rc, "" if self.load_rc == 0 else "Error: syntax error")


def test_the_drop_in_adds_the_fleet_port_to_the_inbound_set(tmp_path):
    root = Root(tmp_path)
    assert firewall.open_ports(root, (9092,), None) is None
    path = root.path(firewall.DROP_IN)
    assert path.read_text().splitlines()[-1] == "add element inet fl_agent inbound_tcp { 9092 }"
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_loaded_table_gets_the_port_at_once_and_an_unchanged_file_is_not_rewritten(tmp_path):
    root = Root(tmp_path)
    nft = Nft()
    assert firewall.open_ports(root, (8000,), nft) is None
    path = root.path(firewall.DROP_IN)
    assert nft.calls == [["nft", "list", "table", "inet", "fl_agent"], ["nft", "-f", str(path)]]
    before = os.stat(path).st_ino
    assert firewall.open_ports(root, (8000,), Nft()) is None
    assert os.stat(path).st_ino == before  # same text: not replaced


def test_no_loaded_table_means_nothing_to_open(tmp_path):
    nft = Nft(loaded=False)
    assert firewall.open_ports(Root(tmp_path), (8000,), nft) is None
    assert [c[1] for c in nft.calls] == ["list"]


def test_a_refused_load_is_a_problem_not_an_exception(tmp_path):
    found = firewall.open_ports(Root(tmp_path), (8000,), Nft(load_rc=1))
    assert found is not None and found.name == "firewall_not_opened"
    assert "syntax error" in found.message


def test_a_version_change_rewrites_the_drop_in_keeping_a_backup(tmp_path):
    root = Root(tmp_path)
    firewall.open_ports(root, (9092,), None)
    firewall.open_ports(root, (8000,), None)
    path = root.path(firewall.DROP_IN)
    assert "{ 8000 }" in path.read_text()
    assert "{ 9092 }" in path.with_name(path.name + ".fl-agent.bak").read_text()


def test_fixture_roots_never_reach_the_hosts_nftables(tmp_path):
    assert firewall.live_runner(Root(tmp_path)) is None


def test_the_drop_in_is_valid_nftables_beside_the_images_table(tmp_path):
    """The real `nft -c` (check only: nothing is applied to this machine) reads the image's
    table followed by the drop-in, as the firewall unit loads them."""
    table = (REPO / "systemd/fl-agent-firewall.nft").read_text()
    firewall.open_ports(Root(tmp_path), (9092, 8000), None)
    drop_in = Root(tmp_path).path(firewall.DROP_IN).read_text()
    combined = tmp_path / "combined.nft"
    kept = [line for line in table.splitlines() if not line.startswith("include ")]
    combined.write_text("\n".join(kept) + "\n" + drop_in)
    checked = subprocess.run(["nft", "-c", "-f", str(combined)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    combined.write_text("\n".join(kept) + "\n" + drop_in.replace("}", ""))
    assert subprocess.run(["nft", "-c", "-f", str(combined)], capture_output=True).returncode
