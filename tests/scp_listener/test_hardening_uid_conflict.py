"""Issue 15: a SOP Instance UID re-sent for another patient or as another SOP class is
refused (0xC220), never chained as a new revision of the first object, and publishes nothing."""

from __future__ import annotations

from pathlib import Path

from services.scp_listener.service import Status
from tests import dicom_factories as f
from tests.scp_listener.test_scp import PLAN, RECORD, counts
from tests.support import RunningScp, by_type, pynetdicom_store, stream_events


def test_same_uid_for_another_patient_is_refused_and_publishes_nothing(
    scp: RunningScp, tmp_path: Path
) -> None:
    first = f.rt_plan()
    other = f.rt_plan(plan_uid=first.SOPInstanceUID, name="Someone else's plan")
    other.PatientID = f"{first.PatientID}-OTHER"
    other.PatientName = "Other^Patient"
    paths = [f.write(first, tmp_path / "a.dcm"), f.write(other, tmp_path / "b.dcm")]
    assert pynetdicom_store(scp.dicom_port, paths) == [0x0000, Status.UID_CONFLICT]
    assert counts(scp) == (1, 1, 1)
    scp.wait_outbox_empty()
    plans = by_type(stream_events(scp.settings), PLAN)
    assert len(plans) == 1
    assert plans[0].data.patient.id == first.PatientID


def test_same_uid_as_another_sop_class_is_refused(scp: RunningScp, tmp_path: Path) -> None:
    plan = f.rt_plan()
    record = f.treatment_record(plan_uid=plan.SOPInstanceUID)
    record.SOPInstanceUID = plan.SOPInstanceUID
    record.file_meta.MediaStorageSOPInstanceUID = plan.SOPInstanceUID
    paths = [f.write(plan, tmp_path / "plan.dcm"), f.write(record, tmp_path / "record.dcm")]
    assert pynetdicom_store(scp.dicom_port, paths) == [0x0000, Status.UID_CONFLICT]
    assert counts(scp) == (1, 1, 1)
    scp.wait_outbox_empty()
    assert by_type(stream_events(scp.settings), RECORD) == []


def test_same_uid_same_patient_other_content_is_still_a_revision(
    scp: RunningScp, tmp_path: Path
) -> None:
    first = f.rt_plan()
    edited = f.rt_plan(plan_uid=first.SOPInstanceUID, name="Prostate VMAT v2")
    for attr in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID"):
        setattr(edited, attr, getattr(first, attr))
    paths = [f.write(first, tmp_path / "a.dcm"), f.write(edited, tmp_path / "b.dcm")]
    assert pynetdicom_store(scp.dicom_port, paths) == [0x0000, 0x0000]
    assert counts(scp) == (2, 2, 2)
