"""Reports not delivered yet, on disk: what waits is always one merged report.

Files are `<seq>-<pid>.json` (0600, never the token) in the queue directory. A report queued
while another process holds the lock gets a file of its own; the holder takes every file,
merges them in order into one report and, when that one cannot be delivered either, leaves it
behind as the only file. A file that is not a report (`null`, `[]`, garbage, unreadable) is
moved aside as `<name>.bad` and named in the log: it never stops a later boot.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import log
from agent.atomicfile import write_atomic
from agent.onegate.wire import Report


@dataclass(frozen=True)
class Backlog:
    """The queued reports merged into one (None: nothing queued) and the files it came from."""

    report: Report | None
    files: tuple[Path, ...]


class Outbox:
    """The queue directory; the sequence continues from the files there, not from the clock,
    which NTP may step backwards while a VM boots."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.json"))

    def append(self, report: Report) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        last = max((_seq(f) for f in self.files()), default=0)
        name = f"{last + 1:012d}-{os.getpid():07d}.json"
        write_atomic(self.directory / name, report.to_json(), mode=0o600)

    def take(self) -> Backlog:
        """Every queued report, merged in order (call with the lock held)."""
        reports: list[Report] = []
        files: list[Path] = []
        for path in self.files():
            try:
                reports.append(Report.from_json(path.read_text()))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._set_aside(path, exc)
                continue
            files.append(path)
        merged = functools.reduce(Report.merged, reports) if reports else None
        return Backlog(merged, tuple(files))

    def done(self, backlog: Backlog) -> None:
        for path in backlog.files:
            path.unlink(missing_ok=True)

    def keep(self, backlog: Backlog, report: Report) -> None:
        """`report` (the backlog and what joined it) becomes the queue's only report."""
        self.append(report)
        self.done(backlog)

    def _set_aside(self, path: Path, exc: Exception) -> None:
        aside = path.with_name(path.name + ".bad")
        with contextlib.suppress(OSError):
            path.replace(aside)
        log.get("onegate").error(
            "onegate_queue_file_set_aside", file=str(path), moved_to=aside.name, error=str(exc)
        )

    @contextlib.contextmanager
    def locked(self, deadline: float) -> Iterator[bool]:
        """Hold the queue's lock (waiting until `deadline` at most); yields whether it is held.

        Only the holder sends, so two processes (the boot, the re-send timer) never interleave.
        """
        from agent.state import file_lock

        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        wait_s = max(0.0, deadline - time.monotonic())
        with file_lock(self.directory / ".lock", wait_s=wait_s, poll_s=0.02) as held:
            yield held


def _seq(path: Path) -> int:
    head = path.name.split("-")[0]
    return int(head) if head.isdigit() else 0
