"""Deriving fractions from the recorded facts with the pure rules of ``domain``.

A batch rebuilds, per patient, the part of the timeline its facts may change (a ``Scope``):
whole clinic days, since imaging and registrations match fractions of the same day, widened
until it holds whole fractions (an interrupted fraction can continue on another day; a
registration can name yesterday's series). Every fraction in scope is recomputed from all
facts on its days, so the result does not depend on arrival order, and the whole patient
would give the same answer. Outside the scope only the previous fraction can change: its
next fraction, and so its due time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, false, or_, select, update
from sqlalchemy.orm import Session

from services.qa_tracker import domain
from services.qa_tracker.facts import Scope, fraction_keys
from services.qa_tracker.store import (
    Fraction,
    ImagingSession,
    Plan,
    Registration,
    RegistrationSeries,
    Review,
    TreatmentRecord,
)

# Called for each review adopted from an approved RT Image, in the rebuild's transaction.
OnReview = Callable[[Session, Fraction, Review], None]
CHUNK = 200  # patients per set of queries
APPROVAL = "dicom_approval"  # Review.source of a review adopted from an RT Image approval


def assess_fraction(
    fraction: Fraction, reviews: Sequence[Any], *, policy: domain.ReviewPolicy, now: datetime
) -> None:
    """Store the rules' verdict on one fraction. Stored without the clock: "overdue" is
    pending past ``due_at``, decided when read."""
    result = domain.assess(_facts_of(fraction, reviews), now=now, policy=policy)
    fraction.due_at = result.due_at
    fraction.review_status = (
        domain.ReviewStatus.PENDING.value
        if result.status == domain.ReviewStatus.OVERDUE
        else result.status.value
    )
    fraction.override_required = result.override_required
    fraction.override_documented = result.override_documented
    fraction.rejected = result.rejected


def _facts_of(fraction: Fraction, reviews: Sequence[Any]) -> domain.FractionFacts:
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
                domain.Decision(r.decision), r.reviewed_at, r.physician, r.override_reason
            )
            for r in reviews
        ],
    )


@dataclass
class _Loaded:
    """What a chunk of patients' rebuild reads, with one query per table. Facts are plain
    rows (only read, and several times cheaper to load than ORM objects); the fractions in
    scope, and each patient's previous one, are ORM objects updated in place."""

    scopes: dict[str, Scope]
    timeline: dict[str, list[Row[Any]]]
    records: dict[str, list[Row[Any]]]
    sessions: dict[str, list[Row[Any]]]
    named_sessions: dict[str, list[Row[Any]]]  # outside the scope, named by a registration
    registrations: dict[str, list[Row[Any]]]
    plans: dict[str, dict[str, Row[Any]]]
    fractions: dict[str, list[Fraction]]
    previous: dict[str, Fraction]
    reviews: dict[int, list[Any]]
    # Reviews adopted from RT Image approvals, by patient and RT Image SOP UID: those of the
    # scope's images and those on the scope's fractions.
    approvals: dict[str, dict[str, Row[Any]]]
    matches: dict[type, list[dict[str, Any]]] = field(default_factory=dict)

    def match(
        self, model: Any, column: str, rows: Sequence[Row[Any]], matches: dict[str, str]
    ) -> None:
        """Queue the new match of each fact whose stored one changed."""
        key = model.__mapper__.primary_key[0].key
        self.matches.setdefault(model, []).extend(
            {key: getattr(row, key), column: matches.get(getattr(row, key))}
            for row in rows
            if getattr(row, column) != matches.get(getattr(row, key))
        )

    def write_matches(self, session: Session) -> None:
        for model, changes in self.matches.items():
            if changes:  # ORM bulk UPDATE by primary key: one executemany per table
                session.execute(update(model), changes)


