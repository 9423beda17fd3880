"""Content addresses computed while the bytes arrive (issue 14): what the index says of every
stored file (SHA-256, size) is what reading the file gives, from DCMTK and pynetdicom senders,
in the transfer syntaxes pynetdicom proposes by default, with data sets split over many
16 KiB PDUs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import dimse_messages
from sqlalchemy import select

from services.scp_listener import receive
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


@pytest.mark.parametrize("sender", ["pynetdicom", "dcmtk"])
def test_hash_on_arrival_is_the_file_hash(
    start_scp: Callable[..., RunningScp],
    dcmtk: dict[str, str],
    tmp_path: Path,
    sender: str,
) -> None:
    # A 16 KiB PDU limit: every 512 x 512 slice arrives in some 32 fragments.
    scp = start_scp(scp_max_pdu=16384)
    assert dimse_messages.NamedTemporaryFile is SpoolFile  # type: ignore[attr-defined]
    paths: list[Path] = []
    for n, syntax in enumerate(SYNTAXES):
        series = f.cbct_series(n_slices=2, rows=512, columns=512, transfer_syntax_uid=syntax)
        paths += f.write_series(series, tmp_path / str(n))
    paths.append(f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rt.dcm"))
    if sender == "pynetdicom":
        assert pynetdicom_store(scp.dicom_port, paths) == [0] * len(paths)
    else:
        sent = storescu(dcmtk["storescu"], scp.dicom_port, paths, extra=["-pdu", "16384"])
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
        wait_for(  # refilled
            lambda: len(list(spool.iterdir())) == receive.RESERVE + 1, 5, 0.01, "refilled"
        )
        assert spooled(spool) == [Path(taken.name)]
        taken.close()
        # A restart removes the partial file (counted) and the empty ones without a word.
        assert receive.configure(spool) == 1
        assert spooled(spool) == []
    finally:
        receive.configure(tmp_path / "other")  # no reserve left filling this test's folder
