"""A writer killed (SIGKILL) at random points, hundreds of times: the file is always a whole
old or a whole new version, never partial; a backup, when there is one, is a whole copy.

Covers the three writers that replace system files: agent.atomicfile.write_atomic (with the
backup daemon.json gets), the toolkit's daemon.json merge, and the state file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

from agent.atomicfile import write_atomic
from agent.paths import Root
from agent.state import read_state, state_path, write_state
from agent.toolkit import configure_daemon_json, merged_daemon_json

KILLS = 300


def content(seq: int) -> str:
    """Version `seq` of a file: large enough to take several writes, checkable as a whole."""
    pad = hashlib.sha256(str(seq).encode()).hexdigest() * 2000  # 128 KB
    return json.dumps({"seq": seq, "pad": pad}, indent=4, sort_keys=True) + "\n"


def whole_version(text: str) -> int:
    """The version a file holds; fails the test unless it is exactly one whole version."""
    seq = json.loads(text)["seq"]
    assert text == content(seq), f"version {seq} is not whole"
    return seq


def killed_at_random(work: Callable[[], None], max_delay_s: float, rng: random.Random) -> bool:
    """Fork a child that runs `work` (forever or once), SIGKILL it after a random delay;
    whether the kill landed before the child finished."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            work()
        finally:
            os._exit(0)
    time.sleep(rng.uniform(0, max_delay_s))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status)


def write_forever(write: Callable[[int], None], start: int) -> Callable[[], None]:
    def work() -> None:
        seq = start
        while True:
            seq += 1
            write(seq)

    return work


def test_write_atomic_with_backup_killed_hundreds_of_times(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "etc/docker/daemon.json"
    backup = path.with_name("daemon.json.fl-agent.bak")
    write_atomic(path, content(0))
    seen = 0
    for _ in range(KILLS):
        killed = killed_at_random(
            write_forever(lambda s: write_atomic(path, content(s), backup=True), seen),
            0.02,
            rng,
        )
        assert killed
        now = whole_version(path.read_text())
        assert now >= seen  # never older than what a reader already saw
        seen = now
        if backup.exists():
            assert whole_version(backup.read_text()) <= now
    assert seen > KILLS / 2, "the writer hardly ever completed: the test proves nothing"
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in (path.name, backup.name)]
    assert all(name.startswith(".") and ".tmp." in name for name in leftovers)


def test_daemon_json_merge_killed_hundreds_of_times(tmp_path):
    """The toolkit's own daemon.json writer: the operator's file or the merged one, nothing else;
    the backup, when made, is the operator's file byte for byte."""
    rng = random.Random(2)
    root = Root(tmp_path)
    path = root.docker_daemon_json
    backup = path.with_name("daemon.json.fl-agent.bak")
    original = json.dumps({"log-driver": "journald", "pad": "x" * 100_000}) + "\n"
    merged = json.dumps(merged_daemon_json(json.loads(original)), indent=4, sort_keys=True) + "\n"
    outcomes = {"original": 0, "merged": 0}
    for _ in range(KILLS):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(original)
        backup.unlink(missing_ok=True)
        killed_at_random(lambda: configure_daemon_json(root), 0.006, rng)
        text = path.read_text()
        assert text in (original, merged)
        outcomes["original" if text == original else "merged"] += 1
        if backup.exists():
            assert backup.read_text() == original
        if text == merged:
            assert backup.read_text() == original  # no merge without the operator's copy
    assert outcomes["original"] and outcomes["merged"], outcomes


def test_state_file_killed_hundreds_of_times(tmp_path):
    rng = random.Random(3)
    root = Root(tmp_path)

    def record(seq: int) -> dict:
        return {"state": "RUNNING", "seq": seq, "pad": content(seq)}

    assert write_state(root, record(0)) is None
    seen = 0
    for _ in range(KILLS):
        assert killed_at_random(
            write_forever(lambda s: write_state(root, record(s)), seen), 0.02, rng
        )
        state = read_state(root)
        assert state is not None, "the state file is unreadable"
        assert state == record(state["seq"]) and state["seq"] >= seen
        text = state_path(root).read_text()
        assert text == json.dumps(state, indent=2, sort_keys=True) + "\n"
        assert state_path(root).stat().st_mode & 0o777 == 0o600
        seen = state["seq"]
    assert seen > KILLS / 2


def test_killed_writer_leaves_no_readable_partial_under_another_name(tmp_path: Path):
    """Temp files a kill leaves behind are dot-files that no reader opens (`read_state` reads
    state.json only), and the next write still succeeds."""
    rng = random.Random(4)
    root = Root(tmp_path)
    for _ in range(20):
        killed_at_random(write_forever(lambda s: write_state(root, {"seq": s}), 0), 0.01, rng)
    assert write_state(root, {"seq": -1}) is None
    assert read_state(root) == {"seq": -1}
