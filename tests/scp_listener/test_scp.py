"""The SCP through pynetdicom as the sender: statuses, stored objects, events, failures."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import func, select

from services.scp_listener.app import SERVICE
from services.scp_listener.store import DicomObject, Outbox
from shared.db import make_engine, session_factory
from tests import dicom_factories as f
from tests.support import (
    RunningScp,
    await_events,
    by_type,
    pynetdicom_echo,
    pynetdicom_store,
    stream_events,
    wait_for,
)

PLAN = "rtops.dicom.plan.received"
RECORD = "rtops.dicom.treatment.recorded"
IMAGING = "rtops.dicom.imaging.acquired"
REGISTRATION = "rtops.dicom.registration.received"


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

    events = await_events(scp.settings, 4)
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

    # The stored file is the received dataset byte for byte, with file meta added.
    stored = scp.settings.object_store() / rec_event.data.object.storage_key  # type: ignore[attr-defined]
    original = pydicom.dcmread(paths[-1])
    assert pydicom.dcmread(stored) == original

    # Re-sending everything creates nothing new.
    before = counts(scp)
    assert pynetdicom_store(scp.dicom_port, paths) == [0] * len(paths)
    assert counts(scp) == before
    assert len(await_events(scp.settings, 4, settle=1.5)) == 4


def test_late_instance_republishes_its_series(scp: RunningScp, tmp_path: Path) -> None:
    cbct = f.cbct_series(n_slices=3)
    paths = f.write_series(cbct, tmp_path)
    pynetdicom_store(scp.dicom_port, paths[:2])
    first = await_events(scp.settings, 1)
    assert first[0].data.instance_count == 2  # type: ignore[attr-defined]
    pynetdicom_store(scp.dicom_port, paths[2:])
    events = await_events(scp.settings, 2)
    assert [e.data.instance_count for e in events] == [2, 3]  # type: ignore[attr-defined]
    assert events[0].data.series_instance_uid == events[1].data.series_instance_uid  # type: ignore[attr-defined]


def test_changed_content_under_same_uid_is_a_new_revision(scp: RunningScp, tmp_path: Path) -> None:
    record = f.treatment_record(plan_uid="1.2.3")
    first = f.write(record, tmp_path / "a.dcm")
    record.OperatorsName = "Other^Therapist"
    second = f.write(record, tmp_path / "b.dcm")
    assert pynetdicom_store(scp.dicom_port, [first, second]) == [0, 0]
    events = await_events(scp.settings, 2)
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
@pytest.mark.parametrize("kind", ["truncated", "unterminated_sequence", "overrun", "random"])
def test_malformed_object_fails_and_leaves_nothing(
    scp: RunningScp, tmp_path: Path, kind: str
) -> None:
    from pynetdicom import _config

    good = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "good.dcm")
    if kind == "truncated":
        bad = f.truncated_copy(good, tmp_path / "bad.dcm", keep_fraction=0.6)
    else:
        bad = f.garbage_dicom(tmp_path / "bad.dcm", kind=kind)  # type: ignore[arg-type]
    # Send the file's bytes as they are: a sender that decoded it first would repair it.
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        from pynetdicom import AE
        from pynetdicom.sop_class import RTBeamsTreatmentRecordStorage

        ae = AE(ae_title="TRUEBEAM1")
        ts = str(pydicom.dcmread(good).file_meta.TransferSyntaxUID)
        ae.add_requested_context(RTBeamsTreatmentRecordStorage, ts)
        assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
        rsp = assoc.send_c_store(bad)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert rsp.Status in (0xC210, 0xA900)
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
def test_transfer_syntaxes_are_stored_as_received(
    scp: RunningScp, tmp_path: Path, transfer_syntax: str
) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import RTBeamsTreatmentRecordStorage

    record = f.treatment_record(plan_uid="1.2.3", transfer_syntax_uid=transfer_syntax)
    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(RTBeamsTreatmentRecordStorage, transfer_syntax)
    assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
    assert assoc.is_established
    assert assoc.send_c_store(record).Status == 0
    assoc.release()
    (event,) = await_events(scp.settings, 1)
    assert event.data.object.transfer_syntax_uid == transfer_syntax  # type: ignore[attr-defined]
    stored = pydicom.dcmread(scp.settings.object_store() / event.data.object.storage_key)  # type: ignore[attr-defined]
    assert stored.file_meta.TransferSyntaxUID == transfer_syntax
    assert stored.SOPInstanceUID == record.SOPInstanceUID
    assert stored.TreatmentSessionBeamSequence[0].DeliveredPrimaryMeterset == (
        record.TreatmentSessionBeamSequence[0].DeliveredPrimaryMeterset
    )


def test_every_reference_sample_through_pynetdicom(scp: RunningScp) -> None:
    from tests.support import SHARED_DATA

    files = sorted(SHARED_DATA.rglob("*.dcm"))
    assert pynetdicom_store(scp.dicom_port, files, calling="TPS1") == [0] * len(files)
    assert counts(scp)[0] == len(files)
    plans = [p for p in files if pydicom.dcmread(p, force=True).Modality == "RTPLAN"]
    expected = len(plans) + 2  # a plan event each, and the two RT Images' two series
    events = await_events(scp.settings, expected)
    assert len(by_type(events, PLAN)) == len(plans) and len(by_type(events, IMAGING)) == 2
    assert len(events) == expected
    assert pynetdicom_store(scp.dicom_port, files, calling="TPS1") == [0] * len(files)
    assert len(await_events(scp.settings, expected, settle=1.5)) == expected
