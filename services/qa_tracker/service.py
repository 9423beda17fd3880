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
from datetime import UTC, datetime, timedelta

import structlog
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.announcements import about, announce_review, publish_assessed
from services.qa_tracker.assessment import store_verdict
from services.qa_tracker.facts import FactRecorder
from services.qa_tracker.overdue import is_overdue
from services.qa_tracker.rebuild import CHUNK, Rebuilder
from services.qa_tracker.scope import Scope
from services.qa_tracker.store import AuditLog, Fraction, ProcessedEvent, ReviewRow
from services.qa_tracker.store.reads import (
    flagged_fractions,
    overdue_count,
    overdue_unnotified,
    reviews_of,
)
from services.qa_tracker.store.rebuild_queries import patients_with_facts
from shared.audit import record_access
from shared.auth import DEV_ISSUER, Principal
from shared.errors import Forbidden, NotFound, RuleViolation
from shared.events import (
    CloudEvent,
    DigestItem,
    Patient,
    ReviewDigest,
    ReviewOverdue,
)
from shared.outbox import claim_events, emit

log = structlog.get_logger(__name__)
CONSUMER = "qa_tracker"


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


# A reviewed_at this far ahead of the server's clock is the caller's clock running fast, taken
# as now; further ahead it is refused.
CLOCK_SKEW = timedelta(minutes=2)


@dataclass(frozen=True)
class NewReview:
    """A review as documented: ``reviewed_at`` None is now; one dated further back than the
    policy's backdate tolerance needs ``backdate_reason`` and ``documented_in``. Who reviewed
    is never part of it: it is the principal recording it (``reviewer_names``)."""

    decision: domain.Decision
    comment: str | None
    override_reason: str | None
    reviewed_at: datetime | None
    backdate_reason: str | None = None
    documented_in: str | None = None


