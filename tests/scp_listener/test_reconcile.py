"""The reconciliation of the object store and its index (services/scp_listener/reconcile.py),
in process: what a lost index commit, a store cut between its file and its commit, and a lost
key link leave, and what one round makes of each (docs/scp_durability.md)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select

from services.scp_listener import objectstore, reconcile
from services.scp_listener.service import Ingestor, Outcome, Status
from services.scp_listener.store import ArrivalHour, DicomObject, DurabilityMark, Outbox
from shared.events import SourceDevice
from tests import dicom_factories as f
from tests.support import RunningScp, scp_rest_app, scp_settings, wait_for

RECORD = "1.2.840.10008.5.1.4.1.1.481.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
LINAC = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1")


def _sources(ae: str) -> SourceDevice:
    assert ae == LINAC.ae_title  # the AE title the .recent name kept
    return LINAC


@pytest.fixture
def ingestor(base_settings: dict[str, object]) -> Iterator[Ingestor]:
    with scp_rest_app(scp_settings(base_settings)) as app:
        yield app.state.ingestor


def _ingest(ingestor: Ingestor, tmp_path: Path, fraction: int, **kw: Any) -> Any:
    path = f.write(
        f.treatment_record(plan_uid="1.2.3", fraction_number=fraction, **kw),
        tmp_path / f"in{fraction}.dcm",
    )
    outcome = ingestor.ingest(
        path,
        sop_class_uid=RECORD,
        sop_instance_uid="",
        transfer_syntax_uid=EXPLICIT_LE,
        source=LINAC,
    )
    assert outcome.status == Status.SUCCESS, outcome
    return outcome


def _rows(ingestor: Ingestor) -> tuple[list[tuple[str, int, str]], list[str], int]:
    """(index rows (uid, revision, calling AE), outbox event ids, arrivals counted)."""
    with ingestor._factory() as session:
        objects = session.execute(
            select(DicomObject.sop_instance_uid, DicomObject.revision, DicomObject.calling_ae)
        ).all()
        events = list(session.scalars(select(Outbox.event_id).order_by(Outbox.id)))
        arrivals = session.scalar(select(func.coalesce(func.sum(ArrivalHour.objects), 0)))
    return sorted(tuple(r) for r in objects), events, int(arrivals or 0)  # type: ignore[misc]


def _lose_index(ingestor: Ingestor) -> None:
    """What a power cut does to commits no flush covered: as if they never happened."""
    with ingestor._factory.begin() as session:
        for table in (DicomObject, Outbox, ArrivalHour):
            session.execute(delete(table))


def test_a_store_leaves_a_recent_name_that_a_round_confirms(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    outcome = _ingest(ingestor, tmp_path, 1)
    store = ingestor.store
    [recent] = store.recent()
    assert recent.sop_instance_uid == outcome.sop_instance_uid
    assert recent.calling_ae == "TRUEBEAM1"
    # One file, two names: its key (what the index names) and its .recent name.
    assert os.path.samefile(recent.path, store.path(recent.key))
    before = _rows(ingestor)

    assert reconcile.reconcile(ingestor, _sources) == 0

    assert store.recent() == []
    assert store.path(recent.key).exists()
    assert _rows(ingestor) == before  # nothing re-indexed, nothing queued again
    with ingestor._factory() as session:
        mark = session.get(DurabilityMark, 1)
    assert mark is not None and mark.confirmed_objects == 1
    # Nothing left to look at: the next round touches neither the index nor the files.
    assert reconcile.reconcile(ingestor, _sources) == 0


def test_lost_index_commits_are_restored_with_the_same_events(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    for fraction in (1, 2, 3):
        _ingest(ingestor, tmp_path, fraction)
    before = _rows(ingestor)
    assert len(before[0]) == len(before[1]) == before[2] == 3
    _lose_index(ingestor)
    assert _rows(ingestor) == ([], [], 0)

    assert reconcile.reconcile(ingestor, _sources) == 3

    assert _rows(ingestor) == before  # the same rows, the same event ids, counted again
    assert ingestor.store.recent() == []
    assert reconcile.reconcile(ingestor, _sources) == 0


def test_revisions_restored_in_arrival_order(ingestor: Ingestor, tmp_path: Path) -> None:
    first = _ingest(ingestor, tmp_path, 1)
    # Same UID, other content: a second revision, whose event names revision 2.
    ds = f.treatment_record(
        plan_uid="1.2.3", fraction_number=1, beams=3, sop_instance_uid=first.sop_instance_uid
    )
    second = ingestor.ingest(
        f.write(ds, tmp_path / "rev.dcm"),
        sop_class_uid=RECORD,
        sop_instance_uid="",
        transfer_syntax_uid=EXPLICIT_LE,
        source=LINAC,
    )
    assert second.status == Status.SUCCESS and second.created
    before = _rows(ingestor)
    assert [r[1] for r in before[0]] == [1, 2]
    _lose_index(ingestor)

    assert reconcile.reconcile(ingestor, _sources) == 2

    assert _rows(ingestor) == before


def test_a_store_cut_before_its_commit_is_indexed(ingestor: Ingestor, tmp_path: Path) -> None:
    """The file was placed, the process ended before the commit: never answered success, so
    either choice is safe; indexing it makes the sender's re-send a duplicate."""
    ds = f.treatment_record(plan_uid="1.2.3")
    path = f.write(ds, tmp_path / "cut.dcm")
    sha, _ = objectstore.sha256_of(path)
    uid = str(ds.SOPInstanceUID)
    _, created = ingestor.store.put(path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1")
    assert created and _rows(ingestor) == ([], [], 0)

    assert reconcile.reconcile(ingestor, _sources) == 1

    rows, events, arrivals = _rows(ingestor)
    assert rows == [(uid, 1, "TRUEBEAM1")] and len(events) == 1 and arrivals == 1
    assert ingestor.store.recent() == []


@pytest.mark.parametrize("row_lost", [True, False])
def test_a_lost_key_link_is_made_again(ingestor: Ingestor, tmp_path: Path, row_lost: bool) -> None:
    _ingest(ingestor, tmp_path, 1)
    [recent] = ingestor.store.recent()
    ingestor.store.path(recent.key).unlink()  # the unflushed link a power cut can lose
    if row_lost:
        _lose_index(ingestor)

    assert reconcile.reconcile(ingestor, _sources) == int(row_lost)

    assert ingestor.store.path(recent.key).exists()  # before its .recent name went
    assert ingestor.store.recent() == []
    assert len(_rows(ingestor)[0]) == 1


def test_an_object_the_rules_refuse_is_kept_unindexed(ingestor: Ingestor, tmp_path: Path) -> None:
    """A .recent file whose UID is now another patient's (it never got its row): refused as a
    C-STORE would be, its file kept, its .recent name dropped so it is not retried forever."""
    placed = f.treatment_record(plan_uid="1.2.3", patient=f.PatientSpec(patient_id="P-ONE"))
    path = f.write(placed, tmp_path / "a.dcm")
    sha, _ = objectstore.sha256_of(path)
    key, _ = ingestor.store.put(
        path, sha, sop_instance_uid=str(placed.SOPInstanceUID), calling_ae="TRUEBEAM1"
    )
    other = f.treatment_record(
        plan_uid="1.2.3",
        patient=f.PatientSpec(patient_id="P-TWO"),
        sop_instance_uid=str(placed.SOPInstanceUID),
    )
    ingestor.ingest(
        f.write(other, tmp_path / "b.dcm"),
        sop_class_uid=RECORD,
        sop_instance_uid="",
        transfer_syntax_uid=EXPLICIT_LE,
        source=LINAC,
    )
    rows_before = _rows(ingestor)

    reconcile.reconcile(ingestor, _sources)

    assert _rows(ingestor)[0] == rows_before[0]  # P-ONE's object was not indexed
    assert ingestor.store.path(key).exists()
    assert ingestor.store.recent() == []


def test_an_ingest_flushes_twice_and_its_commit_does_not_wait(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file and the .recent directory: two fsyncs from Python per new object (the
    directory of its key and the database's log no longer flush on the C-STORE path); the
    ingest's own commit is relaxed, and the connection is back to waiting afterwards."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    statements: list[str] = []
    engine = ingestor._factory.kw["bind"]

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split("(")[0].strip())

    monkeypatch.setattr(objectstore.os, "fsync", counting)
    event.listen(engine, "before_cursor_execute", record)
    try:
        _ingest(ingestor, tmp_path, 1)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(calls) == 2
    relax = (
        "PRAGMA synchronous=NORMAL"
        if engine.dialect.name == "sqlite"
        else "SET LOCAL synchronous_commit = off"
    )
    assert statements.index(relax) < statements.index("INSERT INTO object_arrival")
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # the next transaction's connection waits again (FULL)
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_a_key_linked_meanwhile_keeps_its_recent_name(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a store's check for its key and its link, another store of the same bytes (or
    a reconciliation round) linked it. The .recent name must stay: it is all that finds this
    object again if the commit that follows is lost."""
    store = ingestor.store
    link = type(store)._link

    def linked_by_someone_else(recent: Path, target: Path) -> bool:
        link(store, recent, target)
        return False

    monkeypatch.setattr(store, "_link", linked_by_someone_else)
    _ingest(ingestor, tmp_path, 1)
    assert len(store.recent()) == 1
    monkeypatch.undo()
    _lose_index(ingestor)

    assert reconcile.reconcile(ingestor, _sources) == 1

    assert len(_rows(ingestor)[0]) == 1 and store.recent() == []


def test_a_storage_failure_on_reindexing_keeps_the_object_for_the_next_round(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0xA700 on re-indexing (a full disk, a database away) is not a refusal: the .recent
    name stays, and a later round indexes the object."""
    _ingest(ingestor, tmp_path, 1)
    _lose_index(ingestor)
    real = ingestor.restore
    monkeypatch.setattr(
        ingestor,
        "restore",
        lambda recent, source: Outcome(Status.OUT_OF_RESOURCES, "storage failed: disk full"),
    )

    assert reconcile.reconcile(ingestor, _sources) == 0
    assert len(ingestor.store.recent()) == 1

    monkeypatch.setattr(ingestor, "restore", real)
    assert reconcile.reconcile(ingestor, _sources) == 1
    assert ingestor.store.recent() == [] and len(_rows(ingestor)[0]) == 1


def test_the_periodic_rounds_end_with_the_app(
    start_scp: Callable[..., RunningScp],
) -> None:
    """A stopped SCP's confirmation thread ends (it kept polling a dropped database before)."""
    scp = start_scp(scp_confirm_interval_s=0.05)
    ingestor = scp.app.state.ingestor

    def rounds() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "scp-reconcile" and t.is_alive()]

    before = len(rounds())
    assert ingestor in reconcile._confirming
    scp.stop()
    assert ingestor not in reconcile._confirming
    wait_for(lambda: len(rounds()) < before, 5, message="the confirmation thread ends")


def test_a_flush_started_ahead_stands_for_the_files_own(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flush_ahead`` (started by the C-STORE handler before the header is read): ``put``
    waits for it instead of flushing the file again, and its failure fails the put."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(objectstore.os, "fsync", counting)
    path = f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=1), tmp_path / "a.dcm")
    sha, _ = objectstore.sha256_of(path)
    store = ingestor.store
    flushing = store.flush_ahead(path)
    flushing.wait()
    assert len(calls) == 1  # the file
    key, created = store.put(
        path, sha, sop_instance_uid="1.2", calling_ae="TRUEBEAM1", flushing=flushing
    )
    assert created and store.path(key).exists()
    assert len(calls) == 2  # and the .recent directory only
    other = f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=2), tmp_path / "b.dcm")
    sha, _ = objectstore.sha256_of(other)
    failed: Future[None] = Future()
    failed.set_exception(OSError(errno.EIO, "Input/output error"))
    with pytest.raises(OSError, match="Input/output"):
        store.put(
            other,
            sha,
            sop_instance_uid="1.3",
            calling_ae="TRUEBEAM1",
            flushing=objectstore.Flushing(failed),
        )
    assert not store.path(store.key_for(sha)).exists()
    assert other.exists()  # not moved: the caller's failure path removes it


