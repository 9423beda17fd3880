"""An image's index row written after its C-STORE response (services/scp_listener/
after_answer.py): what the Ingestor keeps for later and what it writes at once, when the DUL
thread does the kept write, and what a write that never happens or fails leaves to the
reconciliation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pynetdicom.pdu import A_RELEASE_RP, P_DATA_TF
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from services.scp_listener import after_answer, reconcile
from services.scp_listener.service import Ingestor, Status
from services.scp_listener.store import DicomObject
from shared.events import SourceDevice
from tests import dicom_factories as f
from tests.support import RunningScp, pynetdicom_store, scp_rest_app, scp_settings

EXPLICIT_LE = "1.2.840.10008.1.2.1"
RECORD = "1.2.840.10008.5.1.4.1.1.481.4"
XVI = SourceDevice(ae_title="XVI1", role="linac", machine="TrueBeam1")


@pytest.fixture
def ingestor(base_settings: dict[str, object]) -> Iterator[Ingestor]:
    with scp_rest_app(scp_settings(base_settings)) as app:
        yield app.state.ingestor


def _uids(ingestor: Ingestor) -> list[str]:
    with ingestor._factory() as session:
        return sorted(session.scalars(select(DicomObject.sop_instance_uid)))


def _slice(tmp_path: Path, name: str = "slice.dcm") -> tuple[Path, str]:
    ds = f.cbct_series(n_slices=1, rows=16, columns=16)[0]
    return f.write(ds, tmp_path / name), str(ds.SOPInstanceUID)


def _ingest(
    ingestor: Ingestor, path: Path, sop_class: str, later: Callable[..., None] | None
) -> Any:
    return ingestor.ingest(
        path,
        sop_class_uid=sop_class,
        sop_instance_uid="",
        transfer_syntax_uid=EXPLICIT_LE,
        source=XVI,
        later=later,
    )


def test_an_image_row_waits_for_the_answer_and_a_record_row_does_not(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    kept: list[Callable[[], None]] = []
    path, uid = _slice(tmp_path)
    outcome = _ingest(ingestor, path, CTImageStorage, kept.append)
    assert outcome.status == Status.SUCCESS and outcome.created
    assert len(kept) == 1 and _uids(ingestor) == []
    # durable and named in .recent/ before the answer: what the reconciliation finds
    assert [r.sop_instance_uid for r in ingestor.store.recent()] == [uid]
    kept.pop()()
    assert _uids(ingestor) == [uid]

    record = f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=1), tmp_path / "r.dcm")
    assert _ingest(ingestor, record, RECORD, kept.append).status == Status.SUCCESS
    assert kept == [] and len(_uids(ingestor)) == 2  # row and event in one transaction


def test_an_image_row_never_written_is_restored_by_a_round(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    path, uid = _slice(tmp_path)
    assert _ingest(ingestor, path, CTImageStorage, lambda work: None).status == Status.SUCCESS
    assert _uids(ingestor) == []
    assert reconcile.reconcile(ingestor, lambda ae: XVI) == 1
    assert _uids(ingestor) == [uid]
    assert ingestor.store.recent() == []  # confirmed in that round


def test_a_row_written_meanwhile_by_a_resend_is_not_written_twice(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    kept: list[Callable[[], None]] = []
    path, uid = _slice(tmp_path)
    again = tmp_path / "again.dcm"
    again.write_bytes(path.read_bytes())
    assert _ingest(ingestor, path, CTImageStorage, kept.append).status == Status.SUCCESS
    # the same bytes on another association, answered before the first row is written
    assert _ingest(ingestor, again, CTImageStorage, None).status == Status.SUCCESS
    kept.pop()()  # the unique constraint refuses it: a warning, not an exception
    assert _uids(ingestor) == [uid]


class _Dul:
    """What after_answer's send wrapper uses of a DUL provider (no socket: pynetdicom's
    ``_send`` only logs)."""

    def __init__(self) -> None:
        self.assoc = object()
        self.socket = None


def test_the_kept_write_is_done_after_a_pdu_of_data_is_sent() -> None:
    dul = _Dul()
    done: list[str] = []
    after_answer.later(dul.assoc, lambda: done.append("row"))
    after_answer._send(dul, A_RELEASE_RP())  # type: ignore[arg-type]
    assert done == []
    after_answer._send(dul, P_DATA_TF())  # type: ignore[arg-type]
    assert done == ["row"]
    after_answer._send(dul, P_DATA_TF())  # type: ignore[arg-type]
    assert done == ["row"]  # once


def test_another_thread_waits_for_the_kept_write_in_progress() -> None:
    assoc = object()
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def work() -> None:
        started.set()
        release.wait(5)
        order.append("row")

    after_answer.later(assoc, work)
    writer = threading.Thread(target=after_answer.done, args=(assoc,))
    writer.start()
    assert started.wait(5)
    waiter = threading.Thread(target=lambda: (after_answer.done(assoc), order.append("release")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # the release's publication waits for the row
    release.set()
    writer.join(5)
    waiter.join(5)
    assert order == ["row", "release"]


def test_a_failing_kept_write_is_logged_and_the_connection_goes_on() -> None:
    dul = _Dul()

    def fails() -> None:
        raise OSError("disk gone")

    after_answer.later(dul.assoc, fails)
    after_answer._send(dul, P_DATA_TF())  # type: ignore[arg-type]


def test_over_one_association_every_slice_is_indexed_and_a_resend_is_a_duplicate(
    scp: RunningScp, tmp_path: Path
) -> None:
    """Through the real SCP: a slice re-sent right after its answer finds its row (written
    before the DUL thread reads the next request), and after the release every slice has
    its row."""
    slices = f.cbct_series(n_slices=4, rows=16, columns=16)
    paths = [f.write(ds, tmp_path / f"s{i}.dcm") for i, ds in enumerate(slices)]
    assert pynetdicom_store(scp.dicom_port, [*paths, paths[-1]]) == [0] * 5
    metrics = httpx.get(f"{scp.http}/metrics").text
    assert 'rtops_scp_duplicates_total{sop_class="CT Image"} 1.0' in metrics
    assert 'rtops_scp_objects_stored_total{sop_class="CT Image"} 4.0' in metrics
    assert _uids(scp.app.state.ingestor) == sorted(str(ds.SOPInstanceUID) for ds in slices)
