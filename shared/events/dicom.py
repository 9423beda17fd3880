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
    dose_reference_numbers: tuple[int, ...] = Field(
        default=(), description="Referenced Dose Reference Numbers (300C,0051) of the group"
    )
    prescription_dose_gy: float | None = Field(
        default=None,
        description="the group's target prescription dose (Gy, all its fractions): the first "
        "referenced dose reference stating Target Prescription Dose (300A,0026), on the group's "
        "item or on the plan's TARGET dose reference; with no reference, the plan's only TARGET "
        "dose reference when the plan has one fraction group and one stated target dose",
    )
    dose_per_fraction_gy: float | None = Field(
        default=None,
        description="prescription_dose_gy / fractions_planned, when both are known",
    )


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
    gantry_rotation: Literal["arc", "static"] | None = Field(
        default=None,
        description="arc when a control point's Gantry Rotation Direction (300A,011F) is CW or "
        "CC, static when control points state only NONE, null when none states it",
    )
    mlc_modulated: bool = Field(
        default=False,
        description="the Leaf/Jaw Positions (300A,011C) of an MLCX/MLCY device change between "
        "control points",
    )
    wedge_count: int | None = Field(default=None, description="Number of Wedges (300A,00D0)")
    block_count: int | None = Field(default=None, description="Number of Blocks (300A,00F0)")
    compensator_count: int | None = Field(
        default=None, description="Number of Compensators (300A,00E0)"
    )
    bolus_count: int | None = Field(
        default=None,
        description="Number of Boli (300A,00ED), else the Referenced Bolus Sequence's items",
    )
    applicator_count: int | None = Field(
        default=None, description="items of the Applicator Sequence (300A,0107)"
    )
    beam_dose_gy: float | None = Field(
        default=None,
        description="Beam Dose (300A,0084) per fraction from the fraction group's Referenced "
        "Beam Sequence, Gy",
    )
    source_axis_distance_mm: float | None = Field(
        default=None, description="Source-Axis Distance (300A,00B4), photon/electron beams"
    )
    scan_mode: str | None = Field(
        default=None, description="ion beams: Scan Mode (300A,0308), e.g. MODULATED / NONE"
    )
    range_shifter_count: int | None = Field(
        default=None, description="ion beams: Number of Range Shifters (300A,0312)"
    )
    range_modulator: bool | None = Field(
        default=None,
        description="ion beams: Number of Range Modulators (300A,0340) > 0 or a Range Modulator "
        "Sequence item; null for photon/electron beams",
    )


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
    referring_physician: str | None = Field(
        default=None, description="Referring Physician's Name (0008,0090), DICOM PN"
    )
    structure_set_uid: str | None = Field(
        default=None, description="first item of the Referenced Structure Set Sequence (300C,0060)"
    )
    dose_uids: tuple[str, ...] = Field(
        default=(), description="items of the Referenced Dose Sequence (300C,0080)"
    )

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


class BrachyChannel(Frozen):
    number: int | None = Field(default=None, description="Channel Number (300A,0282)")
    source_number: int | None = Field(
        default=None, description="Referenced Source Number (300C,000E)"
    )
    source_isotope: str | None = Field(
        default=None, description="Source Isotope Name (300A,0226) of the referenced source"
    )
    specified_total_time_s: float | None = Field(
        default=None, description="Specified Channel Total Time (3008,0132)"
    )
    delivered_total_time_s: float | None = Field(
        default=None, description="Delivered Channel Total Time (3008,0134)"
    )
    specified_pulses: int | None = Field(
        default=None, description="Specified Number of Pulses (3008,0136), pulsed dose rate"
    )
    delivered_pulses: int | None = Field(
        default=None, description="Delivered Number of Pulses (3008,0138), pulsed dose rate"
    )


