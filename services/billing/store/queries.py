"""The billing service's queries: keyword-only functions that never commit."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, Select, bindparam, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.billing.assemble import StoredFact
from services.billing.intake import FactIn
from services.billing.store.tables import ChargeRow, Course, CourseClosure, CourseKindRow, Fact
from shared.errors import RuleViolation
from shared.pagination import after, decode_cursor, encode_cursor

# Patients per transaction when many are re-evaluated (the sweep, a rules change).
CHUNK = 200
# Values per ``IN (...)`` list: under SQLite's and PostgreSQL's bound-parameter limits.
IN_CHUNK = 500


def add_facts(session: Session, facts: Sequence[FactIn]) -> set[str]:
    """Store facts not held yet; the patients whose facts changed."""
    if not facts:
        return set()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    table = Fact.__table__
    rows = [
        {
            "kind": f.kind,
            "key": f.key,
            "revision": f.revision,
            "patient_id": f.patient_id,
            "event_id": f.event_id,
            "event_time": f.event_time,
            "payload": f.payload,
        }
        for f in {(f.kind, f.key, f.revision): f for f in facts}.values()
    ]
    stmt = insert(table).on_conflict_do_nothing().returning(table.c.patient_id)  # type: ignore[attr-defined]
    return set(session.scalars(stmt, rows))


def facts_of(session: Session, *, patient_id: str) -> list[StoredFact]:
    rows = session.execute(
        select(Fact.kind, Fact.key, Fact.revision, Fact.event_id, Fact.event_time, Fact.payload)
        .where(Fact.patient_id == patient_id)
        .order_by(Fact.kind, Fact.key, Fact.revision)
    )
    return [StoredFact(*row) for row in rows]


def closures_of(session: Session, *, patient_id: str) -> list[CourseClosure]:
    return list(
        session.scalars(
            select(CourseClosure)
            .where(CourseClosure.patient_id == patient_id)
            .order_by(CourseClosure.id)
        )
    )


def kinds_of(session: Session, *, patient_id: str) -> dict[str, CourseKindRow]:
    """The kinds staff confirmed for the patient's courses, by course id."""
    return {
        k.course_id: k
        for k in session.scalars(
            select(CourseKindRow).where(CourseKindRow.patient_id == patient_id)
        )
    }


def courses_of(session: Session, *, patient_id: str) -> dict[str, Course]:
    return {c.id: c for c in session.scalars(select(Course).where(Course.patient_id == patient_id))}


def lock_patient(session: Session, *, patient_id: str) -> None:
    """Serialize the evaluations of one patient until the transaction ends (PostgreSQL; SQLite
    serializes every write transaction anyway). Replicas share the consumer and on an older
    NATS each subject has a durable of its own, so two batches may touch one patient at once:
    the second then evaluates after the first committed, over every fact of both."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"billing:{patient_id}"},
        )


def charges_of(session: Session, *, patient_id: str) -> dict[str, ChargeRow]:
    """The patient's charges, locked (an export marking them waits, and is seen)."""
    rows = session.scalars(
        select(ChargeRow)
        .where(ChargeRow.patient_id == patient_id)
        .order_by(ChargeRow.id)
        .with_for_update()
    )
    return {c.id: c for c in rows}


# ---------------------------------------------------------------- a batch of patients at once
#
# An evaluation reads everything of the batch's patients with one query per table (``IN``
# lists chunked) and writes once: the set-based shape of the QA tracker's ``apply_batch``.


def _chunks(values: Collection[str]) -> Iterator[list[str]]:
    ordered = sorted(values)
    for start in range(0, len(ordered), IN_CHUNK):
        yield ordered[start : start + IN_CHUNK]


def lock_patients(session: Session, patient_ids: Collection[str]) -> None:
    """``lock_patient`` for many in one statement, taken in sorted order (two batches locking
    overlapping sets never deadlock)."""
    if not patient_ids or session.get_bind().dialect.name != "postgresql":
        return
    keys = [f"billing:{p}" for p in sorted(patient_ids)]
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) "
            "FROM (SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k OFFSET 0) AS s"
        ),
        {"keys": keys},
    )


class ClosureHead(NamedTuple):
    id: int
    course_id: str
    closed_on: date


def closures_of_many(
    session: Session, patient_ids: Collection[str]
) -> dict[str, list[ClosureHead]]:
    """Staff closures by patient, each patient's in id order."""
    out: dict[str, list[ClosureHead]] = defaultdict(list)
    for chunk in _chunks(patient_ids):
        rows = session.execute(
            select(
                CourseClosure.patient_id,
                CourseClosure.id,
                CourseClosure.course_id,
                CourseClosure.closed_on,
            )
            .where(CourseClosure.patient_id.in_(chunk))
            .order_by(CourseClosure.id)
        )
        for patient_id, *rest in rows:
            out[patient_id].append(ClosureHead(*rest))
    return out


