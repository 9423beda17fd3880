"""The receive spool: each C-STORE data set is hashed while its bytes arrive.

pynetdicom (``STORE_RECV_CHUNKED_DATASET``) writes a received data set into a
``NamedTemporaryFile`` of its ``dimse_messages`` module, fragment by fragment, and the handler
gets that file's path. The store is content-addressed, so the handler needs the file's SHA-256;
reading the whole file back to hash it cost 0.8 ms per 512 KiB slice here, hashing the bytes
as they are written 0.55 ms. ``install`` swaps that one name for ``SpoolFile``, which is the
same temporary file plus a running digest; ``content_of`` returns the digest for a request, or
None when the file is not one of ours (a pynetdicom that no longer writes through that name),
in which case the caller hashes the file as before.

Spool files live in one directory of ours (``configure``), emptied at start, and a spool file
removes itself when pynetdicom drops it without handing it to the handler (a connection cut
mid-data set): its name is unlinked when the object is collected. A file the handler moved
into the object store is gone from the spool already, so that unlink finds nothing.

Hashing took a sixth of the receiving thread's time, in the way of reading the peer's next
PDU. A fragment of ``HASH_BEHIND_MIN`` bytes or more is hashed by a thread of a small pool
while that thread goes on reading (hashlib releases the GIL on such a buffer); a file's
fragments are hashed in order, by one pool thread at a time, and ``content`` waits for the
last. Smaller objects (a treatment record is one fragment of a few KiB) are hashed as before,
where handing them over would cost more than it saves. The bytes handed over are never
changed afterwards: every caller passes ``bytes`` or a view of the buffer one PDU was read
into, which nothing reuses (pdu_reader).

Creating a file waits for the filesystem: for its journal, busy with the previous object's
flushes (0.3-0.5 ms per object on one machine), or, on ext4 without a journal, for a scan past
the inodes freed in the last minutes (up to 1 ms after a mass deletion). ``SpoolReserve``
creates files ahead, in a thread of its own, so the spool holds up to ``RESERVE`` empty files
besides the ones arriving; a file pynetdicom writes holds at least its 132-byte preamble. The
thread tops the reserve up once half of it is taken, one wake-up per sixteen files: waking it
for every file cost the ten-sender run more than it saved (the tenth session), sixteen at a
time took 2-3 % off its two-process runs (docs/scp_performance.md, "The thirteenth
session"), so every connection takes its files from the reserve.

Hashing behind is done only while the process serves one connection (``connections.alone``):
with several, its handovers cost more than they save.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
import threading
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    dimse_messages,
)

from services.scp_listener import connections, inline_store, pdu_reader

log = structlog.get_logger(__name__)

RESERVE = 32  # empty spool files kept ready (each an open descriptor), for every association
HASH_BEHIND_MIN = 64 * 1024  # a fragment this long is hashed while the next one is read
_HASHERS = 2  # threads hashing behind, shared by every association of the process
# Fragments waiting to be hashed, per file, beyond which its writer waits: with the one being
# hashed and PDUs of at most 256 KiB (RTOPS_SCP_MAX_PDU), at most 1.5 MiB per association
# (24 MiB for a process's sixteen).
_MAX_BEHIND = 4

# None: the system's temporary directory (pynetdicom's default).
_spool_dir: Path | None = None
_reserve: SpoolReserve | None = None


class SpoolReserve:
    """Empty spool files created ahead by a thread of their own; ``take`` never waits. The
    thread is woken once fewer than half of ``depth`` are ready, and fills up to ``depth``."""

    def __init__(self, folder: Path, depth: int = RESERVE) -> None:
        self._folder = folder
        self._depth = depth
        self._ready: deque[tuple[str, int]] = deque()
        self._wanted = threading.Event()
        self._closed = False
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._fill, name="spool-reserve", daemon=True)
        self._wanted.set()
        self._thread.start()

    def take(self) -> tuple[str, int] | None:
        """A ready file's name and open descriptor, or None when none is ready."""
        try:
            ready = self._ready.popleft()
        except IndexError:
            ready = None
        if len(self._ready) < self._depth // 2:
            self._wanted.set()
        return ready

    def _fill(self) -> None:
        while not self._closed:
            self._wanted.wait()
            self._wanted.clear()
            while not self._closed and len(self._ready) < self._depth:
                try:
                    fd, name = tempfile.mkstemp(suffix=".dcm", dir=self._folder)
                except OSError as exc:  # the spool full or gone: receiving reports it
                    log.warning("could not create a spool file ahead", error=str(exc))
                    break
                self._ready.append((name, fd))

    def close(self) -> None:
        """Stop filling and remove the ready files (only their descriptors in a forked
        child: the files are its parent's)."""
        self._closed = True
        self._wanted.set()
        self._thread.join(5)
        while self._ready:
            name, fd = self._ready.popleft()
            os.close(fd)
            if os.getpid() == self._pid:
                _remove(name)


