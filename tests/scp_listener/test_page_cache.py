"""A stored object leaves the page cache once it is placed (objectstore.drop_cached_pages):
every received byte kept cached made each new write take fresh memory (docs/
scp_performance.md, "The twelfth session")."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
from pathlib import Path

import pytest

from services.scp_listener import objectstore
from services.scp_listener.objectstore import ObjectStore

_libc = ctypes.CDLL(None, use_errno=True)
UID = "1.2.826.0.1.3680043.8.498.42"


def resident_pages(path: Path) -> int:
    """How many of the file's pages the page cache holds (mincore(2) over a mapping)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
    try:
        view = (ctypes.c_char * size).from_buffer(mapped)
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = (ctypes.c_ubyte * pages)()
        try:
            if _libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), size, vector) != 0:
                pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
            return sum(v & 1 for v in vector)
        finally:
            del view
    finally:
        mapped.close()


def received(folder: Path, size: int = 2 << 20) -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "received.dcm"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def drops_pages(tmp_path: Path) -> None:
    """Skip where the filesystem keeps a flushed file's pages whatever one advises (tmpfs,
    where the page cache is the storage)."""
    probe, _ = received(tmp_path / "probe", 256 << 10)
    with probe.open("rb") as file:
        os.fsync(file.fileno())
    objectstore.drop_cached_pages(probe)
    if resident_pages(probe):
        pytest.skip("this filesystem keeps a file's pages after POSIX_FADV_DONTNEED")


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
@pytest.mark.parametrize("ahead", [True, False], ids=["flushed-ahead", "flushed-in-put"])
def test_a_placed_object_leaves_no_pages_cached(
    tmp_path: Path, drops_pages: None, ahead: bool
) -> None:
    store = ObjectStore(tmp_path / "objects")
    source, sha = received(tmp_path / "spool")
    assert resident_pages(source) > 0  # just written: cached
    flushing = (
        store.flush_ahead(source, sha, sop_instance_uid=UID, calling_ae="CT1", background=False)
        if ahead
        else None
    )
    key, created = store.put(source, sha, sop_instance_uid=UID, calling_ae="CT1", flushing=flushing)
    assert created
    stored = store.path(key)
    assert resident_pages(stored) == 0
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha  # read back from the disk


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_the_pages_are_dropped_after_the_file_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Advice on dirty pages would only start their write-back: the drop comes after the
    object's fsync, and names the stored file."""
    events: list[tuple[str, int]] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        fsync(fd)

    def recording_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert (offset, length, advice) == (0, 0, os.POSIX_FADV_DONTNEED)
        events.append(("dropped", os.fstat(fd).st_ino))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(objectstore, "_fadvise", recording_fadvise)
    store = ObjectStore(tmp_path / "objects")
    source, sha = received(tmp_path / "spool", 64 << 10)
    flushing = store.flush_ahead(
        source, sha, sop_instance_uid=UID, calling_ae="CT1", background=False
    )
    key, _ = store.put(source, sha, sop_instance_uid=UID, calling_ae="CT1", flushing=flushing)
    inode = store.path(key).stat().st_ino
    assert ("dropped", inode) in events
    assert events.index(("fsync", inode)) < events.index(("dropped", inode))
    # A second store of the same bytes places nothing and drops nothing.
    events.clear()
    again, _ = received(tmp_path / "spool2", 0)
    again.write_bytes(store.path(key).read_bytes())
    assert store.put(again, sha, sop_instance_uid=UID, calling_ae="CT1") == (key, False)
    assert not [e for e in events if e[0] == "dropped"]
