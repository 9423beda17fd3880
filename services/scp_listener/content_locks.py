"""Locks on stored content shared by every SCP process on the machine.

``Ingestor`` holds a lock per content stripe from its revision lookup to its commit, so that a
failed transaction can remove the file it placed without racing another ingest of the same
bytes. Its locks are threading locks: enough in one process. With several SCP processes the
same object arriving twice at once (a console retrying while its first try is still being
stored, on another process) could otherwise go: both place the file, one commits, the other
fails and removes the file the first one's row names. These locks add an ``flock`` on a file
per stripe under the object store, which the kernel releases when a process dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType


class StripeLock:
    """A threading lock (this process's threads) and an exclusive ``flock`` (other
    processes) on one lock file, held together."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> StripeLock:
        self._thread.acquire()
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread.release()


def shared_locks(store_root: Path, count: int) -> list[StripeLock]:
    """``count`` stripe locks every SCP process on the machine shares (lock files under
    ``<object store>/.locks``), for ``Ingestor(locks=...)``."""
    directory = store_root / ".locks"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return [StripeLock(directory / f"{i:02d}") for i in range(count)]