def configure(spool: Path) -> int:
    """Receive into ``spool`` from now on, after removing whatever a previous run left there
    (a crash or kill mid-transfer). Returns how many leftover files with data were removed
    (a reserve's empty files go without a word)."""
    global _spool_dir, _reserve
    if _reserve is not None:
        _reserve.close()
        _reserve = None
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    removed = 0
    for leftover in spool.iterdir():
        if leftover.is_file():
            removed += leftover.stat().st_size > 0
            leftover.unlink(missing_ok=True)
    if removed:
        log.warning(
            f"removed {removed} partial received file(s) left in the spool by an earlier run",
            spool=str(spool),
        )
    _spool_dir = spool
    _reserve = SpoolReserve(spool)
    return removed


def _remove(name: str) -> None:
    # Missing: moved into the object store, or removed by pynetdicom / the handler.
    with contextlib.suppress(OSError):
        os.unlink(name)


class _HashBehind:
    """A file's fragments hashed in order, by a thread of the pool, behind the thread that
    writes them. ``done`` is clear while fragments wait or one is being hashed."""

    def __init__(self, digest: Any) -> None:
        self._digest = digest
        self._waiting: deque[Any] = deque()
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.done.set()
        self.failed = False

    def add(self, data: Any) -> None:
        with self._lock:
            if self.failed:
                return
            self._waiting.append(data)
            running = not self.done.is_set()
            self.done.clear()
            backlog = len(self._waiting)
        if not running:
            _hashers().submit(self._drain)
        elif backlog > _MAX_BEHIND:
            # A drain starved of CPU would let a large object's PDUs pile up in memory.
            self.done.wait()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self.done.set()
                    return
                data = self._waiting.popleft()
            try:
                self._digest.update(data)
            except BaseException:
                # The digest no longer names the bytes: the handler hashes the file instead.
                log.exception("could not hash a received fragment")
                with self._lock:
                    self.failed = True
                    self._waiting.clear()
                    self.done.set()
                return


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_pid = 0


def _hashers() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child has no threads
            _pool = ThreadPoolExecutor(max_workers=_HASHERS, thread_name_prefix="hash")
            _pool_pid = os.getpid()
        return _pool


