"""Payloads of the QA tracker's events (``rtops.qa.*``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import Field

from shared.events.base import EventPayload, Frozen

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


PAYLOADS: tuple[type[EventPayload], ...] = (ReviewDocumented, ReviewOverdue, ReviewDigest)
