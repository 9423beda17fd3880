"""The queries the REST API and the sweeps read; the overdue rule comes from ``overdue``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from services.qa_tracker import domain
from services.qa_tracker.overdue import overdue_sql, status_is_sql, status_sql
from services.qa_tracker.store.tables import Fraction, ImagingSeries, Registration, ReviewRow
from shared.errors import RuleViolation
from shared.pagination import decode_cursor, encode_cursor, page_of
from shared.ui.filters import person_name

ORDER = (Fraction.treated_at, Fraction.id)  # newest first; the id breaks ties


def fraction_status(now: datetime) -> ColumnElement[str]:
    """A fraction's status at ``now``, in SQL."""
    return status_sql(Fraction.review_status, Fraction.due_at, now)


def fraction_has_status(status: str, now: datetime) -> ColumnElement[bool]:
    return status_is_sql(Fraction.review_status, Fraction.due_at, status, now)


@dataclass(frozen=True)
class FractionFilter:
    patient_id: str | None = None
    treated_from: datetime | None = None
    treated_to: datetime | None = None
    status: str | None = None
    machine: str | None = None


def fraction_page(
    session: Session, where: FractionFilter, *, now: datetime, cursor: str | None, limit: int
) -> tuple[list[Fraction], str | None]:
    """One page of fractions, newest first, and the next page's cursor (None on the last)."""
    query = select(Fraction)
    if where.patient_id:
        query = query.where(Fraction.patient_id == where.patient_id)
    if where.treated_from:
        query = query.where(Fraction.treated_at >= where.treated_from)
    if where.treated_to:
        query = query.where(Fraction.treated_at < where.treated_to)
    if where.status:
        query = query.where(fraction_has_status(where.status, now))
    if where.machine:
        query = query.where(Fraction.machine == where.machine)
    return page_of(session, query, ORDER, cursor=cursor, limit=limit)


@dataclass(frozen=True)
class FractionEvidence:
    imaging: Sequence[ImagingSeries]
    registrations: Sequence[Registration]
    reviews: Sequence[ReviewRow]


def evidence_of(session: Session, fraction: Fraction) -> FractionEvidence:
    """The imaging matched to a fraction, the registrations of that imaging, its reviews."""
    imaging = session.scalars(
        # Matches never cross patients: the patient's (patient, time) indexes find them.
        select(ImagingSeries).where(
            ImagingSeries.patient_id == fraction.patient_id,
            ImagingSeries.fraction_key == fraction.key,
        )
    ).all()
    registrations = session.scalars(
        select(Registration).where(
            Registration.patient_id == fraction.patient_id,
            Registration.session_uid.in_([s.series_uid for s in imaging]),
        )
    ).all()
    return FractionEvidence(imaging, registrations, reviews_of(session, fraction.id))


def reviews_of(session: Session, fraction_id: int) -> Sequence[ReviewRow]:
    return session.scalars(
        select(ReviewRow)
        .where(ReviewRow.fraction_id == fraction_id)
        .order_by(ReviewRow.reviewed_at)
    ).all()


def summary_rows(
    session: Session,
    *,
    start: datetime,
    end: datetime,
    now: datetime,
    machine: str | None = None,
    physician: str | None = None,
) -> list[domain.SummaryRow]:
    """Fractions treated in [start, end) counted in the database, grouped by everything the
    tally tells apart: the cost does not grow with the department's size."""
    status = fraction_status(now)
    groups = (
        Fraction.machine,
        Fraction.physician,
        status,
        Fraction.override_required,
        Fraction.override_documented,
    )
    query = (
        select(*groups, func.count())
        .where(Fraction.treated_at >= start, Fraction.treated_at < end)
        .group_by(*groups)
    )
    if machine:
        query = query.where(Fraction.machine == machine)
    if physician:
        query = query.where(Fraction.physician == physician)
    return [
        domain.SummaryRow(m, p, domain.ReviewStatus(s), required, documented, n)
        for m, p, s, required, documented, n in session.execute(query)
    ]


