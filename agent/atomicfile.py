"""Atomic writes of system files: temp file in the same directory, fsync, rename, backup.

A reader (or a crash) only ever sees the old content or the new content, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


def write_atomic(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    backup: bool = False,
    owner: tuple[int, int] | None = None,
) -> Path | None:
    """Replace `path` with `data` atomically; return the backup path when one was made.

    With `backup`, the current file (if any) is first copied to `<path>.fl-agent.bak`,
    so an operator can always get back what was there before the agent touched it. `owner`
    (uid, gid) is set before the rename: a key for a container's non-root user is never
    visible under another owner.
    """
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    backup_path = None
    if backup and path.exists():
        backup_path = path.with_name(path.name + ".fl-agent.bak")
        _copy_atomic(path, backup_path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return backup_path


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp.{os.getpid()}")
    shutil.copy2(src, tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, dst)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
