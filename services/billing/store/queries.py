"""The billing service's queries: keyword-only functions that never commit."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.billing.assemble import StoredFact
from services.billing.intake import FactIn
from services.billing.store.tables import (
    ChargeRow,
    Course,
    CourseClosure,
    CourseKindRow,
    Fact,
    PatientGeneration,
)
from shared.errors import RuleViolation
from shared.pagination import after, decode_cursor, encode_cursor

# Patients per transaction when many are re-evaluated (the sweep, a rules change).
CHUNK = 200
# Values per ``IN (...)`` list: under SQLite's and PostgreSQL's bound-parameter limits.
IN_CHUNK = 500


class FactHead(NamedTuple):
    """A stored fact without its payload (which a parse cache may make unnecessary)."""

    kind: str
    key: str
    revision: int
    event_id: str
    event_time: datetime


def add_facts(session: Session, facts: Sequence[FactIn]) -> list[tuple[str, FactHead]]:
    """Store facts not held yet; (patient, head) of each one stored (a fact held before, or
    a revision held under another event id, is not among them)."""
    if not facts:
        return []
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
    c = table.c
    stmt = (
        insert(table)
        .on_conflict_do_nothing()  # type: ignore[attr-defined]
        .returning(c.patient_id, c.kind, c.key, c.revision, c.event_id, c.event_time)
    )
    return [(patient_id, FactHead(*rest)) for patient_id, *rest in session.execute(stmt, rows)]


def raise_generations(session: Session, patient_ids: Collection[str]) -> dict[str, int]:
    """Raise each patient's generation (``PatientGeneration``), inserting it at 1; the new
    values. In sorted order, one statement per chunk: on PostgreSQL the row locks it takes
    serialize the writers of one patient until commit (two batches never deadlock on them);
    SQLite has one writer at a time anyway."""
    out: dict[str, int] = {}
    if not patient_ids:
        return out
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = PatientGeneration.__table__
    for chunk in _chunks(patient_ids):
        stmt = insert(table).values([{"patient_id": p, "generation": 1} for p in chunk])
        stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=[table.c.patient_id],
            set_={"generation": table.c.generation + 1},
        ).returning(table.c.patient_id, table.c.generation)
        out.update((p, g) for p, g in session.execute(stmt))
    return out


def facts_of(session: Session, *, patient_id: str) -> list[StoredFact]:
    rows = session.execute(
        select(Fact.kind, Fact.key, Fact.revision, Fact.event_id, Fact.event_time, Fact.payload)
        .where(Fact.patient_id == patient_id)
        .order_by(Fact.kind, Fact.key, Fact.revision)
    )
    return [StoredFact(*row) for row in rows]


# ---------------------------------------------------------------- a batch of patients at once
#
# An evaluation reads everything of the batch's patients with one query per table (``IN``
# lists chunked) and writes once: the set-based shape of the QA tracker's ``apply_batch``.


def _chunks(values: Collection[str]) -> Iterator[list[str]]:
    ordered = sorted(values)
    for start in range(0, len(ordered), IN_CHUNK):
        yield ordered[start : start + IN_CHUNK]


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


class ChargeHead(NamedTuple):
    """What an evaluation compares a stored charge by: the rest of the row is read
    (``charge_rows``) only for a charge that is voided or removed, so the JSON columns of the
    unchanged many stay unread."""

    id: str
    patient_id: str
    digest: str
    removed: bool
    exported: bool
    status: str
    revision: int


def charges_of_many(
    session: Session, patient_ids: Collection[str]
) -> dict[str, dict[str, ChargeHead]]:
    """The patients' charges (``ChargeHead``), by patient then id."""
    table = ChargeRow.__table__
    cols = [table.c[c] for c in ChargeHead._fields]
    out: dict[str, dict[str, ChargeHead]] = defaultdict(dict)
    for chunk in _chunks(patient_ids):
        rows = session.execute(select(*cols).where(table.c.patient_id.in_(chunk)))
        for row in rows.tuples():
            head = ChargeHead(*row)
            out[head.patient_id][head.id] = head
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
    """Ready charges not exported yet, oldest first; locked in id order."""
    query = _exportable(where)
    rows = session.scalars(query.order_by(ChargeRow.id).with_for_update())
    return sorted(rows, key=lambda r: (r.service_date, r.id))


def exportable_patients(session: Session, where: ChargeFilter) -> list[str]:
    """The patients ``charges_to_export`` would give charges of now (not locked)."""
    query = _exportable(where).with_only_columns(ChargeRow.patient_id).distinct()
    return list(session.scalars(query))


def _exportable(where: ChargeFilter) -> Select[tuple[ChargeRow]]:
    return _charges(where).where(ChargeRow.status == "ready", ChargeRow.exported.is_(False))


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
