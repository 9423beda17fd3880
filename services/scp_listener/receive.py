"""The receive spool: each C-STORE data set is hashed while its bytes arrive.

pynetdicom (``STORE_RECV_CHUNKED_DATASET``) writes a received data set into a
``NamedTemporaryFile`` of its ``dimse_messages`` module, fragment by fragment, and the handler
gets that file's path. The store is content-addressed, so the handler needs the file's SHA-256;
reading the whole file back to hash it cost 0.8 ms per 512 KiB slice here, hashing the bytes
as they are written 0.55 ms. ``install`` swaps that one name for ``SpoolFile``, which is the
same temporary file plus a running digest; ``content_of`` returns the digest for a request, or
None when the file is not one of ours (a pynetdicom that no longer writes through that name),
in which case the caller hashes the file as before.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any

from pynetdicom import dimse_messages


class SpoolFile:
    """A ``NamedTemporaryFile`` that hashes what is written to it (pynetdicom writes the File
    Meta Information and each data set fragment through ``write``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._file = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - pynetdicom closes it
        self.name = self._file.name
        self.file = self._file.file  # pynetdicom flushes through it after each fragment
        self._digest = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self._size += len(data)
        return self._file.write(data)

    def close(self) -> None:
        self._file.close()

    def content(self) -> tuple[str, int]:
        """SHA-256 (hex) and size of everything written so far."""
        return self._digest.hexdigest(), self._size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def install() -> None:
    dimse_messages.NamedTemporaryFile = SpoolFile  # type: ignore[attr-defined,assignment]


def content_of(request: Any) -> tuple[str, int] | None:
    """The SHA-256 and size of a C-STORE request's received file, if hashed on arrival."""
    spool = getattr(request, "_dataset_file", None)
    return spool.content() if isinstance(spool, SpoolFile) else None
