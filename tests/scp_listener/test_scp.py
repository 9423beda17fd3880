"""The SCP through pynetdicom as the sender: statuses, stored objects, events, failures."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from services.scp_listener.app import SERVICE
from services.scp_listener.store import ArrivalHour, DicomObject, Outbox
from shared.db import make_engine, session_factory
from shared.events import SourceDevice
from tests import dicom_factories as f
from tests.support import (
    RunningScp,
    await_events,
    by_type,
    pynetdicom_echo,
    pynetdicom_store,
    send_file_as_is,
    stream_events,
    wait_for,
)

PLAN = "rtops.dicom.plan.received"
RECORD = "rtops.dicom.treatment.recorded"
IMAGING = "rtops.dicom.imaging.acquired"
REGISTRATION = "rtops.dicom.registration.received"
DOCUMENT = "rtops.dicom.document.received"
RT_BEAMS_RECORD = "1.2.840.10008.5.1.4.1.1.481.4"
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
LINAC = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1")


def counts(scp: RunningScp) -> tuple[int, int, int]:
    """(index rows, outbox rows, files in the object store)."""
    engine = make_engine(scp.settings, SERVICE)
    try:
        with session_factory(engine)() as session:
            objects = session.scalar(select(func.count()).select_from(DicomObject)) or 0
            outbox = session.scalar(select(func.count()).select_from(Outbox)) or 0
    finally:
        engine.dispose()
    root = scp.settings.object_store()
    files = sum(1 for p in root.rglob("*.dcm") if ".incoming" not in p.parts)
    return objects, outbox, files


def test_echo_and_health(scp: RunningScp) -> None:
    rsp = pynetdicom_echo(scp.dicom_port)
    assert rsp.Status == 0x0000
    assert httpx.get(f"{scp.http}/healthz").json() == {"status": "ok"}
    ready = wait_for(
        lambda: httpx.get(f"{scp.http}/readyz").status_code == 200, message="readiness"
    )
    assert ready


def test_week_of_objects_produces_the_expected_events(scp: RunningScp, tmp_path: Path) -> None:
    fraction = f.imaged_fraction(fractions=25, fraction_number=1, cbct_slices=4)
    plan, cbct = fraction.plan, fraction.cbct
    paths = fraction.write(tmp_path)
    assert pynetdicom_store(scp.dicom_port, paths) == [0] * len(paths)

    events = await_events(scp, 4)
    assert sorted(e.type for e in events) == sorted([PLAN, RECORD, IMAGING, REGISTRATION])
    (plan_event,) = by_type(events, PLAN)
    assert plan_event.data.object.sop_instance_uid == plan.SOPInstanceUID  # type: ignore[attr-defined]
    assert plan_event.data.fraction_groups[0].fractions_planned == 25  # type: ignore[attr-defined]
    assert plan_event.data.patient.id == "RTOPS-TEST-001"
    assert plan_event.data.source.ae_title == "TRUEBEAM1"
    (rec_event,) = by_type(events, RECORD)
    assert rec_event.data.plan_uid == plan.SOPInstanceUID  # type: ignore[attr-defined]
    assert rec_event.data.fraction_numbers == (1,)  # type: ignore[attr-defined]
    assert rec_event.data.machine == "TrueBeam1"  # type: ignore[attr-defined]
    (img_event,) = by_type(events, IMAGING)
    assert img_event.data.classification == "cbct"  # type: ignore[attr-defined]
    assert img_event.data.instance_count == 4  # type: ignore[attr-defined]
    assert img_event.data.machine == "TrueBeam1"  # type: ignore[attr-defined]
    assert img_event.data.series_instance_uid == cbct[0].SeriesInstanceUID  # type: ignore[attr-defined]
    (reg_event,) = by_type(events, REGISTRATION)
    assert reg_event.data.moving_series_uids == (cbct[0].SeriesInstanceUID,)  # type: ignore[attr-defined]
    assert reg_event.data.translation_mm.x == pytest.approx(1.5)  # type: ignore[attr-defined]

    # The stored file decodes to what was sent (byte-exact storage: the transfer syntax test).
    stored = scp.settings.object_store() / rec_event.data.object.storage_key  # type: ignore[attr-defined]
    assert pydicom.dcmread(stored) == pydicom.dcmread(paths[-1])

    # Re-sending everything creates nothing new.
    before = counts(scp)
    assert pynetdicom_store(scp.dicom_port, paths) == [0] * len(paths)
    assert counts(scp) == before
    assert len(await_events(scp, 4)) == 4


def test_late_instance_republishes_its_series(scp: RunningScp, tmp_path: Path) -> None:
    cbct = f.cbct_series(n_slices=3)
    paths = f.write_series(cbct, tmp_path)
    pynetdicom_store(scp.dicom_port, paths[:2])
    first = await_events(scp, 1)
    assert first[0].data.instance_count == 2  # type: ignore[attr-defined]
    pynetdicom_store(scp.dicom_port, paths[2:])
    events = await_events(scp, 2)
    assert [e.data.instance_count for e in events] == [2, 3]  # type: ignore[attr-defined]
    assert events[0].data.series_instance_uid == events[1].data.series_instance_uid  # type: ignore[attr-defined]


def test_changed_content_under_same_uid_is_a_new_revision(scp: RunningScp, tmp_path: Path) -> None:
    record = f.treatment_record(plan_uid="1.2.3")
    first = f.write(record, tmp_path / "a.dcm")
    record.OperatorsName = "Other^Therapist"
    second = f.write(record, tmp_path / "b.dcm")
    assert pynetdicom_store(scp.dicom_port, [first, second]) == [0, 0]
    events = await_events(scp, 2)
    assert [e.data.object.revision for e in events] == [1, 2]  # type: ignore[attr-defined]
    assert counts(scp)[0] == 2 and counts(scp)[2] == 2


def test_unknown_calling_ae_is_rejected(scp: RunningScp) -> None:
    assoc = pynetdicom_echo(scp.dicom_port, calling="STRANGER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    metrics = httpx.get(f"{scp.http}/metrics").text
    assert 'rtops_scp_rejections_total{reason="unknown_calling_ae"} 1.0' in metrics


def test_wrong_called_ae_is_rejected(scp: RunningScp) -> None:
    assoc = pynetdicom_echo(scp.dicom_port, called="SOMEONE")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x07


def test_mr_image_is_refused_per_presentation_context(scp: RunningScp, tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage

    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
    try:
        assert assoc.is_established
        results = {cx.abstract_syntax: cx.result for cx in assoc.rejected_contexts}
        assert results == {MRImageStorage: 0x03}  # abstract-syntax-not-supported
        with pytest.raises(ValueError, match="No presentation context"):
            assoc.send_c_store(f.mr_image())
    finally:
        assoc.release()
    assert counts(scp) == (0, 0, 0)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # the random bytes' first "element"
@pytest.mark.parametrize(
    ("kind", "status"),
    [
        # Cut inside the beam sequence: shorter than its header says (check_complete).
        ("truncated", 0xC210),
        # An undefined-length item runs into the end of the file: pydicom raises.
        ("unterminated_sequence", 0xC210),
        # A defined-length sequence announces 1 MiB of a 434-byte file (check_complete).
        ("overrun", 0xC210),
        # Random bytes: their first "element" claims a length far past the end.
        ("random", 0xC210),
        # A complete, well-formed record sent as an RT Plan: PS3.4 B.2.3 A900.
        ("wrong_sop_class", 0xA900),
    ],
)
def test_malformed_object_fails_and_leaves_nothing(
    scp: RunningScp, tmp_path: Path, kind: str, status: int
) -> None:
    record = f.treatment_record(plan_uid="1.2.3")
    good = f.write(record, tmp_path / "good.dcm")
    sent_as = RT_BEAMS_RECORD
    if kind == "truncated":
        bad = f.truncated_copy(good, tmp_path / "bad.dcm", keep_fraction=0.6)
    elif kind == "wrong_sop_class":
        # The two UIDs are the same length: rename the class in the file meta only, which is
        # where the sender takes the class it sends as.
        data = good.read_bytes()
        meta_end = f._dataset_offset(data)
        meta = data[:meta_end].replace(RT_BEAMS_RECORD.encode(), RT_PLAN_STORAGE.encode(), 1)
        bad = tmp_path / "bad.dcm"
        bad.write_bytes(meta + data[meta_end:])
        sent_as = RT_PLAN_STORAGE
    else:
        bad = f.garbage_dicom(tmp_path / "bad.dcm", kind=kind)  # type: ignore[arg-type]
    # Send the file's bytes as they are: a sender that decoded it first would repair it.
    ts = str(pydicom.dcmread(good).file_meta.TransferSyntaxUID)
    assert (
        send_file_as_is(scp.dicom_port, bad, sop_class_uid=sent_as, transfer_syntax_uid=ts)
        == status
    )
    assert counts(scp) == (0, 0, 0)
    assert stream_events(scp.settings) == []


def test_storage_failure_answers_a700_and_keeps_nothing(scp: RunningScp, tmp_path: Path) -> None:
    path = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
    store_root = scp.settings.object_store()
    aside = store_root.with_name("objects-aside")
    store_root.rename(aside)
    store_root.write_text("the object store volume is gone")  # every write now fails
    try:
        assert pynetdicom_store(scp.dicom_port, [path]) == [0xA700]
        assert counts(scp)[:2] == (0, 0)
    finally:
        store_root.unlink()
        aside.rename(store_root)
    # The sender's retry after the fault is stored, once.
    assert pynetdicom_store(scp.dicom_port, [path]) == [0]
    assert counts(scp) == (1, 1, 1)


def test_stores_while_nats_is_unreachable(start_scp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from shared.natsd import free_port

    scp = start_scp(nats_url=f"nats://127.0.0.1:{free_port()}")
    record = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
    assert pynetdicom_store(scp.dicom_port, [record]) == [0]
    assert counts(scp)[:2] == (1, 1)
    assert httpx.get(f"{scp.http}/readyz").status_code == 503
    assert "rtops_scp_outbox_depth 1.0" in httpx.get(f"{scp.http}/metrics").text


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, old consoles)
    ],
)
def test_stored_data_set_is_the_bytes_sent(
    scp: RunningScp, tmp_path: Path, transfer_syntax: str
) -> None:
    """The stored file is the data set exactly as it came over the wire (domain-dicom.md s. 2),
    behind file meta that the SCP writes (pynetdicom leaves it to the receiver, so the meta
    and preamble are not the sender's)."""
    record = f.treatment_record(plan_uid="1.2.3", transfer_syntax_uid=transfer_syntax)
    sent = f.write(record, tmp_path / "rec.dcm")
    status = send_file_as_is(
        scp.dicom_port, sent, sop_class_uid=RT_BEAMS_RECORD, transfer_syntax_uid=transfer_syntax
    )
    assert status == 0
    (event,) = await_events(scp, 1)
    assert event.data.object.transfer_syntax_uid == transfer_syntax  # type: ignore[attr-defined]
    stored = scp.settings.object_store() / event.data.object.storage_key  # type: ignore[attr-defined]
    sent_bytes, stored_bytes = sent.read_bytes(), stored.read_bytes()
    data_set = sent_bytes[f._dataset_offset(sent_bytes) :]
    assert stored_bytes[f._dataset_offset(stored_bytes) :] == data_set
    meta = pydicom.dcmread(stored).file_meta
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.MediaStorageSOPInstanceUID == record.SOPInstanceUID


def test_every_reference_sample_through_pynetdicom(scp: RunningScp) -> None:
    from tests.support import TEST_DATA

    files = sorted(TEST_DATA.rglob("*.dcm"))
    assert pynetdicom_store(scp.dicom_port, files, calling="TPS1") == [0] * len(files)
    assert counts(scp)[0] == len(files)
    plans = [p for p in files if pydicom.dcmread(p, force=True).Modality == "RTPLAN"]
    expected = len(plans) + 2  # a plan event each, and the two RT Images' two series
    events = await_events(scp, expected)
    assert len(by_type(events, PLAN)) == len(plans) and len(by_type(events, IMAGING)) == 2
    assert len(events) == expected
    assert pynetdicom_store(scp.dicom_port, files, calling="TPS1") == [0] * len(files)
    assert len(await_events(scp, expected)) == expected


# ---------------------------------------------------------------- malformed data vs our bugs


def _malformed_value() -> None:
    int("not a number")  # what a pydicom IS/DS conversion of a bad value raises


def _bad_payload_value() -> None:
    from shared.events import Patient

    Patient(id=None)  # type: ignore[arg-type]  # pydantic ValidationError


def _reader_says_malformed() -> None:
    from services.scp_listener.extract import MalformedObject

    raise MalformedObject("Beam Meterset is not a number")


def _bug_attribute() -> None:
    None.value  # type: ignore[attr-defined]  # noqa: B018


def _bug_key() -> None:
    {}["BeamSequence"]


@pytest.mark.parametrize(
    ("failure", "status", "reason"),
    [
        (_malformed_value, 0xC210, "cannot_understand"),
        (_bad_payload_value, 0xC210, "cannot_understand"),
        (_reader_says_malformed, 0xC210, "cannot_understand"),
        (_bug_attribute, 0x0110, "internal_error"),
        (_bug_key, 0x0110, "internal_error"),
    ],
)
def test_reader_failures_are_malformed_data_or_internal_errors(
    scp: RunningScp,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[], None],
    status: int,
    reason: str,
) -> None:
    from services.scp_listener.extract import received

    def reader(*args: object) -> None:
        failure()

    monkeypatch.setitem(received._BUILDERS, "treatment", reader)
    path = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
    assert pynetdicom_store(scp.dicom_port, [path]) == [status]
    assert counts(scp) == (0, 0, 0)
    # Named in .recent/ before its header was read, withdrawn when it was not stored.
    assert list((scp.settings.object_store() / ".recent").iterdir()) == []
    metrics = httpx.get(f"{scp.http}/metrics").text
    assert f'rtops_scp_rejections_total{{reason="{reason}"}} 1.0' in metrics
    internal = 1.0 if status == 0x0110 else 0.0
    assert f"rtops_scp_internal_errors_total {internal}" in metrics