def reviewer_names(principal: Principal) -> tuple[str, ...]:
    """The DICOM person names a reviewer goes by: the identity mapping's, keyed by the stable
    identity (``Principal.names``); in the embedded setup, failing a mapping, the development
    user name itself (``rtops token --user Oncologist^Olga``), as the pages' worklist does."""
    if principal.names:
        return principal.names
    return (principal.user,) if principal.issuer == DEV_ISSUER else ()


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
            todo = list({e.id: e for e in events if e.id in fresh}.values())
            recorder = FactRecorder(session, todo)
            for event in todo:
                recorder.record(event)
            self._rebuilder.rebuild(session, recorder.scopes)
        if fresh:
            self._on_commit()
        return len(fresh)

    def rebuild_all(self, *, reassess: bool = True) -> int:
        """Recompute every patient's fractions from the recorded facts, e.g. after the review
        policy changed; returns the number of patients. Every patient any fact names, also
        those without a stored fraction (never derived, or all removed)."""
        with self._factory() as session:
            patients = patients_with_facts(session)
        for start in range(0, len(patients), CHUNK):
            with self._factory.begin() as session:
                scopes = {p: Scope(whole=True) for p in patients[start : start + CHUNK]}
                self._rebuilder.rebuild(session, scopes, reassess=reassess)
        self._on_commit()
        return len(patients)

    # ------------------------------------------------------------ reviews

    def add_review(
        self, fraction_id: int, review: NewReview, *, principal: Principal, resource: str
    ) -> ReviewRow:
        """Record ``review`` by ``principal`` (``recorded_at`` is now). ``RuleViolation`` for
        a time in the future, before the treatment, or backdated without reason; ``Forbidden``
        (audited as "refused") when the review policy does not let this physician review it."""
        now = self._now()
        reviewed_at = review.reviewed_at or now
        if reviewed_at.tzinfo is None:
            raise RuleViolation("reviewed_at needs a UTC offset, e.g. 2026-11-24T09:00:00-05:00")
        if reviewed_at > now + CLOCK_SKEW:
            raise RuleViolation(
                "reviewed_at is in the future; a review is documented when it "
                "happened, at the latest now"
            )
        # Stored and answered in UTC, as every read gives them back.
        now, reviewed_at = now.astimezone(UTC), min(reviewed_at, now).astimezone(UTC)
        backdated = domain.is_backdated(reviewed_at, now, self._policy)
        reason, system = _text(review.backdate_reason), _text(review.documented_in)
        names = reviewer_names(principal)
        with self._factory.begin() as session:
            fraction = session.get(Fraction, fraction_id)
            if fraction is None:
                raise NotFound(f"no fraction {fraction_id}")
            patient_id, treated_at = fraction.patient_id, fraction.treated_at
            day = now.astimezone(self._policy.calendar.zone).date()
            refusal = domain.may_review(self._policy, names, fraction.physician, day)
        if refusal is not None:
            self._refuse(principal, resource, patient_id, refusal)
        if reviewed_at < treated_at:
            raise RuleViolation("reviewed_at is before the fraction was treated")
        if backdated and not (reason and system):
            minutes = self._policy.backdate_tolerance.total_seconds() / 60
            raise RuleViolation(
                f"reviewed_at is more than {minutes:g} minutes before now (backdated): give "
                "backdate_reason (why it is documented late) and documented_in (the system "
                'it was first documented in, e.g. "ARIA" or "paper chart")'
            )
        with self._factory.begin() as session:
            fraction = session.get(Fraction, fraction_id)
            if fraction is None:
                raise NotFound(f"no fraction {fraction_id}")
            row = ReviewRow(
                fraction_id=fraction_id,
                decision=review.decision.value,
                comment=review.comment,
                override_reason=review.override_reason,
                reviewed_at=reviewed_at,
                # The fraction's physician when the reviewer goes by that name, else their
                # first; unmapped (any physician may review): the stable identity.
                physician=(
                    fraction.physician
                    if fraction.physician in names
                    else (names[0] if names else principal.user)
                ),
                recorded_at=now,
                recorded_by=principal.user,
                backdate_reason=reason,
                documented_in=system,
                source="api",
                source_ref=str(uuid.uuid4()),
            )
            session.add(row)
            session.flush()
            reviews = reviews_of(session, fraction_id)
            store_verdict(fraction, reviews, self._policy)
            announce_review(session, fraction, row, self._policy)
            publish_assessed(session, [(fraction, reviews)])
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

    def _refuse(self, principal: Principal, resource: str, patient_id: str, why: str) -> None:
        """Audit a review the policy refused (its own transaction: nothing else is written),
        then refuse it."""
        with self._factory.begin() as session:
            record_access(
                session,
                AuditLog,
                principal,
                action="refused",
                resource=resource,
                patient_ids=[patient_id],
            )
        raise Forbidden(why)

    # ------------------------------------------------------------ overdue sweep

    def publish_overdue(self) -> int:
        """``qa.review.overdue`` once per fraction whose review passed its due time. The
        ``overdue_notified`` flag and the event id (per fraction) keep it once across
        restarts and replicas."""
        now = self._now()
        with self._factory.begin() as session:
            rows = overdue_unnotified(session, now, limit=500)
            for f in rows:
                payload = ReviewOverdue(
                    **about(f),
                    physician=f.physician,
                    due_at=f.due_at,  # type: ignore[arg-type]
                )
                emit(session, payload, subject=f.key)
                f.overdue_notified = True
        if rows:
            self._on_commit()
        return len(rows)

    # ------------------------------------------------------------ worklist and digest

    def overdue_count(self) -> int:
        with self._factory() as session:
            return overdue_count(session, self._now())

    def open_flags(self, session: Session) -> dict[str, list[OpenFlag]]:
        """Open problems by physician: overdue reviews, overrides required but not
        documented, rejected reviews without a later approval."""
        now = self._now()
        rows = flagged_fractions(session, now)
        groups: dict[str, list[OpenFlag]] = {}
        for f in rows:
            kinds = [
                kind
                for kind, applies in (
                    ("overdue_review", is_overdue(f.review_status, f.due_at, now)),
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
                sent += emit(session, payload, subject=physician)
        if sent:
            self._on_commit()
        return sent


def _text(value: str | None) -> str | None:
    return value.strip() or None if value else None
