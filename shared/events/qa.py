"""Payloads of the QA tracker's events (``rtops.qa.*``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import Field

from shared.events.base import EventPayload, Frozen

# ---------------------------------------------------------------- qa_tracker


class ReviewDocumented(EventPayload):
    """A physician documented the review of a fraction's image guidance (through the API, or an
    RT Image approval), announced once per fraction it is placed on. ``on_time`` is as of the
    announcement: a fraction's due time can still move (a later record of the same day), so
    billing reads the fraction's current verdict from ``rtops.qa.fraction.assessed``."""

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
        # One id per placement: an adopted approval that moves to another fraction is a new
        # announcement, not a duplicate of the first.
        return f"review:{self.review_id}:{self.fraction_key}"


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


class DigestItem(Frozen):
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


StoredStatus = Literal["pending", "reviewed_on_time", "reviewed_late", "not_imaged"]


class QualifyingReview(Frozen):
    """The review that decides a fraction's status: the first documented one."""

    id: int
    decision: Literal["approved", "rejected"]
    physician: str
    reviewed_at: datetime
    origin: Literal["api", "dicom_approval"]


class FractionAssessed(EventPayload):
    """A fraction's billing-relevant verdict changed (or the fraction disappeared: a record
    was renumbered or revised away, ``removed``). The latest ``revision`` of a fraction key is
    its current state; revisions only increase, also across a removal and a later re-creation.

    The verdict is stored without the clock: an unreviewed fraction is ``pending`` with its
    ``due_at`` (it is overdue once that has passed; ``rtops.qa.review.overdue`` says when).
    ``on_time`` is true exactly when the status is ``reviewed_on_time``: ASTRO's condition for
    billing image guidance is a physician's review before the next fraction."""

    type: ClassVar[str] = "rtops.qa.fraction.assessed"
    version: Literal[1] = 1
    fraction_key: str = Field(description="patient|plan|fraction group|fraction number")
    plan_uid: str | None = Field(default=None, description="None: the record named no plan")
    fraction_group: int
    fraction_number: int | None = None
    revision: int = Field(ge=1, description="per fraction key; the highest is current")
    removed: bool = False
    review_status: StoredStatus | None = Field(default=None, description="None when removed")
    on_time: bool = False
    due_at: datetime | None = None
    treated_at: datetime
    machine: str | None = None
    physician: str | None = Field(default=None, description="the plan's approving physician")
    review: QualifyingReview | None = None
    override_required: bool = False
    override_documented: bool = False
    imaging: tuple[str, ...] = Field(
        default=(), description='classifications of the imaging that prepared it, e.g. ["cbct"]'
    )

    def business_key(self) -> str:
        return f"fraction:{self.fraction_key}:{self.revision}"


PAYLOADS: tuple[type[EventPayload], ...] = (
    ReviewDocumented,
    ReviewOverdue,
    ReviewDigest,
    FractionAssessed,
)
