"""Content addresses computed while the bytes arrive (issue 14): what the index says of every
stored file (SHA-256, size) is what reading the file gives, from DCMTK and pynetdicom senders,
in the transfer syntaxes pynetdicom proposes by default, with data sets split over many
16 KiB PDUs (hashed on the receiving thread) and over 256 KiB PDUs (hashed behind it)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import dimse_messages
from sqlalchemy import select

from services.scp_listener import connections, receive
from services.scp_listener.app import SERVICE
from services.scp_listener.objectstore import sha256_of
from services.scp_listener.receive import SpoolFile
from services.scp_listener.store import DicomObject
from shared.db import make_engine, session_factory
from tests import dicom_factories as f
from tests.support import RunningScp, pynetdicom_store, spooled, storescu, wait_for

SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)


def indexed(scp: RunningScp) -> list[tuple[str, str, int]]:
    engine = make_engine(scp.settings, SERVICE)
    try:
        with session_factory(engine)() as session:
            rows = session.execute(
                select(DicomObject.storage_key, DicomObject.sha256, DicomObject.size)
            ).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def assert_index_matches_files(scp: RunningScp, expected: int) -> None:
    rows = indexed(scp)
    assert len(rows) == expected
    for key, sha, size in rows:
        assert sha256_of(scp.settings.object_store() / key) == (sha, size), key


@pytest.mark.parametrize("pdu", [16384, 262144], ids=["16KiB", "256KiB"])
@pytest.mark.parametrize("sender", ["pynetdicom", "dcmtk"])
def test_hash_on_arrival_is_the_file_hash(
    start_scp: Callable[..., RunningScp],
    dcmtk: dict[str, str],
    tmp_path: Path,
    sender: str,
    pdu: int,
) -> None:
    # 16 KiB: every 512 x 512 slice arrives in some 32 fragments, each hashed where it is
    # read; 256 KiB (the default; DCMTK sends at most 128 KiB): fragments hashed behind.
    scp = start_scp(scp_max_pdu=pdu)
    assert dimse_messages.NamedTemporaryFile is SpoolFile  # type: ignore[attr-defined]
    paths: list[Path] = []
    for n, syntax in enumerate(SYNTAXES):
        series = f.cbct_series(n_slices=2, rows=512, columns=512, transfer_syntax_uid=syntax)
        paths += f.write_series(series, tmp_path / str(n))
    paths.append(f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rt.dcm"))
    if sender == "pynetdicom":
        assert pynetdicom_store(scp.dicom_port, paths) == [0] * len(paths)
    else:
        sent = storescu(
            dcmtk["storescu"], scp.dicom_port, paths, extra=["-pdu", str(min(pdu, 131072))]
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
    assert_index_matches_files(scp, len(paths))


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian),
        ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.3.45", ImplicitVRLittleEndian),
        ("1.2.840.10008.5.1.4.1.1.481.2", "1." + "2" * 62, DeflatedExplicitVRLittleEndian),
        ("1.2.840.10008.5.1.4.1.1.2", "1." + "2" * 100, "1.2.840.10008.1.2.4.50"),  # too long
    ],
)
def test_file_meta_is_the_bytes_pydicom_writes(
    sop_class: str, sop_instance: str, syntax: str
) -> None:
    assert dimse_messages.create_file_meta is receive._create_file_meta
    assert dimse_messages.write_file_meta_info is receive._write_file_meta_info
    expected = DicomBytesIO()
    meta = receive.PYNETDICOM_CREATE_FILE_META(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
    )
    receive.PYNETDICOM_WRITE_FILE_META_INFO(expected, meta)
    got = receive.file_meta(
        sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax
    )
    assert got == expected.getvalue()


def test_file_meta_of_a_uid_that_is_not_ascii_is_left_to_pydicom() -> None:
    meta = receive._create_file_meta(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.\u00e9",
        transfer_syntax=ExplicitVRLittleEndian,
    )
    assert not isinstance(meta, bytes)


def test_spool_files_are_created_ahead_and_taken_without_waiting(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    try:
        assert receive.configure(spool) == 0
        wait_for(
            lambda: len(list(spool.iterdir())) == receive.RESERVE, 5, 0.01, "the reserve filled"
        )
        ready = {str(p) for p in spool.iterdir()}
        assert all(p.stat().st_size == 0 for p in spool.iterdir())
        taken = SpoolFile(delete=False, mode="wb", suffix=".dcm")
        assert taken.name in ready  # a file made ahead, not a new one
        taken.write(b"\x00" * 128 + b"DICM")
        taken.file.flush()
        assert taken.content()[1] == 132
        assert spooled(spool) == [Path(taken.name)]
        taken.close()
        # A restart removes the partial file (counted) and the empty ones without a word.
        assert receive.configure(spool) == 1
        assert spooled(spool) == []
    finally:
        receive.configure(tmp_path / "other")  # no reserve left filling this test's folder


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SpoolFile]:
    """A spool file of a process serving no other connection: its large fragments are
    hashed behind (services/scp_listener/connections.py)."""
    monkeypatch.setattr(connections, "_open", 1)
    receive.configure(tmp_path / "spool")
    try:
        yield SpoolFile(delete=False, mode="wb", suffix=".dcm")
    finally:
        receive.configure(tmp_path / "other")  # no reserve left filling this test's folder


class HeldSha256:
    """SHA-256 whose every update first waits (a sleep, or a gate opening): the hashing then
    falls behind the writes. ``fail_at``: the update of that number raises."""

    def __init__(
        self, *, sleep: float = 0.0, gate: threading.Event | None = None, fail_at: int = 0
    ) -> None:
        self.digest = hashlib.sha256()
        self.sleep, self.gate, self.fail_at = sleep, gate, fail_at
        self.calls = 0

    def update(self, data: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise MemoryError
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.sleep)
        self.digest.update(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def test_fragments_hashed_behind_are_hashed_in_order(spool: SpoolFile) -> None:
    big = receive.HASH_BEHIND_MIN
    # Small ones first (hashed at once), then large and small mixed (all behind, in order),
    # more of them than may wait: the writer then waits for the hashing.
    fragments = [b"\x00" * 128 + b"DICM", os.urandom(200)]
    fragments += [os.urandom(big + n) if n % 3 else os.urandom(n + 1) for n in range(40)]
    spool._digest = HeldSha256(sleep=0.002)
    for fragment in fragments:
        spool.write(memoryview(fragment))
    spool.close()
    whole = b"".join(fragments)
    assert spool.content() == (hashlib.sha256(whole).hexdigest(), len(whole))
    assert Path(spool.name).read_bytes() == whole


def test_a_fragment_that_cannot_be_hashed_leaves_the_file_to_be_hashed_whole(
    spool: SpoolFile,
) -> None:
    spool._digest = HeldSha256(fail_at=2)
    for _ in range(4):
        spool.write(b"\x01" * receive.HASH_BEHIND_MIN)
    # None: the handler hashes the file itself (content_of's contract), not a digest that
    # misses a fragment.
    assert spool.content() is None
    spool.close()


def test_a_writer_far_ahead_of_the_hashing_waits_for_it(spool: SpoolFile) -> None:
    gate = threading.Event()
    spool._digest = HeldSha256(gate=gate)
    writes = threading.Thread(
        target=lambda: [spool.write(b"\x02" * receive.HASH_BEHIND_MIN) for _ in range(20)]
    )
    writes.start()
    time.sleep(0.3)
    # The first fragment is being hashed; at most _MAX_BEHIND + 1 wait, then the writer.
    assert writes.is_alive()
    assert spool._size <= (receive._MAX_BEHIND + 2) * receive.HASH_BEHIND_MIN
    gate.set()
    writes.join(10)
    assert not writes.is_alive()
    assert spool.content() is not None
    spool.close()