class SpoolFile:
    """A ``NamedTemporaryFile`` that hashes what is written to it (pynetdicom writes the File
    Meta Information and each data set fragment through ``write``)."""

    def __init__(self, *args: Any, suffix: str = ".dcm", **kwargs: Any) -> None:
        # pynetdicom asks for NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm").
        ready = _reserve.take() if _reserve is not None else None
        if ready is None:
            fd, self.name = tempfile.mkstemp(suffix=suffix, dir=_spool_dir)
        else:
            self.name, fd = ready
        # A message dropped mid-data set is never handed to the handler: its file goes when
        # the message does (mkstemp creates files 0600).
        weakref.finalize(self, _remove, self.name)
        self.file = open(fd, "wb")  # noqa: SIM115 - pynetdicom closes it; it flushes through it
        self._digest = hashlib.sha256()
        self._behind: _HashBehind | None = None
        self._size = 0

    def write(self, data: bytes) -> int:
        self._size += len(data)
        if self._behind is None and len(data) >= HASH_BEHIND_MIN and connections.alone():
            self._behind = _HashBehind(self._digest)  # and every later fragment, in order
        if self._behind is not None:
            self._behind.add(data)
        else:
            self._digest.update(data)
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()

    def discard(self) -> None:
        """Close and remove it (a data set that will not be stored)."""
        self.file.close()
        _remove(self.name)

    def content(self) -> tuple[str, int] | None:
        """SHA-256 (hex) and size of everything written so far (None: not hashed)."""
        if self._behind is not None:
            self._behind.done.wait()
            if self._behind.failed:
                return None
        return self._digest.hexdigest(), self._size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


# pynetdicom's, for what ``file_meta`` does not encode itself.
PYNETDICOM_CREATE_FILE_META = dimse_messages.create_file_meta
PYNETDICOM_WRITE_FILE_META_INFO = dimse_messages.write_file_meta_info


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("ascii")
    return value + pad if len(value) % 2 else value


def file_meta(*, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group that pynetdicom writes before a received data set
    (its ``create_file_meta`` and pydicom's ``write_file_meta_info``; PS3.10 7.1, explicit VR
    little endian), encoded directly: building it through a pydicom Dataset cost about 0.5 ms
    per object. The bytes are the same (tests/scp_listener/test_hash_on_receive.py)."""
    body = b"".join(
        (
            # (0002,0001) OB: two bytes, so the long form (PS3.5 7.1.2)
            struct.pack("<HH2s2xL", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
            _explicit(0x00020002, b"UI", _padded(sop_class_uid, b"\0")),
            _explicit(0x00020003, b"UI", _padded(sop_instance_uid, b"\0")),
            _explicit(0x00020010, b"UI", _padded(transfer_syntax, b"\0")),
            _explicit(0x00020012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\0")),
            _explicit(0x00020013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    return _explicit(0x00020000, b"UL", struct.pack("<L", len(body))) + body


def _create_file_meta(**kwargs: Any) -> Any:
    try:
        return file_meta(**kwargs)
    except UnicodeEncodeError:  # not a UID at all: pydicom's own handling and errors
        return PYNETDICOM_CREATE_FILE_META(**kwargs)


def _write_file_meta_info(fp: Any, meta: Any, enforce_standard: bool = True) -> None:
    if isinstance(meta, bytes):
        fp.write(meta)
    else:
        PYNETDICOM_WRITE_FILE_META_INFO(fp, meta, enforce_standard)


def install() -> None:
    """Receive data sets into hashing spool files, PDUs through ``pdu_reader`` (within the
    maximum length we advertise, one copy), and serve C-STORE on the thread that received it
    (``inline_store``)."""
    dimse_messages.NamedTemporaryFile = SpoolFile  # type: ignore[attr-defined,assignment]
    dimse_messages.create_file_meta = _create_file_meta  # type: ignore[assignment]
    dimse_messages.write_file_meta_info = _write_file_meta_info  # type: ignore[assignment]
    pdu_reader.install()
    inline_store.install()


def discard_partial(spool: SpoolFile, peer: str) -> None:
    """Remove the spool file of a data set still arriving when its connection closed or its
    association aborted (a cut transfer left its 31 MB behind)."""
    spool.discard()
    log.warning(
        "removed a partially received data set: the connection ended mid-transfer", peer=peer
    )


def content_of(request: Any) -> tuple[str, int] | None:
    """The SHA-256 and size of a C-STORE request's received file, if hashed on arrival."""
    spool = getattr(request, "_dataset_file", None)
    return spool.content() if isinstance(spool, SpoolFile) else None
