"""Content-addressed object store: one file per stored revision, named by its SHA-256.

The object file is the durable record of a C-STORE (docs/scp_durability.md). Before the index
row that names it commits, a new file is named in ``.recent/`` and both the file and that
directory are fsynced (side by side, started as the handler begins: ``flush_ahead``): two
flushes, after which a power cut cannot lose it. It is then hard-linked under its
key (``<sha[:2]>/<sha>.dcm``, what the index names and readers open) without a flush of its
own. The index commit does not wait for a flush either, so ``.recent/`` is the list of objects
whose index row may not be durable yet: the reconciliation (reconcile.py) re-indexes any of
them the index lacks, makes the index and the key links durable, and only then removes their
``.recent`` names. Its scan is that directory, not the store.

A ``.recent`` name also carries the calling AE title (hex), which the file itself does not
hold: the File Meta is part of the content address, so it is kept as received.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_CHUNK = 1 << 20
RECENT = ".recent"

# Fault injection for the crash-at-every-step test (tests/scp_listener/test_crash_recovery.py):
# ``RTOPS_SCP_CRASH_AT=<step>[:<n>]`` ends the process at the n-th time (default the first) a
# store reaches that step. Read at the first step (not at import: that test forks its SCPs
# from a process that imported this already); unset, as always outside that test, a step
# costs a comparison.
_crash_seen = 0


@functools.cache
def _crash_at() -> tuple[str, int]:
    step, _, nth = (os.environ.get("RTOPS_SCP_CRASH_AT") or "").partition(":")
    return step, int(nth or 1)


def crash_point(step: str) -> None:
    global _crash_seen
    at, nth = _crash_at()
    if step != at:
        return
    _crash_seen += 1
    if _crash_seen >= nth:
        os._exit(70)  # no cleanup, no atexit: what a kill -9 leaves


def sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _opened(path: Path, flags: int = os.O_RDONLY) -> Iterator[int]:
    """A descriptor of ``path``, closed however the block ends."""
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with _opened(path) as fd:
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    with _opened(path, os.O_RDONLY | os.O_DIRECTORY) as fd:
        os.fsync(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def sync_filesystem(path: Path) -> None:
    """Flush the filesystem holding ``path`` (Linux ``syncfs(2)``; ``sync`` elsewhere): one
    call makes every key link made since the last one durable, however many directories."""
    if _syncfs is None:
        os.sync()
        return
    with _opened(path, os.O_RDONLY | os.O_DIRECTORY) as fd:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))


# posix_fadvise(2) is Linux's (and most Unixes'); macOS has none, and there this does nothing.
_fadvise = getattr(os, "posix_fadvise", None)


def drop_cached_pages(path: Path) -> None:
    """Ask the kernel to drop the page cache's copy of a stored file (POSIX_FADV_DONTNEED;
    the file is flushed, so its pages are clean and go at once). Nothing in the ingest reads
    an object again once it is placed, and keeping every received byte cached made each new
    write take fresh memory: in the ten-sender benchmark the copy into the page cache grew
    from 1 % to 15 % of the machine's CPU in some runs, and the SCP's CPU by a quarter
    (docs/scp_performance.md, "The twelfth session"). Dropped, the same few pages serve
    every write; a later reader (the API's download, a re-index) reads from disk. Advice
    only: a failure changes nothing."""
    if _fadvise is None:
        return
    with contextlib.suppress(OSError), _opened(path) as fd:
        _fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _flush_fd(fd: int, step: str) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    crash_point(step)


def _done_now(flush: Callable[[int, str], None], fd: int, step: str) -> Future[None]:
    """``flush(fd, step)`` done on this thread, as a future that is done already."""
    done: Future[None] = Future()
    try:
        flush(fd, step)
    except OSError as exc:
        done.set_exception(exc)
    else:
        done.set_result(None)
    return done


@dataclass(frozen=True)
class Flushing:
    """A received file's flushes, started ahead (``ObjectStore.flush_ahead``)."""

    file: Future[None]
    recent: Path | None = None  # its .recent name, when flush_ahead gave it one
    directory: Future[None] | None = None  # the flush of .recent/ after that

    def wait(self) -> Path | None:
        """Both flushes done (or the first one's OSError); the ``.recent`` name."""
        self.file.result()
        if self.directory is not None:
            self.directory.result()
        return self.recent


@dataclass(frozen=True)
class Recent:
    """An object whose index row is not known durable yet (its ``.recent`` name)."""

    path: Path
    sha256: str
    sop_instance_uid: str
    calling_ae: str
    modified: datetime

    @property
    def key(self) -> str:
        return ObjectStore.key_for(self.sha256)


_NAMEABLE_UID = re.compile(r"[0-9.]{1,64}")


def _recent_name(sha256: str, uid: str, calling_ae: str) -> str:
    # The UID finds the index row through its index (the store's key has none). An AE title
    # may hold "/" or spaces (PS3.5 Table 6.2-1, AE: default repertoire but backslash): hex
    # keeps the name a plain file name. At most 64 + 64 + 32 + 2 characters (NAME_MAX 255).
    # No ".dcm": a walk of the store for objects finds each object once, under its key.
    return f"{sha256}_{uid}_{calling_ae.encode().hex()}"


def _parse_recent(path: Path) -> Recent | None:
    parts = path.name.split("_")
    if len(parts) != 3 or len(parts[0]) != 64:
        return None
    try:
        ae = bytes.fromhex(parts[2]).decode()
        modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except (ValueError, OSError):
        return None
    return Recent(path, parts[0], parts[1], ae, modified)


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / ".incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        self.recent_dir = root / RECENT
        self.recent_dir.mkdir(exist_ok=True)
        self._flusher: ThreadPoolExecutor | None = None
        self._flusher_lock = threading.Lock()
        self._key_dirs: set[str] = set()  # key directories known to exist

    @staticmethod
    def key_for(sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}.dcm"

    def path(self, key: str) -> Path:
        return self.root / key

    def flush_ahead(
        self,
        source: Path,
        sha256: str | None = None,
        *,
        sop_instance_uid: str = "",
        calling_ae: str = "",
        background: bool = True,
    ) -> Flushing:
        """Start making ``source`` durable now; ``put`` given the result waits for it instead
        of doing it itself. With its content address, ``source`` is also linked into
        ``.recent/`` at once, and that directory's flush starts beside the file's. A received
        object's flushes (about 1.5 ms of waiting on this disk) then overlap the reading of its
        header and its index queries. A store that does not reach ``put`` hands the result to
        ``withdraw``.

        The name may reach the disk before the bytes do: until both flushes are done nothing
        was answered, and the reconciliation drops a ``.recent`` file whose content does not
        hash to its name (``Ingestor.restore``).

        ``background=False``: the flushes are done here, before this returns (the process
        serves other associations, which keep its cores busy: services/scp_listener/
        connections.py)."""
        run = self._flusher_pool().submit if background else _done_now
        # Opened here, flushed there: the flush threads then need the GIL only to report.
        # A failure is put's to report (0xA700), not the handler's.
        try:
            file = run(_flush_fd, os.open(source, os.O_RDONLY), "file_fsynced")
        except OSError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc)
            return Flushing(failed)
        try:
            recent = self._name_ahead(source, sha256, sop_instance_uid, calling_ae)
            if recent is None:
                return Flushing(file)
            folder = os.open(self.recent_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return Flushing(file)  # put names it, and fails there if it must
        return Flushing(file, recent, run(_flush_fd, folder, "recent_fsynced"))

    def _flusher_pool(self) -> ThreadPoolExecutor:
        with self._flusher_lock:
            if self._flusher is None:
                # Two flushes per store, several associations per process: with four
                # threads the ten-sender benchmark queued flushes (5.2-5.5 s; 4.4-4.8 s).
                self._flusher = ThreadPoolExecutor(max_workers=8, thread_name_prefix="flush")
            return self._flusher

    def _name_ahead(
        self, source: Path, sha256: str | None, uid: str, calling_ae: str
    ) -> Path | None:
        if sha256 is None or not _NAMEABLE_UID.fullmatch(uid):
            # A UID from the command set, not checked yet: only digits and dots go into a name.
            return None
        recent = self.recent_dir / _recent_name(sha256, uid, calling_ae)
        if self.path(self.key_for(sha256)).exists():
            return None  # stored already: ``put`` decides under the content lock
        try:
            # A second name, not a rename: the handler reads the file by its name meanwhile
            # (pydicom reads deferred values by name); the spool's name goes when it is done.
            os.link(source, recent)
        except FileExistsError:
            return None  # an earlier store's, not answered yet: ``put`` decides
        except OSError:  # on another filesystem (EXDEV: put copies), or failing: put's
            return None
        crash_point("renamed")
        return recent

    def put(
        self,
        source: Path,
        sha256: str,
        *,
        sop_instance_uid: str,
        calling_ae: str,
        flushing: Flushing | None = None,
    ) -> tuple[str, bool]:
        """Make ``source`` durable under its key (moving it when on the same filesystem).
        Returns the key and whether this call placed the file (``False``: it was there).
        ``flushing``: ``flush_ahead(source, ...)``, started after the last write to it. When
        it returns, a power cut cannot lose the file (it is fsynced and its ``.recent`` name
        is in a fsynced directory)."""
        key = self.key_for(sha256)
        target = self.path(key)
        recent = self.recent_dir / _recent_name(sha256, sop_instance_uid, calling_ae)
        moved = flushing.wait() if flushing is not None else None  # its OSError, if any
        if moved is None:
            if target.exists():
                return key, False
            if flushing is None:
                fsync_file(source)
                crash_point("file_fsynced")
            self._move(source, sha256, recent)
        elif moved != recent:
            # Named after the command's SOP Instance UID; the data set's is another.
            self._move(moved, sha256, recent)
        if not self._link(recent, target):
            # Linked meanwhile (another process's store of the same bytes, or a round of the
            # reconciliation). The .recent name stays: it is what finds this object again if
            # the commit that follows is lost, and a round drops it once that is durable.
            return key, False
        crash_point("linked")
        # After the header was read and the flushes are done (flushing.wait() above).
        drop_cached_pages(target)
        return key, True

    def withdraw(self, flushing: Flushing, sha256: str) -> None:
        """After a store that did not reach ``put`` (refused, or failed): remove the
        ``.recent`` name ``flush_ahead`` gave the file, unless the key exists (another store
        of the same bytes then relies on that name). The caller holds the content's lock."""
        with contextlib.suppress(OSError):
            flushing.wait()
        if flushing.recent is not None and not self.path(self.key_for(sha256)).exists():
            flushing.recent.unlink(missing_ok=True)

    def _move(self, source: Path, sha256: str, recent: Path) -> None:
        try:
            os.rename(source, recent)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # The receive spool is on another filesystem: copy into ours, then rename.
            staging = self._incoming / f"{sha256}.{os.getpid()}.part"
            with source.open("rb") as src, staging.open("wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(staging, recent)
        crash_point("renamed")
        fsync_dir(self.recent_dir)
        crash_point("recent_fsynced")

    def _link(self, recent: Path, target: Path) -> bool:
        """Give the ``.recent`` file its key (no flush: the reconciliation's ``sync`` makes it
        durable before the ``.recent`` name goes). False: the key was taken already."""
        folder = target.parent.name
        if folder not in self._key_dirs:
            target.parent.mkdir(exist_ok=True)
            self._key_dirs.add(folder)  # never removed while the process runs
        try:
            os.link(recent, target)
        except FileExistsError:
            return False
        except FileNotFoundError:  # its folder was removed from outside meanwhile
            target.parent.mkdir(exist_ok=True)
            try:
                os.link(recent, target)
            except FileExistsError:
                return False
        return True

    def discard(self, key: str, *, sop_instance_uid: str, calling_ae: str) -> None:
        """Remove a file that no committed index row names (its transaction failed). A crash
        before this runs leaves an un-indexed file, which the reconciliation indexes (its
        sender was not answered success; a re-send is then a duplicate)."""
        sha = Path(key).stem
        self.path(key).unlink(missing_ok=True)
        (self.recent_dir / _recent_name(sha, sop_instance_uid, calling_ae)).unlink(missing_ok=True)

    # ------------------------------------------------------------ reconciliation

    def recent(self) -> list[Recent]:
        """The ``.recent`` entries, oldest first (arrival order, so re-indexed revisions of
        one UID keep their order)."""
        entries = []
        with os.scandir(self.recent_dir) as it:
            for entry in it:
                parsed = _parse_recent(Path(entry.path))
                if parsed is not None:
                    entries.append(parsed)
        return sorted(entries, key=lambda r: (r.modified, r.path.name))

    def relink(self, recent: Recent) -> None:
        """Give a ``.recent`` file its key again if a power cut lost the (unflushed) link."""
        self._link(recent.path, self.path(recent.key))

    def sync(self) -> None:
        """Make every key link made so far durable."""
        sync_filesystem(self.root)

    def forget(self, recent: Recent) -> None:
        """Drop a ``.recent`` name once its index row and key link are durable (no flush: if
        the removal is lost, the next reconciliation finds it indexed and drops it again)."""
        recent.path.unlink(missing_ok=True)
