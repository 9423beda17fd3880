"""Use cases of the QA tracker: apply DICOM events, document a review, read the worklists.

A batch of DICOM events is recorded as the facts they state (``facts``), then the fractions
those facts may change are rebuilt from everything recorded (``rebuild``), in one transaction.
So the final state does not depend on arrival order, and a redelivered event changes nothing
(the inbox also skips it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel
from sqlalchemy import ColumnElement, case, or_, select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.facts import FactRecorder, Scope
from services.qa_tracker.rebuild import CHUNK, Rebuilder, assess_fraction
from services.qa_tracker.store import (
    AuditLog,
    Fraction,
    Outbox,
    ProcessedEvent,
    Review,
)
from shared.audit import record_access
from shared.auth import Principal
from shared.errors import NotFound, RuleViolation
from shared.events import (
    CloudEvent,
    DigestItem,
    Patient,
    ReviewDigest,
    ReviewDocumented,
    ReviewOverdue,
    envelope,
)
from shared.outbox import add_to_outbox, claim_events

log = structlog.get_logger(__name__)
CONSUMER = "qa_tracker"
EVENT_SOURCE = "rtops/qa_tracker"


class OpenFlag(BaseModel):
    kind: str
    fraction_id: int
    patient_id: str
    patient_name: str | None
    fraction_number: int | None
    machine: str | None
    treated_at: datetime
    due_at: datetime | None
    link: str


@dataclass(frozen=True)
class NewReview:
    decision: domain.Decision
    comment: str | None
    override_reason: str | None
    reviewed_at: datetime | None


class QaService:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        policy: domain.ReviewPolicy,
        imaging_devices: dict[str, str] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[], None] = lambda: None,
        digest_hour: int = 7,
    ) -> None:
        self._factory = factory
        self._policy = policy
        self._rebuilder = Rebuilder(
            policy=policy,
            imaging_devices=imaging_devices or {},
            clock=clock,
            on_review=self._publish_review,
        )
        self._now = clock
        self._on_commit = on_commit
        self._digest_hour = digest_hour

    @property
    def policy(self) -> domain.ReviewPolicy:
        return self._policy

    def now(self) -> datetime:
        """The service's clock: what the reads decide "overdue" against."""
        return self._now()

    # ------------------------------------------------------------ events in

    def apply(self, event: CloudEvent) -> bool:
        """Apply one event; False when it was applied before."""
        return self.apply_batch([event]) == 1

    def apply_batch(self, events: Sequence[CloudEvent]) -> int:
        """Apply events in one transaction, rebuilding each affected patient once; returns
        how many were new. All or nothing: the consumer retries a failed batch one event at
        a time, so one bad event cannot hold up the rest."""
        with self._factory.begin() as session:
            fresh = claim_events(session, ProcessedEvent, CONSUMER, [e.id for e in events])
            todo = [e.data for e in {e.id: e for e in events if e.id in fresh}.values()]
            recorder = FactRecorder(session, todo)
            for data in todo:
                recorder.record(data)
            self._rebuilder.rebuild(session, recorder.scopes)
        if fresh:
            self._on_commit()
        return len(fresh)

    def rebuild_all(self, *, reassess: bool = True) -> int:
        """Recompute every patient's fractions from the recorded facts, e.g. after the review
        policy changed; returns the number of patients."""
        with self._factory() as session:
            patients = list(session.scalars(select(Fraction.patient_id).distinct()))
        for start in range(0, len(patients), CHUNK):
            with self._factory.begin() as session:
                scopes = {p: Scope(whole=True) for p in patients[start : start + CHUNK]}
                self._rebuilder.rebuild(session, scopes, reassess=reassess)
        self._on_commit()
        return len(patients)

    # ------------------------------------------------------------ reviews

    def add_review(
        self, fraction_id: int, review: NewReview, *, principal: Principal, resource: str
    ) -> Review:
        now = self._now()
        reviewed_at = review.reviewed_at or now
        if reviewed_at.tzinfo is None:
            raise RuleViolation("reviewed_at needs a UTC offset, e.g. 2026-11-24T09:00:00-05:00")
        if reviewed_at > now:
            raise RuleViolation(
                "reviewed_at is in the future; a review is documented when it "
                "happened, at the latest now"
            )
        with self._factory.begin() as session:
            fraction = session.get(Fraction, fraction_id)
            if fraction is None:
                raise NotFound(f"no fraction {fraction_id}")
            if reviewed_at < fraction.treated_at:
                raise RuleViolation("reviewed_at is before the fraction was treated")
            row = Review(
                fraction_id=fraction_id,
                decision=review.decision.value,
                comment=review.comment,
                override_reason=review.override_reason,
                reviewed_at=reviewed_at,
                physician=principal.user,
                recorded_at=now,
                source="api",
                source_ref=str(uuid.uuid4()),
            )
            session.add(row)
            session.flush()
            reviews = session.scalars(select(Review).where(Review.fraction_id == fraction_id))
            assess_fraction(fraction, list(reviews), policy=self._policy, now=now)
            self._publish_review(session, fraction, row)
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[fraction.patient_id],
            )
        self._on_commit()
        return row

    def _publish_review(self, session: Session, fraction: Fraction, review: Review) -> None:
        due = fraction.due_at
        payload = ReviewDocumented(
            **_about(fraction),
            review_id=review.id,
            decision=review.decision,  # type: ignore[arg-type]
            physician=review.physician,
            reviewed_at=review.reviewed_at,
            due_at=due,
            on_time=due is None or review.reviewed_at <= due,
            override_required=fraction.override_required,
            override_reason=review.override_reason,
            origin=review.source,  # type: ignore[arg-type]
        )
        add_to_outbox(session, Outbox, envelope(payload, source=EVENT_SOURCE, subject=fraction.key))

    # ------------------------------------------------------------ overdue sweep

    def publish_overdue(self) -> int:
        """``qa.review.overdue`` once per fraction whose review passed its due time. The
        ``overdue_notified`` flag and the event id (per fraction) keep it once across
        restarts and replicas."""
        now = self._now()
        with self._factory.begin() as session:
            rows = session.scalars(
                select(Fraction)
                .where(
                    Fraction.review_status == domain.ReviewStatus.PENDING.value,
                    Fraction.imaged.is_(True),
                    Fraction.due_at < now,
                    Fraction.overdue_notified.is_(False),
                )
                .limit(500)
            ).all()
            for f in rows:
                payload = ReviewOverdue(
                    **_about(f),
                    physician=f.physician,
                    due_at=f.due_at,  # type: ignore[arg-type]
                )
                add_to_outbox(
                    session, Outbox, envelope(payload, source=EVENT_SOURCE, subject=f.key)
                )
                f.overdue_notified = True
        if rows:
            self._on_commit()
        return len(rows)

    # ------------------------------------------------------------ worklist and digest

    def open_flags(self, session: Session) -> dict[str, list[OpenFlag]]:
        """Open problems by physician: overdue reviews, overrides required but not
        documented, rejected reviews without a later approval."""
        now = self._now()
        rows = session.scalars(
            select(Fraction)
            .where(
                self.status_filter("overdue", now)  # type: ignore[operator]
                | (Fraction.override_required.is_(True) & Fraction.override_documented.is_(False))
                | Fraction.rejected.is_(True)
            )
            .order_by(Fraction.treated_at, Fraction.id)
        ).all()
        groups: dict[str, list[OpenFlag]] = {}
        for f in rows:
            kinds = [
                kind
                for kind, applies in (
                    ("overdue_review", self.status_at(f, now) == "overdue"),
                    ("override_not_documented", f.override_required and not f.override_documented),
                    ("rejected_without_follow_up", f.rejected),
                )
                if applies
            ]
            for kind in kinds:
                groups.setdefault(f.physician or "unassigned", []).append(
                    OpenFlag(
                        kind=kind,
                        fraction_id=f.id,
                        patient_id=f.patient_id,
                        patient_name=f.patient_name,
                        fraction_number=f.fraction_number,
                        machine=f.machine,
                        treated_at=f.treated_at,
                        due_at=f.due_at,
                        link=f"/v1/fractions/{f.id}",
                    )
                )
        return groups

    def publish_digests(self) -> int:
        """One ``qa.review.digest`` per physician with open flags, once a business day after
        ``digest_hour`` (clinic time): staff get a daily summary, not a message per fraction.
        The event id is per physician and day, so restarts and replicas send it once."""
        now = self._now()
        local = now.astimezone(self._policy.calendar.zone)
        if local.hour < self._digest_hour or not self._policy.calendar.is_business_day(
            local.date()
        ):
            return 0
        sent = 0
        with self._factory.begin() as session:
            for physician, flags in sorted(self.open_flags(session).items()):
                payload = ReviewDigest(
                    patient=Patient(id=""),
                    physician=physician,
                    day=local.date(),
                    flags=tuple(
                        DigestItem(
                            **f.model_dump(exclude={"patient_name"}), patient_name=f.patient_name
                        )
                        for f in flags
                    ),
                )
                sent += add_to_outbox(
                    session, Outbox, envelope(payload, source=EVENT_SOURCE, subject=physician)
                )
        if sent:
            self._on_commit()
        return sent

    # ------------------------------------------------------------ reads

    def status_at(self, fraction: Fraction, now: datetime) -> str:
        if (
            fraction.review_status == domain.ReviewStatus.PENDING.value
            and fraction.due_at
            and fraction.due_at < now
        ):
            return domain.ReviewStatus.OVERDUE.value
        return fraction.review_status

    def status_expression(self, now: datetime) -> ColumnElement[str]:
        """``status_at`` in SQL."""
        return case(
            (
                (Fraction.review_status == domain.ReviewStatus.PENDING.value)
                & (Fraction.due_at < now),
                domain.ReviewStatus.OVERDUE.value,
            ),
            else_=Fraction.review_status,
        )

    def status_filter(self, status: str, now: datetime) -> object:
        if status == domain.ReviewStatus.OVERDUE.value:
            return (Fraction.review_status == "pending") & (Fraction.due_at < now)
        if status == domain.ReviewStatus.PENDING.value:
            return (Fraction.review_status == "pending") & or_(
                Fraction.due_at.is_(None), Fraction.due_at >= now
            )
        return Fraction.review_status == status


def _about(fraction: Fraction) -> dict[str, Any]:
    """The fields every event about a fraction carries."""
    return {
        "patient": Patient(id=fraction.patient_id, name=fraction.patient_name),
        "fraction_key": fraction.key,
        "plan_uid": fraction.plan_uid,
        "fraction_number": fraction.fraction_number,
        "treated_at": fraction.treated_at,
        "machine": fraction.machine,
    }
