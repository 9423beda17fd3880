"""Version histories from real plans (the vendors' files in tests/data), read by the
SCP's own extractor into the event it publishes, then versioned. The verification plan never
joins a course; each plan's facts and checklist come out of the vendor's file."""

from __future__ import annotations

from datetime import UTC, datetime

import pydicom
import pytest

from services.documents.service import DocumentsService
from services.scp_listener import extract
from shared.auth import Principal
from shared.events import PlanReceived, SourceDevice, StoredObject, envelope
from shared.events.dicom import PlanReference
from tests.support import TEST_DATA

TPS = SourceDevice(ae_title="TPS1", role="tps")
READER = Principal(user="pat", roles=frozenset({"physicist"}))
RECEIVED = datetime(2026, 3, 2, 12, tzinfo=UTC)


def real_plan(name: str, *, patient_id: str | None = None, **changes: object) -> PlanReceived:
    ds = pydicom.dcmread(TEST_DATA / name, force=True)
    stored = StoredObject(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        storage_key=f"k/{ds.SOPInstanceUID}",
        sha256="0" * 64,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    plan = extract.plan_received(ds, stored, TPS, "America/New_York")
    if patient_id:
        changes["patient"] = plan.patient.model_copy(update={"id": patient_id})
    return plan.model_copy(update=changes)


@pytest.mark.parametrize(
    ("name", "fractions", "technique", "approval"),
    [
        (
            "eclipse-8.1-prostate-phantom/RP.1.2.246.352.71.5.2088656855.377401.20110920153647.dcm",
            23,
            "3D",
            "UNAPPROVED",
        ),
        ("monaco/rtplan_28fx.dcm", 28, None, "APPROVED"),
        ("monaco/rtplan_two_fraction_groups.dcm", 20, None, "APPROVED"),
        ("pinnacle/rtplan.dcm", 25, None, "UNAPPROVED"),
    ],
)
def test_a_real_plan_is_version_1_with_its_facts(
    service: DocumentsService,
    name: str,
    fractions: int,
    technique: str | None,
    approval: str | None,
) -> None:
    plan = real_plan(name)
    service.apply(envelope(plan, source="rtops/scp_listener", time=RECEIVED))
    [version] = service.plan_history(plan.patient.id, principal=READER, resource="t")
    assert version["version"] == 1 and version["predecessor_uid"] is None
    assert version["fractions"] == fractions
    if technique:
        assert version["technique"] == technique
    assert version["approval_status"] == approval
    assert "written_directive" in version["missing_documents"]


def test_a_real_chain_an_adaptation_and_the_verification_plan(service: DocumentsService) -> None:
    """The Monaco plan, then the two-fraction-group plan as its adaptation (same patient,
    PREDECESSOR), then ARIA's verification plan verifying it: two versions, QA ignored."""
    first = real_plan("monaco/rtplan_28fx.dcm", patient_id="REAL-1")
    adapted = real_plan(
        "monaco/rtplan_two_fraction_groups.dcm",
        patient_id="REAL-1",
        referenced_plans=(
            PlanReference(
                sop_instance_uid=first.object.sop_instance_uid, relationship="PREDECESSOR"
            ),
        ),
    )
    verification = real_plan("aria-verification/RP_verification_plan.dcm", patient_id="REAL-1")
    assert verification.intent == "VERIFICATION"
    for plan in (verification, adapted, first):
        service.apply(envelope(plan, source="rtops/scp_listener", time=RECEIVED))
    history = service.plan_history("REAL-1", principal=READER, resource="t")
    assert [(v["plan_uid"], v["version"]) for v in history] == [
        (first.object.sop_instance_uid, 1),
        (adapted.object.sop_instance_uid, 2),
    ]
    assert "fractions: 28 -> 20" in history[1]["changes"]
    assert history[0]["superseded_by"] == adapted.object.sop_instance_uid
