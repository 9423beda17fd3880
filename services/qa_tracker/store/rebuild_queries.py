"""What a rebuild reads for a chunk of patients, with one query per table.

Facts are plain rows (only read, and several times cheaper to load than ORM objects); the
fractions in scope, and each patient's previous one, are ORM objects the rebuild updates in
place.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Row, and_, false, or_, select, union
from sqlalchemy.orm import Session

from services.qa_tracker.scope import Scope, arrived_series, named_series, split_timeline, widen
from services.qa_tracker.store.tables import (
    Fraction,
    FractionRevision,
    ImagingSeries,
    Plan,
    Registration,
    RegistrationSeries,
    ReviewRow,
    TreatmentRecord,
)

APPROVAL = "dicom_approval"  # ReviewRow.source of a review adopted from an RT Image approval


@dataclass
class Loaded:
    """A chunk of patients' facts and stored fractions, by patient."""

    scopes: dict[str, Scope]
    timeline: dict[str, list[Row[Any]]]  # every stored fraction's id, key and span
    records: dict[str, list[Row[Any]]]
    sessions: dict[str, list[Row[Any]]]
    named_sessions: dict[str, list[Row[Any]]]  # outside the scope, named by a registration
    registrations: dict[str, list[Row[Any]]]
    plans: dict[str, dict[str, Row[Any]]]
    fractions: dict[str, list[Fraction]]
    previous: dict[str, Fraction]
    reviews: dict[int, list[Any]]  # by fraction id
    # Reviews adopted from RT Image approvals, by patient and RT Image SOP UID: those of the
    # scope's images and those on the scope's fractions.
    approvals: dict[str, dict[str, Row[Any]]]


def by_patient(rows: Iterable[Any]) -> defaultdict[str, list[Any]]:
    grouped: defaultdict[str, list[Any]] = defaultdict(list)
    for row in rows:
        grouped[row.patient_id].append(row)
    return grouped


def load_chunk(session: Session, scopes: dict[str, Scope], zone: ZoneInfo) -> Loaded:
    patient_ids = list(scopes)
    imaging, fraction, review = ImagingSeries.__table__, Fraction.__table__, ReviewRow.__table__
    registration, links = Registration.__table__, RegistrationSeries.__table__
    named, arrived = named_series(scopes), arrived_series(scopes)
    timeline = by_patient(
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
    widen(
        scopes,
        named_days=session.execute(
            select(imaging.c.patient_id, imaging.c.acquired_at).where(
                imaging.c.series_uid.in_(named)
            )
        )
        if named
        else (),
        matched_before=session.execute(
            select(registration.c.patient_id, registration.c.content_at, imaging.c.acquired_at)
            .join(links, links.c.sop_uid == registration.c.sop_uid)
            .outerjoin(imaging, imaging.c.series_uid == registration.c.session_uid)
            .where(links.c.series_uid.in_(arrived))
        )
        if arrived
        else (),
        timeline=timeline,
        zone=zone,
    )

    whole = [p for p, s in scopes.items() if s.whole]
    windowed = {p: s for p, s in scopes.items() if s.windowed}
    lo = min((s.lo for s in windowed.values()), default=None)  # type: ignore[type-var]
    hi = max((s.hi for s in windowed.values()), default=None)  # type: ignore[type-var]

    def in_scope(table: Any, column: Any) -> Any:
        """A superset in SQL (one window for the chunk); ``kept`` trims it per patient."""
        terms = [table.c.patient_id.in_(whole)] if whole else []
        if windowed:
            terms.append(and_(table.c.patient_id.in_(windowed), column >= lo, column < hi))
        return or_(false(), *terms)

    def kept(rows: Iterable[Row[Any]], time_of: Callable[[Any], datetime]) -> list[Row[Any]]:
        return [r for r in rows if scopes[r.patient_id].contains(time_of(r))]

    records_t = TreatmentRecord.__table__
    records = by_patient(
        kept(
            session.execute(
                select(records_t).where(
                    in_scope(records_t, records_t.c.started_at), records_t.c.delivered.is_(True)
                )
            ),
            lambda r: r.started_at,
        )
    )
    sessions = by_patient(
        kept(
            session.execute(select(imaging).where(in_scope(imaging, imaging.c.acquired_at))),
            lambda r: r.acquired_at,
        )
    )
    in_scope_series = {s.series_uid for rows in sessions.values() for s in rows}
    # Registrations on the scope's days, and those naming its series from another day (two
    # queries: an OR of the two would defeat the indexes).
    on_days = session.execute(
        select(registration).where(in_scope(registration, registration.c.content_at))
    )
    naming = session.execute(
        select(registration)
        .join(links, links.c.sop_uid == registration.c.sop_uid)
        .where(links.c.series_uid.in_(in_scope_series))
    )
    registrations = by_patient(
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
    named_sessions = by_patient(
        session.execute(select(imaging).where(imaging.c.series_uid.in_(missing))) if missing else ()
    )

    in_scope_ids: dict[str, list[int]] = {}
    previous_ids: dict[str, int] = {}
    for patient_id, scope in scopes.items():
        inside, previous = split_timeline(scope, timeline[patient_id])
        in_scope_ids[patient_id] = [f.id for f in inside]  # type: ignore[attr-defined]
        if previous is not None:
            previous_ids[patient_id] = previous.id  # type: ignore[attr-defined]
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
    return Loaded(
        scopes=scopes,
        timeline=timeline,
        records=records,
        sessions=sessions,
        named_sessions=named_sessions,
        registrations=registrations,
        plans={
            p: {row.plan_uid: row for row in rows}
            for p, rows in by_patient(
                session.execute(select(plan).where(plan.c.patient_id.in_(patient_ids)))
            ).items()
        },
        fractions={p: [orm[i] for i in ids] for p, ids in in_scope_ids.items()},
        previous={p: orm[i] for p, i in previous_ids.items()},
        reviews=reviews,
        approvals=approvals,
    )


def revisions_of(session: Session, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Fraction key -> (revision, digest) last published, for those of ``keys`` published."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    t = FractionRevision.__table__
    rows = session.execute(select(t.c.key, t.c.revision, t.c.digest).where(t.c.key.in_(wanted)))
    return {key: (revision, digest) for key, revision, digest in rows}


def patients_with_facts(session: Session) -> list[str]:
    """Every patient any recorded fact names, or with a stored fraction."""
    tables: Mapping[str, Any] = {
        "records": TreatmentRecord.__table__,
        "imaging": ImagingSeries.__table__,
        "registrations": Registration.__table__,
        "plans": Plan.__table__,
        "fractions": Fraction.__table__,
    }
    query = union(*(select(t.c.patient_id) for t in tables.values()))
    return sorted(session.scalars(select(query.subquery().c.patient_id)))
