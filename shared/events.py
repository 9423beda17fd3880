"""The event contract: one CloudEvents 1.0 envelope and versioned, frozen payload models.

Producers may add fields to a payload at any time (readers ignore unknown fields); a change
that removes or re-types a field adds a new ``version`` and an upcaster in ``UPCASTERS``.
The JSON Schemas of every payload are exported to ``docs/events/`` (``rtops schemas``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SUBJECT_PREFIX = "rtops"
# Fixed namespace so that the same business key always yields the same event id, which
# JetStream's duplicate window and the consumers' inbox both key on.
EVENT_NAMESPACE = uuid.UUID("5b0b7a3e-2f7c-4d38-9d4c-7a61f1c0e0a1")


class InvalidEvent(ValueError):
    """An event that cannot be parsed: wrong envelope, unknown type or version, bad payload."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# ---------------------------------------------------------------- building blocks


class Patient(_Frozen):
    id: str = Field(description="Patient ID (0010,0020); empty when the object had none")
    issuer: str | None = Field(default=None, description="Issuer of Patient ID (0010,0021)")
    name: str | None = Field(default=None, description="Patient's Name (0010,0010), DICOM PN")
    birth_date: date | None = None


class SourceDevice(_Frozen):
    ae_title: str = Field(description="calling AE title of the association")
    role: Literal["linac", "ct_simulator", "tps", "ois", "other"]
    machine: str | None = Field(default=None, description="machine name from the registry")
    site: str | None = None


class StoredObject(_Frozen):
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    storage_key: str = Field(description="key of the file in the SCP's object store")
    revision: int = Field(default=1, description="1, or higher when the same UID came back changed")
    sha256: str
    transfer_syntax_uid: str