def _received(tmp_path: Path, fraction: int, **kw: Any) -> tuple[Path, str, int, str]:
    """A received file as the C-STORE handler has it: path, SHA-256, size, SOP Instance UID."""
    ds = f.treatment_record(plan_uid="1.2.3", fraction_number=fraction, **kw)
    path = f.write(ds, tmp_path / f"spool{fraction}.dcm")
    sha, size = objectstore.sha256_of(path)
    return path, sha, size, str(ds.SOPInstanceUID)


def _ingest_received(
    ingestor: Ingestor,
    path: Path,
    sha: str,
    size: int,
    uid: str,
    flushing: objectstore.Flushing,
    sop_class_uid: str = RECORD,
) -> Outcome:
    """``Ingestor.ingest`` as the C-STORE handler calls it, with the file's flush ahead."""
    return ingestor.ingest(
        path,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=uid,
        transfer_syntax_uid=EXPLICIT_LE,
        source=LINAC,
        content=(sha, size),
        flushing=flushing,
    )


def test_a_flush_ahead_with_the_content_address_names_the_file_in_recent(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given the SHA-256 and the command's UID, ``flush_ahead`` also links the file into
    ``.recent/`` and starts that directory's flush, both before ``put``; ``put`` then only
    links the key. The received name stays (the handler reads the file meanwhile)."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(objectstore.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    path, sha, size, uid = _received(tmp_path, 1)
    flushing = ingestor.store.flush_ahead(path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1")
    moved = flushing.wait()
    assert moved is not None and moved.parent == ingestor.store.recent_dir
    assert len(calls) == 2 and path.exists()  # the file and .recent/, nothing renamed away
    outcome = _ingest_received(ingestor, path, sha, size, uid, flushing)
    assert outcome.status == Status.SUCCESS and outcome.created
    assert len(calls) == 2  # put flushed nothing more
    [recent] = ingestor.store.recent()
    assert recent.path == moved and ingestor.store.path(recent.key).exists()


def test_flushes_not_in_the_background_are_done_before_flush_ahead_returns(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``background=False`` (the process serves other associations: connections.py): the
    file and ``.recent/`` are flushed on the calling thread, and the store is the same."""
    threads: list[int] = []
    real = os.fsync
    monkeypatch.setattr(
        objectstore.os, "fsync", lambda fd: (threads.append(threading.get_ident()), real(fd))[1]
    )
    path, sha, size, uid = _received(tmp_path, 1)
    flushing = ingestor.store.flush_ahead(
        path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1", background=False
    )
    assert threads == [threading.get_ident()] * 2  # the file and .recent/, here
    assert flushing.file.done() and flushing.directory is not None and flushing.directory.done()
    assert flushing.recent is not None and flushing.recent.exists()
    outcome = _ingest_received(ingestor, path, sha, size, uid, flushing)
    assert outcome.status == Status.SUCCESS and outcome.created
    assert len(threads) == 2  # put flushed nothing more
    [recent] = ingestor.store.recent()
    assert recent.path == flushing.recent and ingestor.store.path(recent.key).exists()


def test_a_flush_that_fails_not_in_the_background_fails_the_store(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(objectstore.os, "fsync", failing)
    path, sha, size, uid = _received(tmp_path, 1)
    flushing = ingestor.store.flush_ahead(
        path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1", background=False
    )
    assert isinstance(flushing.file.exception(), OSError)
    outcome = _ingest_received(ingestor, path, sha, size, uid, flushing)
    assert outcome.status == Status.OUT_OF_RESOURCES
    assert _rows(ingestor)[0] == []
    assert not ingestor.store.path(ingestor.store.key_for(sha)).exists()


def test_a_uid_not_fit_for_a_file_name_is_only_flushed_ahead(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    """The command's UID is the peer's, unchecked when the flush starts: only digits and
    dots go into a name (the data set's UID names the file in ``put``)."""
    path, sha, _, _ = _received(tmp_path, 1)
    for uid in ("../../x", "1.2_3", "", "1" * 65):
        assert ingestor.store.flush_ahead(path, sha, sop_instance_uid=uid).wait() is None
    assert ingestor.store.recent() == []


def test_a_store_refused_after_its_flush_ahead_leaves_no_name(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    """The flush named the file in ``.recent/`` before the header was read; the handler's
    ``withdraw`` after a refusal takes the name away again (else a round would re-index what
    the sender was refused)."""
    path, sha, size, uid = _received(tmp_path, 1)
    flushing = ingestor.store.flush_ahead(path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1")
    plan = "1.2.840.10008.5.1.4.1.1.481.5"  # sent as an RT Plan
    outcome = _ingest_received(ingestor, path, sha, size, uid, flushing, sop_class_uid=plan)
    assert outcome.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert len(ingestor.store.recent()) == 1  # until the handler withdraws it
    ingestor.withdraw(flushing, sha)
    assert ingestor.store.recent() == []
    assert not ingestor.store.path(ingestor.store.key_for(sha)).exists()


def test_a_periodic_round_leaves_an_object_in_flight_to_its_store(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    """A ``.recent`` name younger than ``settled_s`` without an index row may be a C-STORE
    still reading its header: a periodic round neither links nor re-indexes it; the start-up
    round (nothing in flight) does."""
    path, sha, _, uid = _received(tmp_path, 1)
    ingestor.store.flush_ahead(path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1").wait()

    assert reconcile.reconcile(ingestor, _sources, settled_s=reconcile.IN_FLIGHT_S) == 0
    assert len(ingestor.store.recent()) == 1
    assert not ingestor.store.path(ingestor.store.key_for(sha)).exists()
    assert _rows(ingestor)[0] == []

    assert reconcile.reconcile(ingestor, _sources) == 1
    assert ingestor.store.recent() == [] and len(_rows(ingestor)[0]) == 1


def test_a_recent_file_torn_by_a_power_cut_is_dropped_not_indexed(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    """``flush_ahead`` names the file before its bytes are flushed: a power cut in between
    can keep a name whose bytes are not the ones it was named for. Nothing was answered, so
    the round drops it instead of indexing what is there."""
    path, sha, _, uid = _received(tmp_path, 1)
    moved = ingestor.store.flush_ahead(path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1")
    recent = moved.wait()
    assert recent is not None
    data = bytearray(recent.read_bytes())
    data[-64:] = bytes(64)  # the last bytes never reached the disk
    path.unlink()
    recent.unlink()
    recent.write_bytes(bytes(data))

    assert reconcile.reconcile(ingestor, _sources) == 0

    assert ingestor.store.recent() == [] and _rows(ingestor)[0] == []
    assert not ingestor.store.path(ingestor.store.key_for(sha)).exists()


def test_a_spool_on_another_filesystem_is_copied_into_the_store(
    ingestor: Ingestor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither a link nor a rename crosses filesystems (EXDEV): ``flush_ahead`` only flushes,
    and ``put`` copies the file into the store, flushed, before naming it."""
    path, sha, size, uid = _received(tmp_path, 1)
    real_link, real_rename = os.link, os.rename

    def cross(real: Callable[..., None]) -> Callable[..., None]:
        def call(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            if Path(src) == path:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            real(src, dst, *args, **kw)

        return call

    monkeypatch.setattr(objectstore.os, "link", cross(real_link))
    monkeypatch.setattr(objectstore.os, "rename", cross(real_rename))
    flushing = ingestor.store.flush_ahead(path, sha, sop_instance_uid=uid, calling_ae="TRUEBEAM1")
    assert flushing.recent is None
    outcome = _ingest_received(ingestor, path, sha, size, uid, flushing)
    assert outcome.status == Status.SUCCESS and outcome.created
    stored = ingestor.store.path(ingestor.store.key_for(sha))
    assert stored.read_bytes() == path.read_bytes() and not stored.samefile(path)
    assert len(ingestor.store.recent()) == 1
