"""Contract tests of the event envelope and payloads (shared/events.py).

Every service in the suite reads these bytes, so the tests pin the wire format: round trips,
deterministic ids, the failure modes of ``parse_event``, forward compatibility, upcasting, and
the committed JSON Schemas in docs/events/.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from services.cli import write_schemas
from shared.events import (
    PAYLOADS,
    UPCASTERS,
    BeamDelivery,
    BookingChanged,
    CloudEvent,
    CouchPosition,
    DigestItem,
    DoseReference,
    EventPayload,
    FractionGroup,
    FractionGroupSummary,
    ImageApproval,
    ImagingAcquired,
    InvalidEvent,
    Override,
    Patient,
    PlannedBeam,
    PlanReceived,
    PlanReference,
    RegistrationItem,
    RegistrationReceived,
    ReviewDigest,
    ReviewDocumented,
    ReviewOverdue,
    SimCompleted,
    SourceDevice,
    StoredObject,
    TreatmentRecorded,
    TreatmentSummarized,
    Vector3,
    envelope,
    event_id,
    parse_event,
)
from shared.events.billing import ChargePosted, ChargeVoided
from shared.events.dicom import DocumentReceived
from shared.events.documents import CourseRegrouped, NoteSigned, PlanVersioned, TreatmentFlagged
from shared.events.qa import FractionAssessed, QualifyingReview

REPO = Path(__file__).resolve().parents[2]
COMMITTED_SCHEMAS = REPO / "docs" / "events"
SOURCE = "urn:rtops:scp_listener"
WHEN = datetime(2026, 3, 2, 14, 5, 9, 123456, tzinfo=UTC)

PATIENT = Patient(id="RT-0001", issuer="HOSP", name="DOE^JANE", birth_date=date(1960, 5, 17))
LINAC = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1", site="Main")


def stored(uid: str, *, revision: int = 1) -> StoredObject:
    return StoredObject(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.481.5",
        sop_instance_uid=uid,
        study_instance_uid="1.2.3.100",
        series_instance_uid="1.2.3.200",
        storage_key=f"ab/{uid}.dcm",
        revision=revision,
        sha256="0" * 64,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def plan(uid: str = "1.2.3.4.1", *, revision: int = 1, **fields: Any) -> PlanReceived:
    return PlanReceived(
        patient=PATIENT, source=LINAC, object=stored(uid, revision=revision), ion=False, **fields
    )


# One fully populated sample per payload type: nested models, tuples, dates, datetimes and
# floats are where a serializer change would break the round trip.
SAMPLES: dict[type[EventPayload], EventPayload] = {
    PlanReceived: plan(
        label="PROST",
        name="Prostate 78/39",
        plan_date=date(2026, 2, 27),
        plan_time="101500",
        intent="CURATIVE",
        treatment_site="Prostate",
        approval_status="APPROVED",
        reviewer_name="SMITH^ANN",
        reviewed_at=WHEN,
        referenced_plans=(PlanReference(sop_instance_uid="1.2.3.4.0", relationship="PRIOR"),),
        fraction_groups=(FractionGroup(number=1, fractions_planned=39, beam_count=2),),
        dose_references=(DoseReference(number=1, type="TARGET", target_prescription_dose_gy=78.0),),
        beams=(
            PlannedBeam(
                number=1,
                name="ARC1",
                machine="TrueBeam1",
                energies=(6.0, 10.0),
                control_points=178,
                meterset=312.5,
            ),
        ),
        machines=("TrueBeam1",),
        radiation_types=("PHOTON",),
        isocenter_count=1,
        motion_management=True,
        fixation_devices=("KNEEFIX",),
    ),
    TreatmentRecorded: TreatmentRecorded(
        patient=PATIENT,
        source=LINAC,
        object=stored("1.2.3.5.1"),
        record_kind="beams",
        treated_at=WHEN,
        treated_at_source="treatment_date",
        content_origin="DEVICE",
        plan_uid="1.2.3.4.1",
        referenced_record_uids=("1.2.3.5.0",),
        machine="TrueBeam1",
        fraction_group_number=1,
        fractions_planned=39,
        fraction_numbers=(1,),
        delivered=True,
        partial=False,
        operators=("RTT^ONE",),
        overrides=True,
        beams=(
            BeamDelivery(
                beam_number=1,
                beam_name="ARC1",
                delivery_type="TREATMENT",
                termination_status="NORMAL",
                specified_meterset=312.5,
                delivered_meterset=312.5,
                started_at=WHEN,
                ended_at=WHEN,
                couch=CouchPosition(vertical_mm=-120.5, lateral_mm=0.25),
                overrides=(Override(parameter="(300A,0134)", reason="x"),),
            ),
        ),
    ),
    TreatmentSummarized: TreatmentSummarized(
        patient=PATIENT,
        source=SourceDevice(ae_title="ARIA", role="ois"),
        object=stored("1.2.3.6.1"),
        plan_uid="1.2.3.4.1",
        current_status="COMPLETED",
        first_treatment_date=date(2026, 1, 5),
        most_recent_treatment_date=date(2026, 2, 27),
        fraction_groups=(
            FractionGroupSummary(number=1, fractions_planned=39, fractions_delivered=39),
        ),
    ),
    ImagingAcquired: ImagingAcquired(
        patient=PATIENT,
        source=LINAC,
        series_instance_uid="1.2.3.7.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        modality="CT",
        classification="cbct",
        instance_count=88,
        acquired_at=WHEN,
        last_acquired_at=WHEN,
        machine="TrueBeam1",
        approvals=(
            ImageApproval(sop_instance_uid="1.2.3.7.9", status="APPROVED", reviewed_at=WHEN),
        ),
        storage_keys=("aa/1.dcm", "aa/2.dcm"),
    ),
    RegistrationReceived: RegistrationReceived(
        patient=PATIENT,
        source=LINAC,
        object=stored("1.2.3.8.1"),
        kind="rigid",
        content_at=WHEN,
        creator_name="RTT^ONE",
        items=(
            RegistrationItem(
                frame_of_reference_uid="1.2.3.9",
                matrix_type="RIGID",
                matrix=(1.0, 0, 0, 1.5, 0, 1, 0, -2.25, 0, 0, 1, 0.1, 0, 0, 0, 1),
            ),
        ),
        moving_series_uids=("1.2.3.7.1",),
        translation_mm=Vector3(x=1.5, y=-2.25, z=0.1),
        rotation_deg=Vector3(x=0, y=0, z=0.5),
    ),
    DocumentReceived: DocumentReceived(
        patient=PATIENT,
        source=SourceDevice(ae_title="TPS1", role="tps"),
        object=stored("1.2.3.11.1", revision=2),
        title="Plan report PROST",
        mime_type="application/pdf",
        content_at=WHEN,
        referenced_plan_uid="1.2.3.4.1",
        referenced_study_uid="1.2.3.100",
    ),
    ReviewDocumented: ReviewDocumented(
        patient=PATIENT,
        review_id=7,
        fraction_key="RT-0001|1.2.3.4.1|1|5",
        plan_uid="1.2.3.4.1",
        fraction_number=5,
        treated_at=WHEN,
        machine="TrueBeam1",
        decision="approved",
        physician="dr.olga",
        reviewed_at=WHEN,
        due_at=WHEN,
        on_time=True,
        override_required=True,
        override_reason="couch shift accepted: new immobilisation",
    ),
    ReviewDigest: ReviewDigest(
        patient=Patient(id=""),
        physician="Oncologist^Olga",
        day=date(2026, 11, 24),
        flags=(
            DigestItem(
                kind="overdue_review",
                fraction_id=6,
                patient_id="RT-0001",
                fraction_number=6,
                treated_at=WHEN,
                due_at=WHEN,
                link="/v1/fractions/6",
            ),
        ),
    ),
    FractionAssessed: FractionAssessed(
        patient=PATIENT,
        fraction_key="RT-0001|1.2.3.4.1|1|5",
        plan_uid="1.2.3.4.1",
        fraction_group=1,
        fraction_number=5,
        revision=3,
        review_status="reviewed_on_time",
        on_time=True,
        due_at=WHEN,
        treated_at=WHEN,
        machine="TrueBeam1",
        physician="Oncologist^Olga",
        review=QualifyingReview(
            id=7, decision="approved", physician="dr.olga", reviewed_at=WHEN, origin="api"
        ),
        override_required=True,
        override_documented=True,
        imaging=("cbct",),
    ),
    ReviewOverdue: ReviewOverdue(
        patient=PATIENT,
        fraction_key="RT-0001|1.2.3.4.1|1|6",
        plan_uid="1.2.3.4.1",
        fraction_number=6,
        treated_at=WHEN,
        machine="TrueBeam1",
        physician="Oncologist^Olga",
        due_at=WHEN,
    ),
    BookingChanged: BookingChanged(
        patient=PATIENT,
        request_id="req-1",
        booking_id="book-1",
        revision=2,
        status="cancelled",
        start=WHEN,
        end=WHEN,
        room="ctsim1",
        machine="CTSim1",
        therapists=("tina", "tom"),
        procedure_start=WHEN,
        proceduralist="uro1",
        site="prostate",
        urgency="routine",
        treating_physician="Oncologist^Olga",
        reason="patient asked",
    ),
    SimCompleted: SimCompleted(
        patient=PATIENT,
        request_id="req-1",
        booking_id="book-1",
        service_date=date(2026, 11, 24),
        performed_at=WHEN,
        complexity="complex",
        four_d_ct=True,
        iv_contrast=True,
        immobilization=("vac-lok", "knee sponge"),
        study_instance_uid="1.2.3.10",
        series_instance_uids=("1.2.3.10.1",),
        treating_physician="Oncologist^Olga",
        site="Lung",
        room="CT-SIM-1",
    ),
    CourseRegrouped: CourseRegrouped(
        patient=PATIENT,
        regrouping_id="regroup-1",
        sequence=4,
        plan_uids=("1.2.3.4.1", "1.2.3.4.2"),
        course_id="course:1.2.3.4.1",
        corrected_by="dosimetrist.dan",
        corrected_at=WHEN,
        reason="boost is part of the course",
    ),
    NoteSigned: NoteSigned(
        patient=PATIENT,
        note_id="note-1",
        revision=2,
        course_id="course:1.2.3.4.1",
        week="2026-W48",
        kind="management_note",
        author="Oncologist^Olga",
        signed_at=WHEN,
        visit_date=date(2026, 11, 24),
        face_to_face=True,
    ),
    PlanVersioned: PlanVersioned(
        patient=PATIENT,
        plan_uid="1.2.3.4.2",
        revision=2,
        course_id="course:1.2.3.4.1",
        plan_version=2,
        predecessor_uid="1.2.3.4.1",
        label="PROST v2",
        approval_status="APPROVED",
        changes=("fractions: 28 -> 25",),
    ),
    TreatmentFlagged: TreatmentFlagged(
        patient=PATIENT,
        record_uid="1.2.3.5.1",
        plan_uid="1.2.3.4.1",
        course_id="course:1.2.3.4.1",
        plan_version=1,
        treated_at=WHEN,
        fraction_numbers=(3,),
        reasons=("superseded", "documents_incomplete"),
        missing_documents=("physics_plan_qa",),
        superseded_by="1.2.3.4.2",
    ),
    ChargePosted: ChargePosted(
        patient=PATIENT,
        charge_id="course:1.2.3.4.1|77427|unit-1|",
        revision=1,
        course_id="course:1.2.3.4.1",
        cpt="77427",
        units=1,
        service_date=date(2026, 11, 27),
        period_start=date(2026, 11, 23),
        period_end=date(2026, 11, 27),
        status="hold",
        hold_reason="missing_management_note",
        evidence=("ev-1", "ev-2"),
        rule="management-77427",
        citation="CMS Pub 100-04 Ch. 13 s. 70",
        rules_version="2026.1",
    ),
    ChargeVoided: ChargeVoided(
        patient=PATIENT,
        charge_id="course:1.2.3.4.1|77387|2026-11-24#1|26",
        revision=3,
        course_id="course:1.2.3.4.1",
        cpt="77387",
        modifiers=("26",),
        units=1,
        service_date=date(2026, 11, 24),
        reason="hold",
        hold_reason="review_withdrawn",
        exported_at=WHEN,
    ),
}


def sample_body(payload_type: type[EventPayload] = PlanReceived) -> dict[str, Any]:
    """The wire form of a sample event, as a dict to tamper with."""
    return json.loads(envelope(SAMPLES[payload_type], source=SOURCE, time=WHEN).to_json())


def test_every_payload_type_has_a_sample() -> None:
    # A new payload type must get a sample here, or the round trip below silently skips it.
    assert set(SAMPLES) == set(PAYLOADS)


@pytest.mark.parametrize("payload_type", PAYLOADS, ids=lambda p: p.type)
def test_every_payload_round_trips(payload_type: type[EventPayload]) -> None:
    original = envelope(SAMPLES[payload_type], source=SOURCE, subject="RT-0001", time=WHEN)
    wire = original.to_json()

    parsed = parse_event(wire)

    assert type(parsed.data) is payload_type
    assert parsed == original
    assert parsed.to_json() == wire
    body = json.loads(wire)
    assert body["specversion"] == "1.0"
    assert body["type"] == payload_type.type
    assert body["datacontenttype"] == "application/json"
    assert body["dataschema"] == f"urn:rtops:schema:{payload_type.type}:v1"
    assert body["data"]["version"] == 1
    assert parsed.nats_subject == payload_type.type


def test_parse_accepts_str_as_well_as_bytes() -> None:
    wire = envelope(SAMPLES[PlanReceived], source=SOURCE, time=WHEN).to_json()
    assert parse_event(wire.decode()) == parse_event(wire)


def test_event_id_depends_only_on_type_and_business_key() -> None:
    first = envelope(plan(label="A"), source=SOURCE, time=WHEN)
    # Re-sent object, other sender, other time: still the same event for JetStream's dedupe.
    resent = envelope(plan(label="B"), source="urn:other", time=datetime.now(UTC))
    assert first.id == resent.id
    assert first.id == event_id(PlanReceived.type, "1.2.3.4.1:1")


def test_event_id_changes_with_revision_and_key() -> None:
    base = envelope(plan(), source=SOURCE).id
    assert envelope(plan(revision=2), source=SOURCE).id != base
    assert envelope(plan("1.2.3.4.2"), source=SOURCE).id != base
    # The same key under another type is another event.
    assert event_id(TreatmentRecorded.type, "1.2.3.4.1:1") != base

    series = SAMPLES[ImagingAcquired]
    assert isinstance(series, ImagingAcquired)
    more = series.model_copy(update={"instance_count": series.instance_count + 1})
    assert envelope(more, source=SOURCE).id != envelope(series, source=SOURCE).id


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"\xff\xfe\x00", b"", b'{"type": '],
    ids=["text", "not-utf8", "empty", "truncated"],
)
def test_non_json_is_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not JSON"):
        parse_event(raw)


@pytest.mark.parametrize(
    "body",
    [
        [],
        "event",
        {"type": PlanReceived.type},
        {"type": PlanReceived.type, "data": None},
        {"type": PlanReceived.type, "data": [1, 2]},
        {"type": PlanReceived.type, "data": "{}"},
    ],
    ids=["array", "string", "no-data", "null-data", "list-data", "string-data"],
)
def test_missing_data_is_invalid(body: object) -> None:
    with pytest.raises(InvalidEvent, match="no CloudEvents 'data' object"):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("type_", [["rtops.dicom.plan.received"], {"a": 1}], ids=["list", "dict"])
def test_non_string_type_is_invalid(type_: object) -> None:
    body = sample_body()
    body["type"] = type_
    with pytest.raises(InvalidEvent):
        parse_event(json.dumps(body))


def test_unknown_type_is_invalid() -> None:
    body = sample_body()
    body["type"] = "rtops.dicom.plan.deleted"
    with pytest.raises(InvalidEvent, match=re.escape("'rtops.dicom.plan.deleted' v1")):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("version", [0, 2, 99])
def test_unknown_version_is_invalid(version: int) -> None:
    body = sample_body()
    body["data"]["version"] = version
    with pytest.raises(InvalidEvent, match=rf"unknown event type/version .* v{version}$"):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("version", [None, "1", 1.5], ids=["missing", "string", "float"])
def test_non_integer_version_is_invalid(version: object) -> None:
    body = sample_body()
    if version is None:
        del body["data"]["version"]
    else:
        body["data"]["version"] = version
    with pytest.raises(InvalidEvent, match=re.escape("no integer data.version")):
        parse_event(json.dumps(body))


def _drop_object(d: dict[str, Any]) -> None:
    del d["data"]["object"]


def _bad_count(d: dict[str, Any]) -> None:
    d["data"]["isocenter_count"] = "many"


def _bad_role(d: dict[str, Any]) -> None:
    d["data"]["source"]["role"] = "toaster"


def _bad_date(d: dict[str, Any]) -> None:
    d["data"]["plan_date"] = "27.02.2026"


def _no_id(d: dict[str, Any]) -> None:
    del d["id"]


def _old_spec(d: dict[str, Any]) -> None:
    d["specversion"] = "0.3"


@pytest.mark.parametrize(
    "tamper",
    [_drop_object, _bad_count, _bad_role, _bad_date, _no_id, _old_spec],
    ids=lambda f: f.__name__.strip("_"),
)
def test_invalid_payload_or_envelope_is_invalid(tamper: Any) -> None:
    body = sample_body()
    tamper(body)
    with pytest.raises(InvalidEvent, match=re.escape(f"invalid {PlanReceived.type} v1")):
        parse_event(json.dumps(body))


def test_unknown_fields_are_ignored() -> None:
    # A newer producer may add fields anywhere; an older reader must still accept the event.
    body = sample_body()
    body["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body["data"]["dose_summary_gy"] = 78.0
    body["data"]["patient"]["sex"] = "F"
    body["data"]["beams"][0]["mlc_model"] = "HD120"

    parsed = parse_event(json.dumps(body))

    assert parsed.id == body["id"]
    assert parsed.data == SAMPLES[PlanReceived]
    reserialized = json.loads(parsed.to_json())
    assert "traceparent" not in reserialized
    assert "dose_summary_gy" not in reserialized["data"]
    assert "sex" not in reserialized["data"]["patient"]


def test_registered_upcaster_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
        # Pretend v0 called the label "plan_label" and had no ``ion`` flag.
        calls.append(data)
        data = dict(data)
        data["label"] = data.pop("plan_label")
        data["ion"] = False
        data["version"] = 1
        return data

    monkeypatch.setitem(UPCASTERS, (PlanReceived.type, 0), v0_to_v1)
    body = sample_body()
    body["data"]["version"] = 0
    body["data"]["plan_label"] = body["data"].pop("label")
    del body["data"]["ion"]

    parsed = parse_event(json.dumps(body))

    assert len(calls) == 1
    assert isinstance(parsed.data, PlanReceived)
    assert parsed.data.version == 1
    assert parsed.data.label == "PROST"
    assert parsed.data == SAMPLES[PlanReceived]
    # A current-version event must not go through the upcaster.
    parse_event(envelope(SAMPLES[PlanReceived], source=SOURCE).to_json())
    assert len(calls) == 1


def test_upcasters_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    def step(to: int) -> Any:
        return lambda data: {**data, "version": to, "seen": [*data.get("seen", []), to]}

    monkeypatch.setitem(UPCASTERS, (PlanReceived.type, -1), step(0))
    monkeypatch.setitem(UPCASTERS, (PlanReceived.type, 0), step(1))
    body = sample_body()
    body["data"]["version"] = -1

    parsed = parse_event(json.dumps(body))

    assert parsed.data == SAMPLES[PlanReceived]


def test_committed_json_schemas_are_current(tmp_path: Path) -> None:
    # Everything `make schemas` writes (the schemas, and any pages generated with them) must
    # be committed as generated; a schema of a type that no longer exists must be gone.
    generated = {p.name: p.read_bytes() for p in write_schemas(tmp_path)}
    committed = {
        p.name: p.read_bytes()
        for p in COMMITTED_SCHEMAS.glob("*")
        if p.name in generated or p.name.endswith(".schema.json")
    }
    hint = (
        "docs/events/ is out of date with shared/events.py: run `make schemas` and "
        "commit docs/events/ (a removed or re-typed field also needs a new version and "
        "an upcaster)"
    )

    missing = sorted(set(generated) - set(committed))
    stale = sorted(set(committed) - set(generated))
    assert not missing and not stale, f"{hint}; missing {missing}, stale {stale}"
    changed = sorted(name for name in generated if generated[name] != committed[name])
    assert not changed, f"{hint}; changed: {changed}"
    schemas = [name for name in generated if name.endswith(".schema.json")]
    assert len(schemas) == len(PAYLOADS)


def test_envelope_is_a_cloud_event_with_the_payload() -> None:
    event = envelope(SAMPLES[TreatmentRecorded], source=SOURCE)
    assert isinstance(event, CloudEvent)
    assert event.data is SAMPLES[TreatmentRecorded]
    assert event.time.tzinfo is not None
    assert "subject" not in json.loads(event.to_json())