def kinds_of_many(session: Session, patient_ids: Collection[str]) -> dict[str, dict[str, str]]:
    """Confirmed course kinds by patient, then course id."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for chunk in _chunks(patient_ids):
        rows = session.execute(
            select(CourseKindRow.patient_id, CourseKindRow.course_id, CourseKindRow.kind).where(
                CourseKindRow.patient_id.in_(chunk)
            )
        )
        for patient_id, course_id, kind in rows:
            out[patient_id][course_id] = kind
    return out


class FactHead(NamedTuple):
    """A stored fact without its payload (which a parse cache may make unnecessary)."""

    kind: str
    key: str
    revision: int
    event_id: str
    event_time: datetime


def fact_heads_of_many(session: Session, patient_ids: Collection[str]) -> dict[str, list[FactHead]]:
    """Each patient's facts without payloads, in (kind, key, revision) order."""
    out: dict[str, list[FactHead]] = defaultdict(list)
    for chunk in _chunks(patient_ids):
        rows = session.execute(
            select(
                Fact.patient_id, Fact.kind, Fact.key, Fact.revision, Fact.event_id, Fact.event_time
            )
            .where(Fact.patient_id.in_(chunk))
            .order_by(Fact.patient_id, Fact.kind, Fact.key, Fact.revision)
        )
        for patient_id, *rest in rows:
            out[patient_id].append(FactHead(*rest))
    return out