def _by_patient(rows: Iterable[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.patient_id].append(row)
    return grouped


def _load(session: Session, scopes: dict[str, Scope], zone: Any) -> _Loaded:
    patient_ids = list(scopes)
    imaging, fraction, review = (
        ImagingSession.__table__,
        Fraction.__table__,
        Review.__table__,
    )
    # The days of the series that registrations name are in scope too, and so are the days
    # of the sessions that registrations naming a newly arrived series matched until now.
    named = {s for scope in scopes.values() for s in scope.series}
    if named:
        for row in session.execute(
            select(imaging.c.patient_id, imaging.c.acquired_at).where(
                imaging.c.series_uid.in_(named)
            )
        ):
            if row.patient_id in scopes:
                scopes[row.patient_id].add(row.acquired_at)
    arrived = {s for scope in scopes.values() for s in scope.arrived}
    if arrived:
        links, registration = RegistrationSeries.__table__, Registration.__table__
        matched_before = (
            select(registration.c.patient_id, registration.c.content_at, imaging.c.acquired_at)
            .join(links, links.c.sop_uid == registration.c.sop_uid)
            .outerjoin(imaging, imaging.c.series_uid == registration.c.session_uid)
            .where(links.c.series_uid.in_(arrived))
        )
        for row in session.execute(matched_before):
            if row.patient_id in scopes:
                scopes[row.patient_id].add(row.content_at, row.acquired_at)
    for scope in scopes.values():
        scope.to_days(zone)

    # Widen each scope to whole fractions, using every stored fraction's span.
    timeline = _by_patient(
        session.execute(
            select(
                fraction.c.id,
                fraction.c.key,
                fraction.c.patient_id,
                fraction.c.treated_at,
                fraction.c.ended_at,
            ).where(fraction.c.patient_id.in_(patient_ids))
        )
    )
    for patient_id, scope in scopes.items():
        grew = True
        while grew:
            grew = False
            for f in timeline[patient_id]:
                if f.key in scope.keys or scope.overlaps(f.treated_at, f.ended_at):
                    grew |= scope.cover(f.treated_at, f.ended_at, zone)

    whole = [p for p, s in scopes.items() if s.whole]
    windowed = {p: s for p, s in scopes.items() if not s.whole and s.lo is not None}
    lo = min((s.lo for s in windowed.values()), default=None)
    hi = max((s.hi for s in windowed.values()), default=None)

    def in_scope(table: Any, column: Any) -> Any:
        """A superset in SQL (one window for the chunk); ``kept`` trims it per patient."""
        terms = [table.c.patient_id.in_(whole)] if whole else []
        if windowed:
            terms.append(and_(table.c.patient_id.in_(windowed), column >= lo, column < hi))
        return or_(false(), *terms)

    def kept(rows: Iterable[Row[Any]], time_of: Callable[[Any], datetime]) -> list[Row[Any]]:
        return [r for r in rows if scopes[r.patient_id].contains(time_of(r))]

    records_t, registration = TreatmentRecord.__table__, Registration.__table__
    records = _by_patient(
        kept(
            session.execute(
                select(records_t).where(
                    in_scope(records_t, records_t.c.started_at), records_t.c.delivered.is_(True)
                )
            ),
            lambda r: r.started_at,
        )
    )
    sessions = _by_patient(
        kept(
            session.execute(select(imaging).where(in_scope(imaging, imaging.c.acquired_at))),
            lambda r: r.acquired_at,
        )
    )
    in_scope_series = {s.series_uid for rows in sessions.values() for s in rows}
    # Registrations on the scope's days, and those naming its series from another day (two
    # queries: an OR of the two would defeat the indexes).
    links = RegistrationSeries.__table__
    on_days = session.execute(
        select(registration).where(in_scope(registration, registration.c.content_at))
    )
    naming = session.execute(
        select(registration)
        .join(links, links.c.sop_uid == registration.c.sop_uid)
        .where(links.c.series_uid.in_(in_scope_series))
    )
    registrations = _by_patient(
        {
            r.sop_uid: r
            for r in (*on_days, *naming)
            if r.patient_id in scopes
            and (
                scopes[r.patient_id].contains(r.content_at)
                or not in_scope_series.isdisjoint(r.moving_series)
            )
        }.values()
    )
    missing = {
        s for rows in registrations.values() for r in rows for s in r.moving_series
    } - in_scope_series
    named_sessions = _by_patient(
        session.execute(select(imaging).where(imaging.c.series_uid.in_(missing))) if missing else ()
    )

    in_scope_ids: dict[str, list[int]] = {}
    previous_ids: dict[str, int] = {}
    for patient_id, scope in scopes.items():
        inside = [f for f in timeline[patient_id] if scope.overlaps(f.treated_at, f.ended_at)]
        in_scope_ids[patient_id] = [f.id for f in inside]
        if not scope.whole and scope.lo is not None:
            before = [
                f
                for f in timeline[patient_id]
                if f.treated_at < scope.lo and not scope.overlaps(f.treated_at, f.ended_at)
            ]
            if before:
                previous_ids[patient_id] = max(before, key=lambda f: (f.treated_at, f.key)).id
    wanted = [i for ids in in_scope_ids.values() for i in ids] + list(previous_ids.values())
    orm = {f.id: f for f in session.scalars(select(Fraction).where(Fraction.id.in_(wanted)))}
    reviews: dict[int, list[Any]] = defaultdict(list)
    for r in session.execute(select(review).where(review.c.fraction_id.in_(wanted))):
        reviews[r.fraction_id].append(r)
    # Adopted approvals on the scope's fractions (not the previous fractions': their images
    # are outside the scope), and wherever the scope's images' approvals are now.
    approvals: dict[str, dict[str, Row[Any]]] = defaultdict(dict)
    for patient_id, ids in in_scope_ids.items():
        for r in (r for i in ids for r in reviews[i] if r.source == APPROVAL):
            approvals[patient_id][r.source_ref] = r
    patient_of_ref = {
        a["sop_instance_uid"]: patient_id
        for patient_id, rows in sessions.items()
        for s in rows
        for a in s.approvals
    }
    if patient_of_ref:
        for r in session.execute(
            select(review).where(
                review.c.source == APPROVAL, review.c.source_ref.in_(patient_of_ref)
            )
        ):
            approvals[patient_of_ref[r.source_ref]][r.source_ref] = r
    plan = Plan.__table__
    return _Loaded(
        scopes=scopes,
        timeline=timeline,
        records=records,
        sessions=sessions,
        named_sessions=named_sessions,
        registrations=registrations,
        plans={
            p: {row.plan_uid: row for row in rows}
            for p, rows in _by_patient(
                session.execute(select(plan).where(plan.c.patient_id.in_(patient_ids)))
            ).items()
        },
        fractions={p: [orm[i] for i in ids] for p, ids in in_scope_ids.items()},
        previous={p: orm[i] for p, i in previous_ids.items()},
        reviews=reviews,
        approvals=approvals,
    )


class Rebuilder:
    def __init__(
        self,
        *,
        policy: domain.ReviewPolicy,
        imaging_devices: dict[str, str],
        clock: Callable[[], datetime],
        on_review: OnReview,
    ) -> None:
        self._policy = policy
        self._devices = imaging_devices
        self._now = clock
        self._on_review = on_review

    def rebuild(
        self, session: Session, scopes: dict[str, Scope], *, reassess: bool = False
    ) -> None:
        """Recompute the fractions in each patient's scope. ``reassess`` applies the rules
        even to fractions whose facts did not change (after a policy change)."""
        # The recorded facts first; then reads would flush every fraction change before each
        # query, so the rest flushes once, at commit.
        session.flush()
        with session.no_autoflush:
            ordered = sorted(scopes)
            for start in range(0, len(ordered), CHUNK):
                chunk = {p: scopes[p] for p in ordered[start : start + CHUNK]}
                loaded = _load(session, chunk, self._policy.calendar.zone)
                for patient_id in chunk:
                    self._patient(session, patient_id, loaded, reassess)
                loaded.write_matches(session)

    def _patient(self, session: Session, patient_id: str, loaded: _Loaded, reassess: bool) -> None:
        zone = self._policy.calendar.zone
        grouped: dict[str, list[Row[Any]]] = defaultdict(list)
        for record in loaded.records[patient_id]:
            for key in fraction_keys(record):
                grouped[key].append(record)
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
        sessions = loaded.sessions[patient_id]
        imaging = [
            domain.ImagingSession(s.series_uid, patient_id, s.machine, s.acquired_at)
            for s in sessions
        ]
        session_of = domain.match_imaging(treated, imaging, zone=zone, same_machine=self._devices)
        registrations = loaded.registrations[patient_id]
        reg_of = domain.match_registrations(
            [
                domain.Match(r.sop_uid, patient_id, r.machine, r.content_at, tuple(r.moving_series))
                for r in registrations
            ],
            imaging
            + [
                domain.ImagingSession(s.series_uid, patient_id, s.machine, s.acquired_at)
                for s in loaded.named_sessions[patient_id]
            ],
            zone=zone,
        )
        loaded.match(ImagingSession, "fraction_key", sessions, session_of)
        loaded.match(Registration, "session_uid", registrations, reg_of)
        scope = loaded.scopes[patient_id]
        outside = [
            domain.TreatedFraction(f.key, patient_id, None, f.treated_at, f.ended_at)
            for f in loaded.timeline[patient_id]
            if not scope.overlaps(f.treated_at, f.ended_at) and f.key not in grouped
        ]
        next_start = domain.next_fraction_starts(treated + outside)
        plans = loaded.plans.get(patient_id, {})
        stored = {f.key: f for f in loaded.fractions[patient_id]}
        fractions: dict[str, Fraction] = {}
        changed: set[str] = set()
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
            fraction = stored.pop(t.key, None)
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
                changed.add(t.key)
            elif any([_set(fraction, name, value) for name, value in values.items()]):
                changed.add(t.key)
            fractions[t.key] = fraction
        reviews = {
            key: [r for r in loaded.reviews.get(f.id, []) if r.source != APPROVAL]  # type: ignore[arg-type]
            for key, f in fractions.items()
        }
        placed = self._place_approvals(session, patient_id, session_of, fractions, reviews, loaded)
        changed |= {key for key, _ in placed}
        for key, fraction in fractions.items():
            # The verdict depends only on these values and the reviews, not on the clock:
            # unchanged inputs, unchanged verdict.
            if key in changed or reassess:
                self._assess(fraction, reviews[key])
        # After the verdict: the event carries the fraction's due time and override need.
        for key, review in placed:
            if review is not None:
                self._on_review(session, fractions[key], review)
        previous = loaded.previous.get(patient_id)
        if previous is not None and (
            _set(previous, "next_fraction_at", next_start.get(previous.key)) or reassess
        ):
            self._assess(previous, loaded.reviews.get(previous.id, []))
        for gone in stored.values():  # e.g. a record revision renumbered its fraction
            # Its adopted approvals went with their images; reviews documented through the
            # API keep it.
            if not any(r.source != APPROVAL for r in loaded.reviews.get(gone.id, [])):
                session.delete(gone)

    def _assess(self, fraction: Fraction, reviews: Sequence[Any]) -> None:
        assess_fraction(fraction, reviews, policy=self._policy, now=self._now())

    def _place_approvals(
        self,
        session: Session,
        patient_id: str,
        session_of: dict[str, str],
        fractions: dict[str, Fraction],
        reviews: dict[str, list[Any]],
        loaded: _Loaded,
    ) -> list[tuple[str, Any]]:
        """An RT Image approved in the OIS (Approval Status with reviewer and time) is an
        opportunistic review of the fraction its image prepared. Later facts can move the
        image to another fraction, or to none: the review follows it, or goes. Adds each
        fraction's approvals to ``reviews``; returns the fractions whose reviews changed,
        each with the review it gained (to announce), or None where it lost one."""
        wanted: dict[str, tuple[str, dict[str, Any]]] = {}
        for s in loaded.sessions[patient_id]:
            key = session_of.get(s.series_uid)
            for a in s.approvals:
                if key is not None and a.get("status") == "APPROVED" and a.get("reviewed_at"):
                    wanted.setdefault(a["sop_instance_uid"], (key, a))
        key_of = {f.id: f.key for f in loaded.fractions[patient_id]}
        placed: list[tuple[str, Any]] = []
        for ref, row in loaded.approvals.get(patient_id, {}).items():
            was = key_of.get(row.fraction_id)
            target = wanted.pop(ref, None)
            if target is None:  # its image prepares no fraction now
                session.execute(delete(Review).where(Review.id == row.id))
                if was is not None:
                    placed.append((was, None))
                continue
            key = target[0]
            fraction = fractions[key]
            if fraction.id is None:
                session.flush()  # the review needs its fraction's id
            if row.fraction_id != fraction.id:
                session.execute(
                    update(Review).where(Review.id == row.id).values(fraction_id=fraction.id)
                )
                placed.append((key, row))
                if was is not None:
                    placed.append((was, None))
            reviews[key].append(row)
        for ref, (key, approval) in wanted.items():
            fraction = fractions[key]
            if fraction.id is None:
                session.flush()
            review = Review(
                fraction_id=fraction.id,
                decision="approved",
                comment=None,
                override_reason=None,
                reviewed_at=datetime.fromisoformat(approval["reviewed_at"]),
                physician=approval.get("reviewer_name") or "unknown",
                recorded_at=self._now(),
                source=APPROVAL,
                source_ref=ref,
            )
            session.add(review)
            session.flush()
            reviews[key].append(review)
            placed.append((key, review))
        return placed


def _number_of(key: str) -> int | None:
    last = key.rsplit("|", 1)[-1]
    return int(last) if last else None


def _set(row: object, name: str, value: object) -> bool:
    """Assign only a changed value, so an unchanged row is not written; True if changed."""
    if getattr(row, name) == value:
        return False
    setattr(row, name, value)
    return True
