"""Use cases of the QA tracker: apply a DICOM event, document a review, read the worklists.

Every DICOM event is first recorded as the fact it states (upserts keyed by UIDs, newer
revisions win), then the patient's fractions are rebuilt from all recorded facts with the pure
matching rules of ``domain``. So the final state does not depend on arrival order, and a
redelivered event changes nothing (the inbox also skips it).
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel
from sqlalchemy import Row, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.store import (
    AuditLog,
    Fraction,
    ImagingSession,
    Outbox,
    Plan,
    ProcessedEvent,
    Registration,
    Review,
    TreatmentRecord,
)
from shared.audit import record_access
from shared.auth import Principal
from shared.errors import NotFound, RuleViolation
from shared.events import (
    CloudEvent,
    DigestItem,
    ImagingAcquired,
    Patient,
    PlanReceived,
    RegistrationReceived,
    ReviewDigest,
    ReviewDocumented,
    ReviewOverdue,
    TreatmentRecorded,
    envelope,
)
from shared.outbox import add_to_outbox, claim_events

log = structlog.get_logger(__name__)
CONSUMER = "qa_tracker"
EVENT_SOURCE = "rtops/qa_tracker"
# Plans that never treat a patient (domain-dicom.md s. 5.1).
NON_CLINICAL_INTENTS = {"VERIFICATION", "MACHINE_QA", "SERVICE"}
IGRT_CLASSES = {"cbct", "kv_2d", "mv_portal"}
_SBRT = re.compile(r"\b(SBRT|SABR|SRS|SRT)\b", re.IGNORECASE)


def technique_of(plan: PlanReceived) -> str | None:
    text = " ".join(
        filter(None, (plan.label, plan.name, plan.description, plan.prescription_description))
    )
    return "SBRT" if _SBRT.search(text) else None


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
        self._devices = imaging_devices or {}
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
            known = _load_facts(session, todo)
            patients = {p for data in todo if (p := self._record(known, session, data))}
            self._rebuild(session, patients)
        if fresh:
            self._on_commit()
        return len(fresh)

    def _record(self, known: _Facts, session: Session, data: object) -> str | None:
        """Store the fact an event states; the patient whose fractions to rebuild, or None."""
        if isinstance(data, TreatmentRecorded):
            return self._record_treatment(known, session, data)
        if isinstance(data, ImagingAcquired):
            return self._record_imaging(known, session, data)
        if isinstance(data, RegistrationReceived):
            return self._record_registration(known, session, data)
        if isinstance(data, PlanReceived):
            return self._record_plan(known, session, data)
        return None  # not ours: acknowledged and ignored

    def _record_treatment(
        self, known: _Facts, session: Session, e: TreatmentRecorded
    ) -> str | None:
        # A SIMULATION record is not a delivered fraction (domain-dicom.md s. 4.1).
        if e.content_origin == "SIMULATION" or e.treated_at is None or not e.patient.id:
            return None
        row = known.get((TreatmentRecord, e.object.sop_instance_uid))
        if row is not None and row.revision >= e.object.revision:
            return None
        starts = [b.started_at for b in e.beams if b.started_at]
        ends = [b.ended_at for b in e.beams if b.ended_at]
        values = {
            "revision": e.object.revision,
            "patient_id": e.patient.id,
            "patient_name": e.patient.name,
            "plan_uid": e.plan_uid,
            "fraction_group": e.fraction_group_number,
            "fraction_numbers": list(e.fraction_numbers),
            "machine": e.machine,
            "started_at": min(starts, default=e.treated_at),
            "ended_at": max(ends, default=e.treated_at),
            "delivered": e.delivered,
            "partial": e.partial,
            "therapist_override": e.overrides,
        }
        _upsert(known, session, row, TreatmentRecord, e.object.sop_instance_uid, values)
        return e.patient.id

    def _record_imaging(self, known: _Facts, session: Session, e: ImagingAcquired) -> str | None:
        if e.classification not in IGRT_CLASSES or e.acquired_at is None or not e.patient.id:
            return None
        row = known.get((ImagingSession, e.series_instance_uid))
        # A later event of a series carries more instances; an older one arriving late loses.
        if row is not None and (row.instance_count, len(row.approvals)) >= (
            e.instance_count,
            len(e.approvals),
        ):
            return None
        values = {
            "patient_id": e.patient.id,
            "machine": e.machine,
            "classification": e.classification,
            "acquired_at": e.acquired_at,
            "instance_count": e.instance_count,
            "approvals": [a.model_dump(mode="json") for a in e.approvals],
        }
        _upsert(known, session, row, ImagingSession, e.series_instance_uid, values)
        return e.patient.id

    def _record_registration(
        self, known: _Facts, session: Session, e: RegistrationReceived
    ) -> str | None:
        if not e.patient.id:
            return None
        row = known.get((Registration, e.object.sop_instance_uid))
        if row is not None and row.revision >= e.object.revision:
            return None
        translation = e.translation_mm or e.couch_shift_mm
        values = {
            "revision": e.object.revision,
            "patient_id": e.patient.id,
            "machine": e.source.machine,
            "kind": e.kind,
            "content_at": e.content_at or datetime.now(UTC),
            "creator": e.creator_name,
            "moving_series": list(e.moving_series_uids),
            "translation_mm": [translation.x, translation.y, translation.z]
            if translation
            else None,
            "rotation_deg": [e.rotation_deg.x, e.rotation_deg.y, e.rotation_deg.z]
            if e.rotation_deg
            else None,
        }
        _upsert(known, session, row, Registration, e.object.sop_instance_uid, values)
        return e.patient.id

    def _record_plan(self, known: _Facts, session: Session, e: PlanReceived) -> str | None:
        if (e.intent or "").upper() in NON_CLINICAL_INTENTS or not e.patient.id:
            return None
        values = {
            "patient_id": e.patient.id,
            "label": e.label,
            "site": e.treatment_site,
            "technique": technique_of(e),
            "physician": e.reviewer_name if e.approval_status == "APPROVED" else None,
        }
        row = known.get((Plan, e.object.sop_instance_uid))
        _upsert(known, session, row, Plan, e.object.sop_instance_uid, values)
        return e.patient.id

    # ------------------------------------------------------------ rebuild

    def _rebuild(self, session: Session, patient_ids: set[str]) -> None:
        """Recompute every fraction of these patients from the recorded facts."""
        # The recorded facts first; then reads would flush every fraction change before each
        # query, so the rest flushes once, at commit.
        session.flush()
        with session.no_autoflush:
            ordered = sorted(patient_ids)
            for start in range(0, len(ordered), 200):
                chunk = ordered[start : start + 200]
                facts = _PatientFacts.load(session, chunk)
                for patient_id in chunk:
                    self._rebuild_patient(session, patient_id, facts)
                for model, changes in facts.matches.items():
                    if changes:  # ORM bulk UPDATE by primary key: one executemany
                        session.execute(update(model), changes)

    def _rebuild_patient(self, session: Session, patient_id: str, facts: _PatientFacts) -> None:
        zone = self._policy.calendar.zone
        grouped: dict[str, list[Row[Any]]] = {}
        for record in facts.records[patient_id]:
            for key in fraction_keys(record):
                grouped.setdefault(key, []).append(record)
        treated = [
            domain.TreatedFraction(
                key,
                patient_id,
                rs[0].machine,
                min(r.started_at for r in rs),
                max(r.ended_at for r in rs),
            )
            for key, rs in grouped.items()
        ]
        sessions = facts.sessions[patient_id]
        imaging = [
            domain.ImagingSession(s.series_uid, patient_id, s.machine, s.acquired_at)
            for s in sessions
        ]
        session_of = domain.match_imaging(treated, imaging, zone=zone, same_machine=self._devices)
        registrations = facts.registrations[patient_id]
        reg_of = domain.match_registrations(
            [
                domain.Match(r.sop_uid, patient_id, r.machine, r.content_at, tuple(r.moving_series))
                for r in registrations
            ],
            imaging,
            zone=zone,
        )
        facts.match(ImagingSession, "fraction_key", sessions, session_of)
        facts.match(Registration, "session_uid", registrations, reg_of)
        next_start = domain.next_fraction_starts(treated)
        plans = {p.plan_uid: p for p in facts.plans[patient_id]}
        existing = {f.key: f for f in facts.fractions[patient_id]}
        reviews: dict[int | None, list[Review]] = {}
        for review in facts.reviews[patient_id]:
            reviews.setdefault(review.fraction_id, []).append(review)
        adopted_refs = {
            r.source_ref for r in facts.reviews[patient_id] if r.source == "dicom_approval"
        }
        for t in treated:
            rs = grouped[t.key]
            plan = plans.get(rs[0].plan_uid or "")
            my_sessions = [s for s in sessions if session_of.get(s.series_uid) == t.key]
            my_series = {s.series_uid for s in my_sessions}
            my_regs = sorted(
                (r for r in registrations if reg_of.get(r.sop_uid) in my_series),
                key=lambda r: r.content_at,
            )
            latest = my_regs[-1] if my_regs else None
            values = {
                "patient_id": patient_id,
                "patient_name": rs[0].patient_name,
                "plan_uid": rs[0].plan_uid,
                "fraction_number": _number_of(t.key),
                "machine": t.machine,
                "treated_at": t.started_at,
                "ended_at": t.ended_at,
                "partial": any(r.partial for r in rs),
                "therapist_override": any(r.therapist_override for r in rs),
                "next_fraction_at": next_start[t.key],
                "imaged": bool(my_sessions),
                "physician": plan.physician if plan else None,
                "technique": plan.technique if plan else None,
                "site": plan.site if plan else None,
                "translation_mm": latest.translation_mm if latest else None,
                "rotation_deg": latest.rotation_deg if latest else None,
            }
            fraction = existing.pop(t.key, None)
            if fraction is None:
                fraction = Fraction(
                    key=t.key,
                    overdue_notified=False,
                    review_status="pending",
                    override_required=False,
                    override_documented=False,
                    rejected=False,
                    **values,
                )
                session.add(fraction)
                changed = True
            else:
                changed = False
                for name, value in values.items():
                    changed |= _set(fraction, name, value)
            mine = reviews.setdefault(fraction.id, []) if fraction.id is not None else []
            adopted = self._adopt_image_approvals(session, fraction, my_sessions, adopted_refs)
            mine += adopted
            # The assessment depends only on these values and the reviews (not on the clock):
            # unchanged inputs, unchanged result.
            if changed or adopted:
                self._assess(session, fraction, mine)
        for gone in existing.values():  # e.g. a record revision renumbered its fraction
            if not reviews.get(gone.id):
                session.delete(gone)

    def _adopt_image_approvals(
        self,
        session: Session,
        fraction: Fraction,
        sessions: Sequence[Row[Any]],
        adopted_refs: set[str],
    ) -> list[Review]:
        """An RT Image approved in the OIS (Approval Status with reviewer and time) is an
        opportunistic review of its fraction."""
        adopted: list[Review] = []
        for s in sessions:
            for approval in s.approvals:
                if approval.get("status") != "APPROVED" or not approval.get("reviewed_at"):
                    continue
                ref = approval["sop_instance_uid"]
                if ref in adopted_refs:
                    continue
                adopted_refs.add(ref)
                if fraction.id is None:
                    session.flush()  # the review needs its fraction's id
                review = Review(
                    fraction_id=fraction.id,
                    decision="approved",
                    comment=None,
                    override_reason=None,
                    reviewed_at=datetime.fromisoformat(approval["reviewed_at"]),
                    physician=approval.get("reviewer_name") or "unknown",
                    recorded_at=self._now(),
                    source="dicom_approval",
                    source_ref=ref,
                )
                session.add(review)
                session.flush()
                self._publish_review(session, fraction, review)
                adopted.append(review)
        return adopted

    def _facts(self, fraction: Fraction, reviews: Sequence[Review]) -> domain.FractionFacts:
        correction = None
        if fraction.translation_mm or fraction.rotation_deg:
            correction = domain.Correction(
                translation_mm=tuple(fraction.translation_mm)  # type: ignore[arg-type]
                if fraction.translation_mm
                else None,
                rotation_deg=tuple(fraction.rotation_deg)  # type: ignore[arg-type]
                if fraction.rotation_deg
                else None,
            )
        return domain.FractionFacts(
            treated_at=fraction.treated_at,
            imaged=fraction.imaged,
            next_fraction_at=fraction.next_fraction_at,
            correction=correction,
            technique=fraction.technique,
            site=fraction.site,
            reviews=[
                domain.Review(
                    domain.Decision(r.decision),
                    r.reviewed_at,
                    r.physician,
                    r.override_reason,
                )
                for r in reviews
            ],
        )

    def _assess(
        self, session: Session, fraction: Fraction, reviews: Sequence[Review] | None = None
    ) -> domain.Assessment:
        if reviews is None:
            reviews = session.scalars(select(Review).where(Review.fraction_id == fraction.id)).all()
        result = domain.assess(self._facts(fraction, reviews), now=self._now(), policy=self._policy)
        fraction.due_at = result.due_at
        # Stored without the clock: "overdue" is pending past due_at, decided when read.
        fraction.review_status = (
            domain.ReviewStatus.PENDING.value
            if result.status == domain.ReviewStatus.OVERDUE
            else result.status.value
        )
        fraction.override_required = result.override_required
        fraction.override_documented = result.override_documented
        fraction.rejected = result.rejected
        return result

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
            self._assess(session, fraction)
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
            patient=Patient(id=fraction.patient_id, name=fraction.patient_name),
            review_id=review.id,
            fraction_key=fraction.key,
            plan_uid=fraction.plan_uid,
            fraction_number=fraction.fraction_number,
            treated_at=fraction.treated_at,
            machine=fraction.machine,
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
                    patient=Patient(id=f.patient_id, name=f.patient_name),
                    fraction_key=f.key,
                    plan_uid=f.plan_uid,
                    fraction_number=f.fraction_number,
                    treated_at=f.treated_at,
                    machine=f.machine,
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

    def status_filter(self, status: str, now: datetime) -> object:
        if status == domain.ReviewStatus.OVERDUE.value:
            return (Fraction.review_status == "pending") & (Fraction.due_at < now)
        if status == domain.ReviewStatus.PENDING.value:
            return (Fraction.review_status == "pending") & or_(
                Fraction.due_at.is_(None), Fraction.due_at >= now
            )
        return Fraction.review_status == status


def fraction_keys(record: Row[Any] | TreatmentRecord) -> list[str]:
    """Count a fraction once per (plan, fraction group, Current Fraction Number), not per
    record: an interrupted fraction spans records (domain-dicom.md s. 4.2)."""
    course = record.plan_uid or f"record:{record.record_uid}"
    group = record.fraction_group or 1
    numbers = record.fraction_numbers or [None]
    return [f"{record.patient_id}|{course}|{group}|{'' if n is None else n}" for n in numbers]


def _number_of(key: str) -> int | None:
    last = key.rsplit("|", 1)[-1]
    return int(last) if last else None


_Facts = dict[tuple[type, str], Any]
_FACT_OF: dict[type, tuple[type, Callable[[Any], str]]] = {
    TreatmentRecorded: (TreatmentRecord, lambda e: e.object.sop_instance_uid),
    ImagingAcquired: (ImagingSession, lambda e: e.series_instance_uid),
    RegistrationReceived: (Registration, lambda e: e.object.sop_instance_uid),
    PlanReceived: (Plan, lambda e: e.object.sop_instance_uid),
}


def _load_facts(session: Session, data: Sequence[object]) -> _Facts:
    """The stored facts these events may update, in one query per table."""
    wanted: dict[type, set[str]] = {}
    for d in data:
        if (fact := _FACT_OF.get(type(d))) is not None:
            model, key_of = fact
            wanted.setdefault(model, set()).add(key_of(d))
    known: _Facts = {}
    for model, keys in wanted.items():
        column = model.__mapper__.primary_key[0]  # type: ignore[attr-defined]
        for row in session.scalars(select(model).where(column.in_(keys))):
            known[model, getattr(row, column.key)] = row
    return known


@dataclass
class _PatientFacts:
    """Everything recorded about some patients, one query per table. The facts are plain
    rows (a rebuild only reads them, and ORM objects cost several times more to load); the
    fractions are ORM objects, updated in place."""

    records: dict[str, list[Row[Any]]]
    sessions: dict[str, list[Row[Any]]]
    registrations: dict[str, list[Row[Any]]]
    plans: dict[str, list[Row[Any]]]
    reviews: dict[str, list[Row[Any]]]
    fractions: dict[str, list[Fraction]]
    # Facts whose stored match changed, to write per table in one statement.
    matches: dict[type, list[dict[str, Any]]] = field(default_factory=dict)

    def match(
        self, model: Any, column: str, rows: Sequence[Row[Any]], matches: dict[str, str]
    ) -> None:
        key = model.__mapper__.primary_key[0].key
        self.matches.setdefault(model, []).extend(
            {key: getattr(row, key), column: matches.get(getattr(row, key))}
            for row in rows
            if getattr(row, column) != matches.get(getattr(row, key))
        )

    @classmethod
    def load(cls, session: Session, patient_ids: Sequence[str]) -> _PatientFacts:
        def by_patient(rows: Iterable[Any]) -> dict[str, list[Any]]:
            grouped: dict[str, list[Any]] = defaultdict(list)
            for row in rows:
                grouped[row.patient_id].append(row)
            return grouped

        def rows_of(model: Any, *where: Any) -> dict[str, list[Row[Any]]]:
            table = model.__table__
            stmt = select(table).where(table.c.patient_id.in_(patient_ids), *where)
            return by_patient(session.execute(stmt))

        review, fraction = Review.__table__, Fraction.__table__
        return cls(
            records=rows_of(TreatmentRecord, TreatmentRecord.delivered.is_(True)),
            sessions=rows_of(ImagingSession),
            registrations=rows_of(Registration),
            plans=rows_of(Plan),
            reviews=by_patient(
                session.execute(
                    select(review, fraction.c.patient_id)
                    .join(fraction)
                    .where(fraction.c.patient_id.in_(patient_ids))
                )
            ),
            fractions=by_patient(
                session.scalars(select(Fraction).where(Fraction.patient_id.in_(patient_ids)))
            ),
        )


def _set(row: object, name: str, value: object) -> bool:
    """Assign only a changed value, so an unchanged row is not written; True if changed."""
    if getattr(row, name) == value:
        return False
    setattr(row, name, value)
    return True


def _upsert(
    known: _Facts,
    session: Session,
    row: object | None,
    model: type,
    key: str,
    values: dict[str, object],
) -> None:
    if row is None:
        column = model.__mapper__.primary_key[0].key  # type: ignore[attr-defined]
        row = model(**{column: key}, **values)
        session.add(row)
        known[model, key] = row
    else:
        for name, value in values.items():
            setattr(row, name, value)
