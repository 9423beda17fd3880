"""What the charge engine knows about a course: frozen dataclasses built from event payloads.

Each class names the event it comes from; ``event_id`` is the CloudEvent id, carried into a
charge's evidence. Several revisions of one fact may be present (a changed object, a corrected
booking, a re-assessed fraction): the rules take the latest and ignore exact duplicates, so
replaying or duplicating events never changes the charges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

CourseKind = Literal["conventional", "srs", "sbrt"]


@dataclass(frozen=True)
class BeamTechnique:
    """One planned beam (``PlanReceived.beams``): what decides delivery and planning levels."""

    radiation_type: str | None = None  # PHOTON / ELECTRON / PROTON / ...
    beam_type: str | None = None  # STATIC / DYNAMIC
    delivery_type: str | None = None  # TREATMENT / SETUP / ...
    energies: tuple[float, ...] = ()  # nominal, MV / MeV
    arc: bool = False  # gantry rotation CW/CC at a control point
    mlc_modulated: bool = False
    wedge_count: int = 0
    block_count: int = 0
    compensator_count: int = 0

    @property
    def therapeutic(self) -> bool:
        return (self.delivery_type or "TREATMENT").upper() == "TREATMENT"


@dataclass(frozen=True)
class PlanTechnique:
    """Billing's view of one plan (``rtops.dicom.plan.received``)."""

    uid: str
    event_id: str
    revision: int = 1
    ion: bool = False
    beams: tuple[BeamTechnique, ...] = ()
    isocenter_count: int = 0
    motion_management: bool = False  # a Patient Setup carries a Motion Synchronization Sequence
    volumetric: bool = False  # planned on a structure set (RT Plan Geometry PATIENT)
    total_skin_electron: bool = False  # Setup Technique TSET, where the caller knows it
    treatment_site: str | None = None
    approved_on: date | None = None  # Review Date of an APPROVED plan
    plan_date: date | None = None
    fractions_planned: tuple[tuple[int, int], ...] = ()  # (fraction group, fractions planned)
    predecessor_uids: tuple[str, ...] = ()  # PREDECESSOR references: this plan is a re-plan
    concurrent_uids: tuple[str, ...] = ()  # CONCURRENT references: one conceptual plan


@dataclass(frozen=True)
class BrachyChannelFacts:
    number: int | None = None
    delivered: bool = True


@dataclass(frozen=True)
class TreatmentRecordFacts:
    """One treatment record (``rtops.dicom.treatment.recorded``)."""

    record_uid: str
    event_id: str
    patient_id: str
    treated_at: datetime | None  # UTC
    delivered: bool
    partial: bool = False
    revision: int = 1
    record_kind: Literal["beams", "ion_beams", "brachy"] = "beams"
    content_origin: str | None = None  # DEVICE / USER / SIMULATION
    plan_uid: str | None = None
    fraction_group: int | None = None
    fraction_numbers: tuple[int, ...] = ()
    referenced_record_uids: tuple[str, ...] = ()  # continuation of an interrupted record
    brachy_setup_types: tuple[str, ...] = ()  # Application Setup Type of each setup
    brachy_channels: tuple[BrachyChannelFacts, ...] = ()


ReviewState = Literal["pending", "reviewed_on_time", "reviewed_late", "not_imaged"]


@dataclass(frozen=True)
class FractionReviewFacts:
    """One revision of a fraction's assessed state (``rtops.qa.fraction.assessed``)."""

    event_id: str
    plan_uid: str | None
    fraction_group: int
    fraction_number: int | None
    revision: int
    removed: bool = False
    review_status: ReviewState | None = None
    on_time: bool = False
    decision: Literal["approved", "rejected"] | None = None
    imaging: tuple[str, ...] = ()  # e.g. ("cbct",)


@dataclass(frozen=True)
class SimulationFacts:
    """One revision of a simulation booking (``rtops.scheduler.sim.completed``)."""

    event_id: str
    booking_id: str
    revision: int
    service_date: date
    complexity: Literal["simple", "intermediate", "complex"]
    four_d_ct: bool = False
    cancelled: bool = False


@dataclass(frozen=True)
class SummaryFacts:
    """An RT Treatment Summary Record (``rtops.dicom.treatment.summarized``) of a course plan."""

    event_id: str
    current_status: str | None
    recorded_on: date  # Most Recent Treatment Date, else the day the record was stored


@dataclass(frozen=True)
class StaffClosure:
    """Staff closed the course (``POST /v1/courses/{id}/close``)."""

    closed_on: date
    reference: str  # audit id of the request, carried as evidence


DocumentKind = Literal["management_note", "physics_check", "replan_justification"]


@dataclass(frozen=True)
class DocumentFacts:
    """A document the documents service recorded; a management note is a physician's
    face-to-face treatment-management note (ASTRO Treatment Management FAQ)."""

    id: str
    kind: DocumentKind
    on: date
    plan_uid: str | None = None
    face_to_face: bool = True


@dataclass(frozen=True)
class CourseFacts:
    """Everything the engine evaluates for one course (grouped by ``shared.courses``)."""

    course_id: str
    patient_id: str
    plans: tuple[PlanTechnique, ...] = ()
    records: tuple[TreatmentRecordFacts, ...] = ()
    reviews: tuple[FractionReviewFacts, ...] = ()
    simulations: tuple[SimulationFacts, ...] = ()
    summaries: tuple[SummaryFacts, ...] = ()
    closures: tuple[StaffClosure, ...] = ()
    documents: tuple[DocumentFacts, ...] = ()
    # Stereotactic courses are named by staff or by the caller's protocol mapping: DICOM has no
    # attribute for it and the engine does not guess from dose or labels.
    kind: CourseKind = "conventional"
    srs_platform: Literal["linac", "cobalt"] = "linac"