def test_a_bug_in_the_image_facts_is_an_internal_error(
    scp: RunningScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.scp_listener.extract import received

    def image_facts(*args: object) -> None:
        raise NameError("name 'station' is not defined")

    monkeypatch.setattr(received, "image_facts", image_facts)
    paths = f.write_series(f.cbct_series(n_slices=1), tmp_path)
    assert pynetdicom_store(scp.dicom_port, paths) == [0x0110]
    assert counts(scp) == (0, 0, 0)


def test_internal_error_outcome_names_the_bug(
    scp: RunningScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.scp_listener.extract import received
    from services.scp_listener.service import Status

    monkeypatch.setitem(received._BUILDERS, "treatment", lambda *a: _bug_key())
    path = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
    outcome = scp.app.state.ingestor.ingest(
        path,
        sop_class_uid=RT_BEAMS_RECORD,
        sop_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        source=LINAC,
    )
    assert outcome.status == Status.PROCESSING_FAILURE
    assert outcome.reason == "internal error: KeyError: 'BeamSequence'"


# ---------------------------------------------------------------- failed commits leave no file


@contextlib.contextmanager
def failing_object_commits(scp: RunningScp) -> Iterator[None]:
    """Make the commit of every transaction that indexed an object fail, as a full disk or a
    lost database would; other transactions (relay, sweep) are left alone."""
    engine = scp.app.state.session_factory.kw["bind"]

    def mark(conn: Any, cursor: Any, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT") and "object_arrival" in statement:
            conn.info["fail_commit"] = True

    def commit(conn: Any) -> None:
        if conn.info.pop("fail_commit", False):
            raise OperationalError("COMMIT", None, Exception("disk I/O error (injected)"))

    event.listen(engine, "before_cursor_execute", mark)
    event.listen(engine, "commit", commit)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", mark)
        event.remove(engine, "commit", commit)


def test_failed_commit_removes_the_file_it_placed(scp: RunningScp, tmp_path: Path) -> None:
    path = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
    with failing_object_commits(scp):
        assert pynetdicom_store(scp.dicom_port, [path]) == [0xA700]
    assert counts(scp) == (0, 0, 0)  # files in the object store directory, not rows only
    # The sender's retry is stored.
    assert pynetdicom_store(scp.dicom_port, [path]) == [0]
    assert counts(scp) == (1, 1, 1)


def test_failed_commit_of_a_revision_keeps_the_earlier_file(
    scp: RunningScp, tmp_path: Path
) -> None:
    record = f.treatment_record(plan_uid="1.2.3")
    first = f.write(record, tmp_path / "a.dcm")
    record.OperatorsName = "Other^Therapist"
    second = f.write(record, tmp_path / "b.dcm")
    assert pynetdicom_store(scp.dicom_port, [first]) == [0]
    assert counts(scp) == (1, 1, 1)
    with failing_object_commits(scp):
        assert pynetdicom_store(scp.dicom_port, [second]) == [0xA700]
    assert counts(scp) == (1, 1, 1)


_FAILING_SERIES_ROW = {
    "sqlite": [
        "CREATE TRIGGER rtops_test_fail BEFORE INSERT ON image_series "
        "BEGIN SELECT RAISE(ABORT, 'injected'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION rtops_test_fail() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected'; END $$",
        "CREATE TRIGGER rtops_test_fail BEFORE INSERT ON image_series "
        "FOR EACH ROW EXECUTE FUNCTION rtops_test_fail()",
    ],
}


def test_an_image_whose_series_row_fails_is_indexed_by_a_later_round(
    scp: RunningScp, tmp_path: Path
) -> None:
    """An image's row, its arrival count and its series mark are one statement: the last of
    them failing undoes the first two. The row is written after the answer (after_answer.py),
    so the image was answered success, durable and named in .recent/: a reconciliation round
    indexes it once the database takes the row."""
    from services.scp_listener import reconcile

    paths = f.write_series(f.cbct_series(n_slices=1), tmp_path)
    engine = make_engine(scp.settings, SERVICE)
    ingestor = scp.app.state.ingestor
    try:
        with engine.begin() as conn:
            for statement in _FAILING_SERIES_ROW[engine.dialect.name]:
                conn.exec_driver_sql(statement)
        assert pynetdicom_store(scp.dicom_port, paths) == [0]
        assert counts(scp) == (0, 0, 1)
        with session_factory(engine)() as session:
            assert session.scalar(select(func.count()).select_from(ArrivalHour)) == 0
        assert len(ingestor.store.recent()) == 1
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER rtops_test_fail"
                + (" ON image_series" if engine.dialect.name == "postgresql" else "")
            )
    finally:
        engine.dispose()
    linac = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1")
    assert reconcile.reconcile(ingestor, lambda ae: linac) == 1
    objects, _, files = counts(scp)  # the outbox may hold the series' event or not yet
    assert (objects, files) == (1, 1)
    assert pynetdicom_store(scp.dicom_port, paths) == [0]  # a duplicate now
    assert counts(scp)[0] == 1


def test_failed_commit_keeps_a_file_that_was_already_there(scp: RunningScp, tmp_path: Path) -> None:
    from services.scp_listener.objectstore import ObjectStore, sha256_of

    path = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rec.dcm")
    store = scp.app.state.ingestor.store
    key = ObjectStore.key_for(sha256_of(path)[0])
    # Left by an earlier attempt that crashed between the rename and the commit.
    store.path(key).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, store.path(key))
    with failing_object_commits(scp):
        outcome = scp.app.state.ingestor.ingest(
            path,
            sop_class_uid=RT_BEAMS_RECORD,
            sop_instance_uid=str(pydicom.dcmread(path).SOPInstanceUID),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            source=LINAC,
        )
    assert outcome.status == 0xA700
    assert store.path(key).exists()
    assert counts(scp) == (0, 0, 1)