class EventPayload(_Frozen):
    """Every payload: a type, a version and the business key its event id derives from."""

    type: ClassVar[str]
    version: int
    patient: Patient

    def business_key(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class DicomEvent(EventPayload):
    """Fields every payload derived from a stored DICOM object carries."""

    source: SourceDevice


# ---------------------------------------------------------------- plan.received


class PlanReference(_Frozen):
    sop_instance_uid: str
    relationship: str | None = Field(
        default=None,
        description="RT Plan Relationship (300A,0055): PRIOR, ALTERNATIVE, "
        "PREDECESSOR, VERIFIED_PLAN, CONCURRENT",
    )


class FractionGroup(_Frozen):
    number: int
    fractions_planned: int | None = None
    beam_count: int | None = None
    description: str | None = None
    pattern_digits_per_day: int | None = None
    repeat_cycle_length: int | None = None
    pattern: str | None = None


class DoseReference(_Frozen):
    number: int | None = None
    uid: str | None = None
    type: str | None = Field(default=None, description="TARGET / ORGAN_AT_RISK")
    structure_type: str | None = None
    description: str | None = None
    target_prescription_dose_gy: float | None = None


class PlannedBeam(_Frozen):
    number: int | None = None
    name: str | None = None
    machine: str | None = None
    beam_type: str | None = Field(default=None, description="STATIC / DYNAMIC")
    radiation_type: str | None = None
    delivery_type: str | None = None
    energies: tuple[float, ...] = ()
    control_points: int | None = None
    meterset: float | None = None


class PlanReceived(DicomEvent):
    """An RT Plan or RT Ion Plan was stored (one event per stored revision). Consumers: documents
    (plan versions: follow PREDECESSOR references; VERIFICATION / MACHINE_QA / SERVICE intents
    never join a course) and billing (technique facts)."""

    type: ClassVar[str] = "rtops.dicom.plan.received"
    version: Literal[1] = 1
    object: StoredObject
    ion: bool = Field(description="RT Ion Plan (protons/ions) rather than RT Plan")
    label: str | None = None
    name: str | None = None
    description: str | None = None
    plan_date: date | None = Field(default=None, description="RT Plan Date: last modified")
    plan_time: str | None = None
    intent: str | None = Field(default=None, description="Plan Intent (300A,000A)")
    treatment_site: str | None = Field(
        default=None, description="Treatment Site (3010,0077), else retired (300A,000B)"
    )
    geometry: str | None = None
    approval_status: str | None = None
    reviewer_name: str | None = None
    reviewed_at: datetime | None = None
    frame_of_reference_uid: str | None = None
    prescription_description: str | None = None
    referenced_plans: tuple[PlanReference, ...] = ()
    fraction_groups: tuple[FractionGroup, ...] = ()
    dose_references: tuple[DoseReference, ...] = ()
    beams: tuple[PlannedBeam, ...] = ()
    machines: tuple[str, ...] = ()
    radiation_types: tuple[str, ...] = ()
    isocenter_count: int = 0
    motion_management: bool = Field(
        default=False, description="a Patient Setup carries a Motion Synchronization Sequence"
    )
    fixation_devices: tuple[str, ...] = ()

    def business_key(self) -> str:
        return f"{self.object.sop_instance_uid}:{self.object.revision}"


# ---------------------------------------------------------------- treatment.recorded


class Override(_Frozen):
    parameter: str | None = Field(default=None, description="Override Parameter Pointer tag")
    operator: str | None = None
    reason: str | None = None


class CouchPosition(_Frozen):
    vertical_mm: float | None = None
    longitudinal_mm: float | None = None
    lateral_mm: float | None = None


class BeamDelivery(_Frozen):
    beam_number: int | None = None
    beam_name: str | None = None
    delivery_type: str | None = Field(
        default=None, description="TREATMENT, CONTINUATION, SETUP, OPEN_PORTFILM, TRMT_PORTFILM"
    )
    radiation_type: str | None = None
    current_fraction_number: int | None = None
    termination_status: str | None = Field(
        default=None, description="NORMAL/OPERATOR/MACHINE/UNKNOWN"
    )
    verification_status: str | None = None
    specified_meterset: float | None = None
    delivered_meterset: float | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    couch: CouchPosition | None = Field(default=None, description="recorded at first control point")
    overrides: tuple[Override, ...] = ()


class TreatmentRecorded(DicomEvent):
    """An RT Beams / RT Ion Beams / RT Brachy Treatment Record was stored: one event per record.
    One fraction may span several records (interruption, continuation): count fractions by
    (plan, fraction group, Current Fraction Number), not by event. A SIMULATION content origin
    is not a delivered fraction."""

    type: ClassVar[str] = "rtops.dicom.treatment.recorded"
    version: Literal[1] = 1
    object: StoredObject
    record_kind: Literal["beams", "ion_beams", "brachy"]
    treated_at: datetime | None = Field(
        description="when delivery began, in UTC: Treatment Date/Time, else the first control "
        "point's date/time, else Instance Creation Date/Time"
    )
    treated_at_source: Literal["treatment_date", "control_point", "instance_creation", "none"]
    content_origin: str | None = Field(default=None, description="DEVICE / USER / SIMULATION")
    plan_uid: str | None = None
    referenced_record_uids: tuple[str, ...] = ()
    machine: str | None = Field(default=None, description="Treatment Machine Name (300A,00B2)")
    machine_serial: str | None = None
    manufacturer: str | None = None
    fraction_group_number: int | None = None
    fractions_planned: int | None = None
    fraction_numbers: tuple[int, ...] = Field(
        default=(), description="distinct Current Fraction Numbers over the beam items"
    )
    delivered: bool = Field(description="a TREATMENT/CONTINUATION beam delivered meterset > 0")
    partial: bool = Field(description="a beam terminated abnormally or delivered < specified")
    operators: tuple[str, ...] = ()
    overrides: bool = Field(default=False, description="an override or VERIFIED_OVR is present")
    beams: tuple[BeamDelivery, ...] = ()

    def business_key(self) -> str:
        return f"{self.object.sop_instance_uid}:{self.object.revision}"


class FractionGroupSummary(_Frozen):
    number: int | None = None
    type: str | None = None
    fractions_planned: int | None = None
    fractions_delivered: int | None = None


class TreatmentSummarized(DicomEvent):
    """An RT Treatment Summary Record was stored: the OIS's own view of a course. COMPLETED or
    STOPPED closes it (billing's end-of-course 77427 remainder)."""

    type: ClassVar[str] = "rtops.dicom.treatment.summarized"
    version: Literal[1] = 1
    object: StoredObject
    plan_uid: str | None = None
    current_status: str | None = Field(
        default=None,
        description="NOT_STARTED, ON_TREATMENT, ON_BREAK, SUSPENDED, STOPPED, COMPLETED",
    )
    first_treatment_date: date | None = None
    most_recent_treatment_date: date | None = None
    fraction_groups: tuple[FractionGroupSummary, ...] = ()

    def business_key(self) -> str:
        return f"{self.object.sop_instance_uid}:{self.object.revision}"


# ---------------------------------------------------------------- imaging.acquired


class ImageApproval(_Frozen):
    sop_instance_uid: str
    status: str
    reviewer_name: str | None = None
    reviewed_at: datetime | None = None


class ImagingAcquired(DicomEvent):
    """One image series (CBCT, simulation CT, kV/MV 2D, portal, DRR), published once no instance
    of it arrived for the quiet time; a later instance re-publishes it with the new count (same
    series UID: consumers upsert). DICOM gives associations no meaning, so neither does this.
    RT Images carrying Approval Status are listed in ``approvals``."""

    type: ClassVar[str] = "rtops.dicom.imaging.acquired"
    version: Literal[1] = 1
    series_instance_uid: str
    study_instance_uid: str | None = None
    sop_class_uid: str
    modality: str | None = None
    classification: Literal["cbct", "sim_ct", "kv_2d", "mv_portal", "drr", "other"]
    instance_count: int
    acquired_at: datetime | None = Field(default=None, description="earliest acquisition, UTC")
    last_acquired_at: datetime | None = None
    frame_of_reference_uid: str | None = None
    machine: str | None = Field(
        default=None,
        description="registry machine of the sender, else Station Name / Radiation Machine Name",
    )
    station_name: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    series_description: str | None = None
    referenced_plan_uid: str | None = None
    fraction_number: int | None = None
    beam_number: int | None = None
    approvals: tuple[ImageApproval, ...] = ()
    storage_keys: tuple[str, ...] = ()

    def business_key(self) -> str:
        return f"{self.series_instance_uid}:{self.instance_count}:{len(self.approvals)}"


# ---------------------------------------------------------------- registration.received


class Vector3(_Frozen):
    x: float
    y: float
    z: float


class RegistrationItem(_Frozen):
    frame_of_reference_uid: str | None = None
    referenced_series_uids: tuple[str, ...] = ()
    referenced_instance_count: int = 0
    matrix_type: str | None = None
    matrix: tuple[float, ...] | None = Field(default=None, description="4x4 row-major")


class RegistrationReceived(DicomEvent):
    """A Spatial Registration, Deformable Spatial Registration or Elekta XVI "RPS" export was
    stored: an image match was performed and accepted at the console. It is not a physician
    review (DICOM cannot carry one for CBCT)."""

    type: ClassVar[str] = "rtops.dicom.registration.received"
    version: Literal[1] = 1
    object: StoredObject
    kind: Literal["rigid", "deformable", "elekta_rps"]
    content_at: datetime | None = Field(default=None, description="Content Date/Time, UTC")
    creator_name: str | None = Field(default=None, description="who created/accepted the match")
    label: str | None = None
    description: str | None = None
    frame_of_reference_uid: str | None = None
    items: tuple[RegistrationItem, ...] = ()
    moving_series_uids: tuple[str, ...] = Field(
        default=(), description="image series registered onto the reference (the CBCT)"
    )
    translation_mm: Vector3 | None = Field(
        default=None,
        description="translation of the non-identity rigid matrix, patient "
        "coordinates; not yet couch axes",
    )
    rotation_deg: Vector3 | None = None
    couch_shift_mm: Vector3 | None = Field(
        default=None, description="vendor couch shift (x=lateral, y=longitudinal, z=vertical)"
    )

    def business_key(self) -> str:
        return f"{self.object.sop_instance_uid}:{self.object.revision}"


# ---------------------------------------------------------------- qa_tracker


class ReviewDocumented(EventPayload):
    """A physician documented the review of a fraction's image guidance (through the API, or an
    RT Image approval). Billing uses it for image-guidance charges: ASTRO's condition is a
    review before the next fraction (``on_time``)."""

    type: ClassVar[str] = "rtops.qa.review.documented"
    version: Literal[1] = 1
    review_id: int
    fraction_key: str = Field(description="patient|plan|fraction group|fraction number")
    plan_uid: str | None = None
    fraction_number: int | None = None
    treated_at: datetime
    machine: str | None = None
    decision: Literal["approved", "rejected"]
    physician: str
    reviewed_at: datetime
    due_at: datetime | None = None
    on_time: bool
    override_required: bool = False
    override_reason: str | None = None
    origin: Literal["api", "dicom_approval"] = "api"

    def business_key(self) -> str:
        return f"review:{self.review_id}"


class ReviewOverdue(EventPayload):
    """A fraction's review passed its due time undocumented (published once per fraction)."""

    type: ClassVar[str] = "rtops.qa.review.overdue"
    version: Literal[1] = 1
    fraction_key: str
    plan_uid: str | None = None
    fraction_number: int | None = None
    treated_at: datetime
    machine: str | None = None
    physician: str | None = None
    due_at: datetime

    def business_key(self) -> str:
        return f"overdue:{self.fraction_key}"


class DigestItem(_Frozen):
    kind: Literal["overdue_review", "override_not_documented", "rejected_without_follow_up"]
    fraction_id: int
    patient_id: str
    patient_name: str | None = None
    fraction_number: int | None = None
    machine: str | None = None
    treated_at: datetime
    due_at: datetime | None = None
    link: str = Field(description="path of the fraction in the QA tracker API")


class ReviewDigest(EventPayload):
    """The day's open review problems of one physician (published once per physician and
    business day by the QA tracker), for a notifier to deliver as one message. ``patient`` is
    empty: the items name their patients."""

    type: ClassVar[str] = "rtops.qa.review.digest"
    version: Literal[1] = 1
    physician: str
    day: date
    flags: tuple[DigestItem, ...]

    def business_key(self) -> str:
        return f"digest:{self.physician}:{self.day.isoformat()}"


PAYLOADS: tuple[type[EventPayload], ...] = (
    PlanReceived,
    TreatmentRecorded,
    TreatmentSummarized,
    ImagingAcquired,
    RegistrationReceived,
    ReviewDocumented,
    ReviewOverdue,
    ReviewDigest,
)
_BY_TYPE: dict[tuple[str, int], type[EventPayload]] = {
    (p.type, p.model_fields["version"].default): p for p in PAYLOADS
}
# (type, old version) -> function turning old data into the next version's data.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


# ---------------------------------------------------------------- envelope


class CloudEvent(_Frozen):
    """CloudEvents 1.0 structured-mode envelope (JSON)."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    time: datetime
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    data: EventPayload

    @property
    def nats_subject(self) -> str:
        return self.type

    def to_json(self) -> bytes:
        body = self.model_dump(mode="json", exclude_none=True)
        body["data"] = self.data.model_dump(mode="json")
        body["data"]["version"] = self.data.version
        return json.dumps(body, separators=(",", ":")).encode()


def event_id(type_: str, business_key: str) -> str:
    """Deterministic id: a re-sent object or a replayed outbox row gets the same one."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{type_}|{business_key}"))


