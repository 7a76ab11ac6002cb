"""The state file (the outcome of every boot) and the one-boot-at-a-time lock.

The state file lives at /var/lib/fl-agent/state.json (mode 0600, atomic writes, no secrets) and
is what `fl-agent status` reads. The lock is an fcntl lock on /run/fl-agent/boot.lock: the
kernel drops it when the holder dies, so a killed boot never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from agent.atomicfile import write_atomic
from agent.errors import AgentError, Problem
from agent.paths import Root

STATE_FILE = "state.json"
LOCK_FILE = "boot.lock"


def state_path(root: Root) -> Path:
    return root.state_dir / STATE_FILE


def write_state(root: Root, record: dict) -> Problem | None:
    """Write the boot record; a failure (full disk, read-only fs) is returned, not raised.

    The previous state file stays intact on failure: the write is atomic.
    """
    return write_private_json(state_path(root), record, "the state file")


def write_private_json(path: Path, data: dict, what: str) -> Problem | None:
    """`data` as JSON at `path` (0600, its directory 0700 when created, atomic); a failure
    (full disk, read-only fs) is returned as `state_write_failed`, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600)
    except OSError as exc:
        return Problem(
            "state_write_failed",
            str(path),
            f"could not write {what}: {exc.strerror or exc}",
            "free space or fix permissions under /var/lib/fl-agent; the node itself is unaffected",
        )
    return None


def read_state(root: Root) -> dict | None:
    """The last boot's record, or None when no boot has run (or the file is unreadable)."""
    try:
        return json.loads(state_path(root).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def boot_lock(root: Root, *, wait_s: float = 0.0, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the boot lock; wait up to `wait_s` for another boot, then raise `boot_in_progress`."""
    path = root.run_dir / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AgentError(
            Problem(
                "run_dir_unwritable",
                str(path),
                f"cannot create the boot lock: {exc.strerror or exc}",
                "/run must be a writable tmpfs (check `findmnt /run`)",
            )
        ) from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise AgentError(
                        Problem(
                            "boot_in_progress",
                            str(path),
                            "another fl-agent boot holds the lock",
                            "wait for it to finish (systemctl status fl-agent)",
                        )
                    ) from None
                time.sleep(poll_s)
        yield
    finally:
        os.close(fd)