class BrachyApplicationSetup(Frozen):
    number: int | None = Field(
        default=None, description="Referenced Brachy Application Setup Number (300C,000C)"
    )
    setup_type: str | None = Field(
        default=None, description="Application Setup Type (300A,0232), e.g. INTRACAVITARY"
    )
    current_fraction_number: int | None = None
    termination_status: str | None = None
    channels: tuple[BrachyChannel, ...] = ()


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
    delivered: bool = Field(
        description="beams: a TREATMENT/CONTINUATION beam delivered meterset > 0; brachy: a "
        "recorded channel's delivered total time or number of pulses > 0"
    )
    partial: bool = Field(description="a beam terminated abnormally or delivered < specified")
    operators: tuple[str, ...] = ()
    overrides: bool = Field(default=False, description="an override or VERIFIED_OVR is present")
    beams: tuple[BeamDelivery, ...] = ()
    application_setups: tuple[BrachyApplicationSetup, ...] = Field(
        default=(), description="brachy: Treatment Session Application Setup Sequence items"
    )
    source_isotopes: tuple[str, ...] = Field(
        default=(), description="brachy: Source Isotope Names of the Recorded Source Sequence"
    )

    def business_key(self) -> str:
        return f"{self.object.sop_instance_uid}:{self.object.revision}"


class FractionStatus(Frozen):
    number: int | None = Field(default=None, description="Referenced Fraction Number (3008,0223)")
    treated_at: datetime | None = Field(default=None, description="Treatment Date/Time, UTC")
    termination_status: str | None = Field(
        default=None, description="Treatment Termination Status: NORMAL/OPERATOR/MACHINE/UNKNOWN"
    )


class FractionGroupSummary(Frozen):
    number: int | None = None
    type: str | None = Field(default=None, description="EXTERNAL_BEAM / BRACHY")
    fractions_planned: int | None = None
    fractions_delivered: int | None = None
    fractions: tuple[FractionStatus, ...] = Field(
        default=(), description="Fraction Status Summary Sequence (3008,0240) items, if sent"
    )


class TreatmentSummarized(DicomEvent):
    """An RT Treatment Summary Record was stored: the OIS's own view of a course. COMPLETED or
    STOPPED closes it (billing's end-of-course 77427 remainder)."""

    type: ClassVar[str] = "rtops.dicom.treatment.summarized"
    version: Literal[1] = 1
    object: StoredObject
    plan_uid: str | None = Field(
        default=None, description="the first plan of the Referenced RT Plan Sequence"
    )
    plan_uids: tuple[str, ...] = Field(
        default=(), description="every plan of the Referenced RT Plan Sequence, in order"
    )
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
    study_description: str | None = Field(default=None, description="Study Description (0008,1030)")
    protocol_name: str | None = Field(default=None, description="Protocol Name (0018,1030)")
    accession_number: str | None = Field(default=None, description="Accession Number (0008,0050)")
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


# ---------------------------------------------------------------- document.received


class DocumentReceived(DicomEvent):
    """An Encapsulated PDF was stored (a TPS plan report, a physics check): one event per stored
    revision. The document's bytes are served by the SCP's
    ``GET /v1/objects/{sop_instance_uid}/content?format=pdf``."""

    type: ClassVar[str] = "rtops.dicom.document.received"
    version: Literal[1] = 1
    object: StoredObject
    title: str | None = Field(default=None, description="Document Title (0042,0010)")
    mime_type: str | None = Field(
        default=None, description="MIME Type of Encapsulated Document (0042,0012)"
    )
    content_at: datetime | None = Field(default=None, description="Content Date/Time, UTC")
    referenced_plan_uid: str | None = Field(
        default=None,
        description="the plan the document is about: Referenced RT Plan Sequence, else an RT "
        "(Ion) Plan item of the Referenced Instance or Source Instance Sequence",
    )
    referenced_study_uid: str | None = Field(
        default=None,
        description="Referenced Study Sequence (0008,1110), else the document's own study",
    )

    def business_key(self) -> str:
        return f"{self.object.sop_instance_uid}:{self.object.revision}"


PAYLOADS: tuple[type[EventPayload], ...] = (
    PlanReceived,
    TreatmentRecorded,
    TreatmentSummarized,
    ImagingAcquired,
    RegistrationReceived,
    DocumentReceived,
)
