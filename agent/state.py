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
from agent.outcome import problem
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
        return problem("state_write_failed", str(path), f"{what}: {exc.strerror or exc}")
    return None


def read_state(root: Root) -> dict | None:
    """The last boot's record, or None when no boot has run (or the file is unreadable)."""
    return read_json_object(state_path(root))


def read_json_object(path: Path) -> dict | None:
    """A JSON object the agent wrote; None when absent, unreadable or not an object (a file
    another version or a hand edit left must not become a traceback)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def file_lock(path: Path, *, wait_s: float = 0.0, poll_s: float = 0.2) -> Iterator[bool]:
    """Hold an fcntl lock on `path`, waiting up to `wait_s`; yields whether it is held.

    The kernel drops the lock when its holder dies: a killed process never leaves it behind.
    OSError when the lock file cannot be created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    held = False
                    break
                time.sleep(poll_s)
        yield held
    finally:
        os.close(fd)


@contextlib.contextmanager
def boot_lock(root: Root, *, wait_s: float = 0.0, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the boot lock; wait up to `wait_s` for another boot, then raise `boot_in_progress`."""
    path = root.run_dir / LOCK_FILE
    with contextlib.ExitStack() as stack:
        try:
            held = stack.enter_context(file_lock(path, wait_s=wait_s, poll_s=poll_s))
        except OSError as exc:
            detail = f"cannot create the boot lock: {exc.strerror or exc}"
            raise AgentError(problem("run_dir_unwritable", str(path), detail)) from None
        if not held:
            raise AgentError(problem("boot_in_progress", str(path)))
        yield