def flagged_fractions(session: Session, now: datetime) -> Sequence[Fraction]:
    """Fractions with an open problem: overdue, an override required but not documented, or
    a rejected review without a later approval; oldest first."""
    return session.scalars(
        select(Fraction)
        .where(
            fraction_has_status("overdue", now)
            | (Fraction.override_required.is_(True) & Fraction.override_documented.is_(False))
            | Fraction.rejected.is_(True)
        )
        .order_by(Fraction.treated_at, Fraction.id)
    ).all()


def overdue_unnotified(session: Session, now: datetime, *, limit: int) -> Sequence[Fraction]:
    """Imaged fractions past due without a review, whose overdue event was not sent yet."""
    return session.scalars(
        select(Fraction)
        .where(
            overdue_sql(Fraction.review_status, Fraction.due_at, now),
            Fraction.imaged.is_(True),
            Fraction.overdue_notified.is_(False),
        )
        .limit(limit)
    ).all()


def overdue_count(session: Session, now: datetime) -> int:
    """Reviews overdue at ``now`` (a gauge operators alert on)."""
    query = select(func.count()).select_from(Fraction).where(fraction_has_status("overdue", now))
    return session.scalar(query) or 0


# WORKLIST_ORDER, as the docstrings below name it: due time (none last), then treated time,
# then id. Overdue comes first, since a pending review is overdue once its due time passed.


@dataclass(frozen=True)
class WorklistPage:
    """One page of the worklist and the counts of the whole filtered worklist."""

    fractions: Sequence[Fraction]
    next_cursor: str | None  # None on the last page
    total: int  # every fraction to review, not only this page's
    overdue: int  # of ``total``
    after: int  # beyond this page (the next pages')


def worklist_page(
    session: Session,
    physicians: Sequence[str] | None,
    *,
    now: datetime,
    cursor: str | None,
    limit: int,
) -> WorklistPage:
    """Imaged fractions without a review, overdue first, then due soonest (a pending review is
    overdue once its due time passed, so the due time orders both; no due time last, then the
    treatment time, the id breaking ties); ``physicians`` None: all. Keyset paging: ``cursor``
    names the last row shown, so a page starts where the previous one stopped even when rows
    were reviewed meanwhile. A cursor this worklist did not give is a ``RuleViolation``."""
    where = [
        Fraction.imaged.is_(True),
        Fraction.review_status == domain.ReviewStatus.PENDING.value,
    ]
    if physicians is not None:
        where.append(Fraction.physician.in_(physicians))
    rows = _worklist_rows(session, where, _worklist_key(cursor) if cursor else None, limit + 1)
    page = rows[:limit]
    last = page[-1] if len(rows) > limit else None  # the row the next page starts after
    # The whole worklist, its overdue, what follows this page: each a range of the worklist's
    # indexes, counted there (one COUNT with a CASE per row read every row's columns).
    total = _count(session, where)
    overdue = _count(session, [*where, Fraction.due_at < now])
    if last is None:
        after = 0
    elif cursor is None:  # the first page is the worklist's first rows
        after = total - len(page)
    else:
        after = _count_after(session, where, last)
    return WorklistPage(page, _worklist_cursor(last) if last else None, total, overdue, after)


def _count_after(session: Session, where: list[ColumnElement[bool]], last: Fraction) -> int:
    """Rows after ``last`` in ``WORKLIST_ORDER``, as index ranges (an OR over the key is not
    one)."""
    later = or_(
        Fraction.treated_at > last.treated_at,
        and_(Fraction.treated_at == last.treated_at, Fraction.id > last.id),
    )
    no_due = Fraction.due_at.is_(None)
    if last.due_at is None:
        return _count(session, [*where, no_due, later])
    return (
        _count(session, [*where, Fraction.due_at > last.due_at])
        + _count(session, [*where, Fraction.due_at == last.due_at, later])
        + _count(session, [*where, no_due])
    )


def _count(session: Session, where: list[ColumnElement[bool]]) -> int:
    return session.scalar(select(func.count()).select_from(Fraction).where(*where)) or 0


