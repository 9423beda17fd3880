"""Payloads of the documents service's events (``rtops.documents.*``). ``CourseRegrouped`` and
``NoteSigned`` were defined before the service existed so that billing could be built against
them; the service (``services/documents``) owns all of them."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import Field

from shared.events.base import EventPayload


class CourseRegrouped(EventPayload):
    """Staff corrected which plans form a course: exactly ``plan_uids`` are one course (the
    documents service records and audits the correction). It overrides the grouping rule of
    ``shared.courses`` for the plans it names; where two corrections name the same plan, the
    one with the higher ``sequence`` wins, whatever order they arrive in."""

    type: ClassVar[str] = "rtops.documents.course.regrouped"
    version: Literal[1] = 1
    regrouping_id: str = Field(description="the correction's id in the documents service")
    sequence: int = Field(
        ge=1, description="only increases across the documents service's corrections"
    )
    plan_uids: tuple[str, ...] = Field(min_length=1, description="the plans of the course")
    course_id: str | None = Field(
        default=None,
        description="the course's id after the correction, as the documents "
        "service computes it (shared.courses)",
    )
    corrected_by: str = Field(description="the staff member who made the correction")
    corrected_at: datetime
    reason: str | None = None

    def business_key(self) -> str:
        return f"regrouped:{self.regrouping_id}:{self.sequence}"


class NoteSigned(EventPayload):
    """A physician signed a course document: the weekly treatment-management note (billing holds
    a 77427 without one for its block), a physics check, or a re-plan justification. State, not
    an announcement: a corrected note is the same ``note_id`` with a higher ``revision``, and
    ``voided`` retracts a note signed in error."""

    type: ClassVar[str] = "rtops.documents.note.signed"
    version: Literal[1] = 1
    note_id: str
    revision: int = Field(default=1, ge=1, description="only increases per note")
    course_id: str = Field(description="the course (shared.courses id) the note documents")
    week: str = Field(
        pattern=r"^\d{4}-W\d{2}$", description="ISO week of treatment it documents, 2026-W10"
    )
    kind: str = Field(
        description="management_note, physics_check or replan_justification; readers ignore "
        "kinds they do not know"
    )
    author: str = Field(description="who signed, DICOM PN or user name")
    signed_at: datetime
    visit_date: date | None = Field(
        default=None,
        description="management note: the day of the face-to-face visit it records, when "
        "known; else the signing day counts (within its week)",
    )
    face_to_face: bool = Field(
        default=True, description="management note: the physician saw the patient"
    )
    plan_uid: str | None = Field(
        default=None, description="replan justification: the new plan it justifies"
    )
    voided: bool = Field(default=False, description="the note was signed in error")

    def business_key(self) -> str:
        return f"note:{self.note_id}:{self.revision}"


class PlanVersioned(EventPayload):
    """State: where a plan stands in its course's version history. Published when a plan first
    becomes a version and again (a higher ``revision``) whenever its place or facts change: a
    re-sent plan with new content, a regrouping, a later version that supersedes it, a new
    approval status; ``removed`` when it stops being one. The latest revision per ``plan_uid``
    wins."""

    type: ClassVar[str] = "rtops.documents.plan.versioned"
    version: Literal[1] = 1
    plan_uid: str
    revision: int = Field(ge=1, description="only increases per plan")
    course_id: str = Field(description="the course (shared.courses id)")
    plan_version: int = Field(ge=1, description="1 for the course's first plan, then 2, 3 ...")
    predecessor_uid: str | None = Field(
        default=None, description="the plan this version was derived from"
    )
    predecessor_inferred: bool = Field(
        default=False,
        description="no PREDECESSOR reference: the previous version of the course by date",
    )
    concurrent_uids: tuple[str, ...] = Field(
        default=(), description="CONCURRENT plans forming one conceptual plan with this one"
    )
    label: str | None = None
    approval_status: str | None = Field(default=None, description="APPROVED/UNAPPROVED/REJECTED")
    superseded_by: str | None = Field(default=None, description="the next version's plan")
    changes: tuple[str, ...] = Field(
        default=(), description="what changed against the predecessor, one line per fact"
    )
    removed: bool = Field(
        default=False,
        description="the plan is no longer a version (re-sent as a QA plan): retracts it",
    )

    def business_key(self) -> str:
        return f"versioned:{self.plan_uid}:{self.revision}"


class TreatmentFlagged(EventPayload):
    """A fraction was delivered on a plan version whose required documents were incomplete, that
    was not approved, or that a later version had already superseded (at the time of delivery).
    Published once per treatment record revision."""

    type: ClassVar[str] = "rtops.documents.treatment.flagged"
    version: Literal[1] = 1
    record_uid: str = Field(description="SOP Instance UID of the RT treatment record")
    record_revision: int = Field(default=1, ge=1)
    plan_uid: str
    course_id: str | None = None
    plan_version: int | None = None
    treated_at: datetime | None = None
    fraction_numbers: tuple[int, ...] = ()
    reasons: tuple[str, ...] = Field(
        min_length=1,
        description="documents_incomplete, unapproved, superseded; readers ignore others",
    )
    missing_documents: tuple[str, ...] = ()
    superseded_by: str | None = None

    def business_key(self) -> str:
        return f"flagged:{self.record_uid}:{self.record_revision}"


PAYLOADS: tuple[type[EventPayload], ...] = (
    CourseRegrouped,
    NoteSigned,
    PlanVersioned,
    TreatmentFlagged,
)