def fact_payloads(
    session: Session, keys: Collection[tuple[str, str, int]]
) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Payloads of the facts named by (kind, key, revision), by primary key (one query per
    kind and chunk of keys)."""
    by_kind: dict[str, set[str]] = defaultdict(set)
    for kind, key, _ in keys:
        by_kind[kind].add(key)
    wanted = set(keys)
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for kind, names in sorted(by_kind.items()):
        for chunk in _chunks(names):
            rows = session.execute(
                select(Fact.key, Fact.revision, Fact.payload).where(
                    Fact.kind == kind, Fact.key.in_(chunk)
                )
            )
            for key, revision, payload in rows:
                if (kind, key, revision) in wanted:
                    out[kind, key, revision] = payload
    return out


def course_ids_of_many(session: Session, patient_ids: Collection[str]) -> dict[str, set[str]]:
    """The ids of the courses held for each patient."""
    out: dict[str, set[str]] = defaultdict(set)
    for chunk in _chunks(patient_ids):
        rows = session.execute(
            select(Course.patient_id, Course.id).where(Course.patient_id.in_(chunk))
        )
        for patient_id, course_id in rows:
            out[patient_id].add(course_id)
    return out


def write_courses(
    session: Session,
    *,
    new: Sequence[dict[str, Any]],
    changed: Sequence[dict[str, Any]],
    gone: Collection[str],
) -> None:
    """Insert, update (executemany by id) and delete course rows: plain column dicts."""
    table = Course.__table__
    if new:
        session.execute(insert(table), list(new))
    if changed:
        columns = [c for c in changed[0] if c != "id"]
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({c: bindparam(c) for c in columns})
        )
        session.connection().execute(
            stmt, [{**{c: r[c] for c in columns}, "b_id": r["id"]} for r in changed]
        )
    for chunk in _chunks(gone):
        session.execute(delete(table).where(table.c.id.in_(chunk)))


CHARGE_COLUMNS = (
    "id",
    "patient_id",
    "course_id",
    "cpt",
    "modifiers",
    "units",
    "service_date",
    "period_start",
    "period_end",
    "status",
    "hold_reason",
    "evidence",
    "rule",
    "citation",
    "rules_version",
    "revision",
    "digest",
    "removed",
    "exported",
    "exported_at",
    "updated_at",
)


# What an evaluation compares a charge by: the rest of the row is read (``charge_rows``) only
# for a charge that is voided or removed, so the JSON columns of the unchanged many stay unread.
CHARGE_HEAD = ("id", "patient_id", "digest", "removed", "exported", "status", "revision")


def charges_of_many(
    session: Session, patient_ids: Collection[str]
) -> dict[str, dict[str, Row[Any]]]:
    """The patients' charges (``CHARGE_HEAD`` columns), by patient then id; locked in id order
    (an export marking them waits, and is seen)."""
    table = ChargeRow.__table__
    cols = [table.c[c] for c in CHARGE_HEAD]
    out: dict[str, dict[str, Row[Any]]] = defaultdict(dict)
    for chunk in _chunks(patient_ids):
        rows = session.execute(
            select(*cols)
            .where(table.c.patient_id.in_(chunk))
            .order_by(table.c.id)
            .with_for_update()
        )
        for row in rows:
            out[row.patient_id][row.id] = row
    return out


def charge_rows(session: Session, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """Whole charge rows (``CHARGE_COLUMNS``) by id, as dicts."""
    table = ChargeRow.__table__
    cols = [table.c[c] for c in CHARGE_COLUMNS]
    out: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(ids):
        for row in session.execute(select(*cols).where(table.c.id.in_(chunk))):
            out[row.id] = dict(row._mapping)
    return out


def write_charges(
    session: Session, *, new: Sequence[dict[str, Any]], changed: Sequence[dict[str, Any]]
) -> None:
    """One INSERT for the new charges and one executemany UPDATE by id for the changed ones
    (every new row a full ``CHARGE_COLUMNS`` dict; a changed one all but ``exported_at``,
    which an evaluation never changes)."""
    table = ChargeRow.__table__
    if new:
        session.execute(insert(table), list(new))
    if changed:
        columns = [c for c in CHARGE_COLUMNS if c not in ("id", "exported_at")]
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({c: bindparam(c) for c in columns})
        )
        session.connection().execute(
            stmt, [{**{c: r[c] for c in columns}, "b_id": r["id"]} for r in changed]
        )


def patients_with_open_courses(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Course.patient_id)
            .where(Course.status == "open")
            .distinct()
            .order_by(Course.patient_id)
        )
    )


def patients_with_facts(session: Session) -> list[str]:
    return list(session.scalars(select(Fact.patient_id).distinct().order_by(Fact.patient_id)))


# ---------------------------------------------------------------- what the API reads


@dataclass(frozen=True)
class ChargeFilter:
    patient_id: str | None = None
    course_id: str | None = None
    status: str | None = None
    first_day: date | None = None  # inclusive
    end_day: date | None = None  # exclusive


def _charges(where: ChargeFilter) -> Select[Any]:
    query = select(ChargeRow).where(ChargeRow.removed.is_(False))
    if where.patient_id:
        query = query.where(ChargeRow.patient_id == where.patient_id)
    if where.course_id:
        query = query.where(ChargeRow.course_id == where.course_id)
    if where.status:
        query = query.where(ChargeRow.status == where.status)
    if where.first_day:
        query = query.where(ChargeRow.service_date >= where.first_day)
    if where.end_day:
        query = query.where(ChargeRow.service_date < where.end_day)
    return query


def charge_page(
    session: Session, where: ChargeFilter, *, cursor: str | None, limit: int
) -> tuple[list[ChargeRow], str | None]:
    """Charges newest date of service first, then by id; keyset cursor (date, id)."""
    query = _charges(where).order_by(ChargeRow.service_date.desc(), ChargeRow.id.desc())
    if cursor:
        day, charge_id = decode_cursor(cursor, [str, str])
        try:
            last = date.fromisoformat(day)
        except ValueError as exc:
            raise RuleViolation("cursor is not one this API returned; start without it") from exc
        query = query.where(after([ChargeRow.service_date, ChargeRow.id], [last, charge_id]))
    rows = list(session.scalars(query.limit(limit + 1)))
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_cursor([page[-1].service_date.isoformat(), page[-1].id]) if more else None
    return page, next_cursor


def charges_to_export(session: Session, where: ChargeFilter) -> list[ChargeRow]:
    """Ready charges not exported yet, oldest first; locked in id order, as an evaluation
    locks them."""
    query = _charges(where).where(ChargeRow.status == "ready", ChargeRow.exported.is_(False))
    rows = session.scalars(query.order_by(ChargeRow.id).with_for_update())
    return sorted(rows, key=lambda r: (r.service_date, r.id))


def course_page(
    session: Session,
    *,
    patient_id: str | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Course], str | None]:
    """Courses by id, descending; keyset cursor on the id."""
    query = select(Course)
    if patient_id:
        query = query.where(Course.patient_id == patient_id)
    if status:
        query = query.where(Course.status == status)
    query = query.order_by(Course.id.desc())
    if cursor:
        (last,) = decode_cursor(cursor, [str])
        query = query.where(Course.id < last)
    rows = list(session.scalars(query.limit(limit + 1)))
    page = rows[:limit]
    return page, encode_cursor([page[-1].id]) if len(rows) > limit else None
