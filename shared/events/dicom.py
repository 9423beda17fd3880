"""Payloads of the events the SCP publishes from stored DICOM objects (``rtops.dicom.*``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import Field

from shared.events.base import DicomEvent, EventPayload, Frozen


class StoredObject(Frozen):
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    storage_key: str = Field(description="key of the file in the SCP's object store")
    revision: int = Field(default=1, description="1, or higher when the same UID came back changed")
    sha256: str
    transfer_syntax_uid: str


# ---------------------------------------------------------------- plan.received


class PlanReference(Frozen):
    sop_instance_uid: str
    relationship: str | None = Field(
        default=None,
        description="RT Plan Relationship (300A,0055): PRIOR, ALTERNATIVE, "
        "PREDECESSOR, VERIFIED_PLAN, CONCURRENT",
    )


class FractionGroup(Frozen):
    number: int
    fractions_planned: int | None = None
    beam_count: int | None = None
    description: str | None = None
    pattern_digits_per_day: int | None = None
    repeat_cycle_length: int | None = None
    pattern: str | None = None


class DoseReference(Frozen):
    number: int | None = None
    uid: str | None = None
    type: str | None = Field(default=None, description="TARGET / ORGAN_AT_RISK")
    structure_type: str | None = None
    description: str | None = None
    target_prescription_dose_gy: float | None = None


class PlannedBeam(Frozen):
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


class Override(Frozen):
    parameter: str | None = Field(default=None, description="Override Parameter Pointer tag")
    operator: str | None = None
    reason: str | None = None


class CouchPosition(Frozen):
    vertical_mm: float | None = None
    longitudinal_mm: float | None = None
    lateral_mm: float | None = None


class BeamDelivery(Frozen):
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


class FractionGroupSummary(Frozen):
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


class ImageApproval(Frozen):
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


class Vector3(Frozen):
    x: float
    y: float
    z: float


class RegistrationItem(Frozen):
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


PAYLOADS: tuple[type[EventPayload], ...] = (
    PlanReceived,
    TreatmentRecorded,
    TreatmentSummarized,
    ImagingAcquired,
    RegistrationReceived,
)
