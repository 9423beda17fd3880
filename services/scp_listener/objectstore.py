"""Content-addressed object store: one file per stored revision, named by its SHA-256.

A file is fsynced and renamed into place (and its directory fsynced) before the index row
that points to it commits, so the index never names a file a crash could lose.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

_CHUNK = 1 << 20


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / ".incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key_for(sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}.dcm"

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, source: Path, sha256: str) -> tuple[str, bool]:
        """Make ``source`` durable under its key (moving it when on the same filesystem).
        Returns the key and whether this call placed the file (``False``: it was there)."""
        key = self.key_for(sha256)
        target = self.path(key)
        if target.exists():
            return key, False
        if not target.parent.exists():
            target.parent.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        fd = os.open(source, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The receive spool is on another filesystem: copy into ours, then rename.
            staging = self._incoming / f"{sha256}.{os.getpid()}.part"
            with source.open("rb") as src, staging.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(staging, target)
        _fsync_dir(target.parent)
        return key, True

    def discard(self, key: str) -> None:
        """Remove a file that no committed index row names (its transaction failed). A crash
        before this runs leaves an unreferenced file, which is harmless: nothing points to it."""
        self.path(key).unlink(missing_ok=True)