def _worklist_rows(
    session: Session,
    where: list[ColumnElement[bool]],
    after: tuple[datetime | None, datetime, int] | None,
    limit: int,
) -> list[Fraction]:
    """``WORKLIST_ORDER`` as two queries, fractions with a due time, then those without, each
    in the order of the index ``ix_fraction_worklist``: the database reads one page, instead of
    sorting every open fraction (150,000 in a year's benchmark) on each load."""
    rows: list[Fraction] = []
    if after is None or after[0] is not None:
        query = select(Fraction).where(*where, Fraction.due_at.is_not(None))
        if after is not None:
            query = query.where(Fraction.due_at >= after[0], _worklist_after(*after))
        order = (Fraction.due_at, Fraction.treated_at, Fraction.id)
        rows.extend(session.scalars(query.order_by(*order).limit(limit)))
    if len(rows) < limit:
        query = select(Fraction).where(*where, Fraction.due_at.is_(None))
        if after is not None and after[0] is None:
            query = query.where(_worklist_after(*after))
        order = (Fraction.treated_at, Fraction.id)
        rows.extend(session.scalars(query.order_by(*order).limit(limit - len(rows))))
    return rows


def _worklist_cursor(last: Fraction) -> str:
    if last.due_at is None:  # two values: after it come only fractions without a due time
        return encode_cursor([last.treated_at, last.id])
    return encode_cursor([last.due_at, last.treated_at, last.id])


def _worklist_key(cursor: str) -> tuple[datetime | None, datetime, int]:
    try:
        due, treated, fraction_id = decode_cursor(cursor, (datetime, datetime, int))
    except RuleViolation:
        treated, fraction_id = decode_cursor(cursor, (datetime, int))  # no due time
        return None, treated, fraction_id
    return due, treated, fraction_id


def _worklist_after(
    due: datetime | None, treated: datetime, fraction_id: int
) -> ColumnElement[bool]:
    """Rows after (due, treated, id) in ``WORKLIST_ORDER``."""
    later = or_(
        Fraction.treated_at > treated,
        and_(Fraction.treated_at == treated, Fraction.id > fraction_id),
    )
    if due is None:
        return and_(Fraction.due_at.is_(None), later)
    return or_(
        Fraction.due_at.is_(None),
        Fraction.due_at > due,
        and_(Fraction.due_at == due, later),
    )


def physician_names(session: Session, names: Sequence[str]) -> list[str]:
    """The fractions' physicians (DICOM person names) that are one of ``names``: a DICOM name
    ("Oncologist^Olga") or a name as people write it ("Olga Oncologist")."""
    wanted = set(names)
    known = session.scalars(select(Fraction.physician).distinct()).all()
    return sorted(n for n in known if n and (n in wanted or person_name(n) in wanted))


def weekly_rows(
    session: Session, weeks: Sequence[tuple[str, datetime, datetime]], *, now: datetime
) -> list[tuple[str, domain.SummaryRow]]:
    """Fractions treated in each of ``weeks`` ((name, start, end), in order, contiguous),
    counted in SQL by what the tally tells apart: a few hundred rows for a year of a busy
    department instead of one per fraction. The weeks' bounds are the clinic zone's Monday
    midnights as UTC instants, computed by the caller, since week functions differ between
    SQLite and PostgreSQL (and a zone's weeks move with its DST changes)."""
    if not weeks:
        return []
    week = case(
        *((Fraction.treated_at < end, index) for index, (_, _, end) in enumerate(weeks)),
        else_=None,
    ).label("week")
    status = fraction_status(now).label("status")
    keys = (
        week,
        Fraction.machine,
        Fraction.physician,
        status,
        Fraction.override_required,
        Fraction.override_documented,
    )
    query = (
        select(*keys, func.count())
        .where(Fraction.treated_at >= weeks[0][1], Fraction.treated_at < weeks[-1][2])
        .group_by(*keys)
    )
    return [
        (weeks[w][0], domain.SummaryRow(m, p, domain.ReviewStatus(st), req, doc, count))
        for w, m, p, st, req, doc, count in session.execute(query)
        if w is not None
    ]