def envelope(
    payload: EventPayload, *, source: str, subject: str | None = None, time: datetime | None = None
) -> CloudEvent:
    return CloudEvent(
        id=event_id(payload.type, payload.business_key()),
        source=source,
        type=payload.type,
        time=time or datetime.now(UTC),
        subject=subject,
        dataschema=f"urn:rtops:schema:{payload.type}:v{payload.version}",
        data=payload,
    )


def parse_event(raw: bytes | str) -> CloudEvent:
    """Parse an envelope and its payload; raise ``InvalidEvent`` with the reason otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"event is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise InvalidEvent("event has no CloudEvents 'data' object")
    type_ = body.get("type")
    if not isinstance(type_, str):
        raise InvalidEvent(f"event has no string 'type' (got {type_!r})")
    data = dict(body["data"])
    version = data.get("version")
    if not isinstance(version, int):
        raise InvalidEvent(f"event {type_!r} has no integer data.version")
    while (type_, version) in UPCASTERS:
        data = UPCASTERS[(type_, version)](data)
        version = data["version"]
    model = _BY_TYPE.get((type_, version))  # type: ignore[arg-type]
    if model is None:
        raise InvalidEvent(f"unknown event type/version {type_!r} v{version}")
    try:
        payload = model.model_validate(data)
        return CloudEvent.model_validate({**body, "data": payload})
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {type_} v{version}: {exc}") from exc


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload, keyed by event type."""
    return {p.type: p.model_json_schema(mode="serialization") for p in PAYLOADS}
