"""Use cases of the billing service: apply events, close a course, export charges.

A batch of events is stored as the facts they state (``intake``); then each patient whose facts
changed is evaluated again from everything stored (``assemble`` + the domain's engine), in the
same transaction: courses are regrouped, charges upserted by their deterministic id, and the
changes queued in the outbox (``rtops.billing.charge.posted`` for every new or changed charge,
``rtops.billing.charge.voided`` when an exported charge goes to hold or disappears). So the
charges never depend on the order events arrive in, and a redelivered event changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import cast
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy.orm import Session, sessionmaker

from services.billing import domain
from services.billing.assemble import (
    STEREOTACTIC_MAX_FRACTIONS,
    FactCache,
    StoredFact,
    assemble,
    hold_unconfirmed_kind,
)
from services.billing.domain import Charge, CourseEvaluation, StaffClosure
from services.billing.domain.facts import CourseKind
from services.billing.intake import fact_of
from services.billing.memo import PatientMemo, PatientMemos
from services.billing.posting import charge_fields, store_charges_of_many
from services.billing.store import (
    AuditLog,
    ChargeRow,
    Course,
    CourseClosure,
    CourseKindRow,
    ProcessedEvent,
)
from services.billing.store.queries import (
    CHUNK,
    ChargeFilter,
    FactHead,
    add_facts,
    charges_of_many,
    charges_to_export,
    closures_of_many,
    course_ids_of_many,
    exportable_patients,
    fact_heads_of_many,
    fact_payloads,
    kinds_of_many,
    patients_with_facts,
    patients_with_open_courses,
    raise_generations,
    write_courses,
)
from shared.audit import record_access
from shared.auth import Principal
from shared.errors import NotFound, RuleViolation
from shared.events import CloudEvent
from shared.outbox import claim_events

log = structlog.get_logger(__name__)
CONSUMER = "billing"


class BillingService:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        rules: domain.RuleSet,
        settings: domain.BillingSettings,
        payer: domain.Payer,
        gap_days: int = 30,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._factory = factory
        self._rules = rules
        self._settings = settings
        self._payer = payer
        self._gap_days = gap_days
        self._now = clock
        self._on_commit = on_commit
        # Stored facts parsed before, across evaluations (``assemble.FactCache``).
        self._facts = FactCache()
        # Each patient's state as its last evaluation here left it (``memo``).
        self._memos = PatientMemos()

    @property
    def rules(self) -> domain.RuleSet:
        return self._rules

    @property
    def payer(self) -> domain.Payer:
        return self._payer

    @property
    def zone(self) -> ZoneInfo:
        return self._settings.zone

    def now(self) -> datetime:
        return self._now()

    def today(self) -> date:
        """The engine's ``as_of``: today in the clinic's zone."""
        return self._now().astimezone(self.zone).date()

    # ------------------------------------------------------------ events in

    def apply(self, event: CloudEvent) -> bool:
        """Apply one event; False when it was applied before."""
        return self.apply_batch([event]) == 1

    def apply_batch(self, events: Sequence[CloudEvent]) -> int:
        """Apply events in one transaction, evaluating each affected patient once; returns how
        many were new. All or nothing: the consumer retries a failed batch one event at a
        time."""
        with self._factory.begin() as session:
            fresh = claim_events(session, ProcessedEvent, CONSUMER, [e.id for e in events])
            todo = {e.id: e for e in events if e.id in fresh}.values()
            facts = [f for f in (fact_of(e) for e in todo) if f is not None]
            payloads = {(f.kind, f.key, f.revision): f.payload for f in facts}
            added: dict[str, list[FactHead]] = {}
            for patient_id, head in add_facts(session, facts):
                added.setdefault(patient_id, []).append(head)
                # Parsed now, from the payload in hand: the evaluation needs not read it back.
                self._facts.add(StoredFact(*head, payloads[head.kind, head.key, head.revision]))
            memos = self._evaluate(session, added, added)
        self._memos.keep(memos)
        if fresh:
            self._on_commit()
        return len(fresh)

    def reevaluate(self, patients: Iterable[str] | None = None) -> int:
        """Evaluate patients again (default: every patient with facts), e.g. after the rules
        file or a setting changed; returns the number of patients."""
        with self._factory() as session:
            todo = sorted(patients) if patients is not None else patients_with_facts(session)
        self._evaluate_in_chunks(todo)
        return len(todo)

    def reevaluate_open(self) -> int:
        """The sweep: courses that are still open, evaluated as of today (a course ends after
        ``inactivity_days`` without treatment, and no event says so)."""
        with self._factory() as session:
            todo = patients_with_open_courses(session)
        self._evaluate_in_chunks(todo)
        return len(todo)

    def _evaluate_in_chunks(self, patients: Sequence[str]) -> None:
        for start in range(0, len(patients), CHUNK):
            with self._factory.begin() as session:
                memos = self._evaluate(session, patients[start : start + CHUNK])
            self._memos.keep(memos)
        if patients:
            self._on_commit()

    # ------------------------------------------------------------ staff

    def close_course(
        self,
        course_id: str,
        *,
        closed_on: date | None,
        reason: str | None,
        principal: Principal,
        resource: str,
    ) -> Course:
        """Staff end a course: its 3-4 fraction remainder is earned at this point (CMS Pub
        100-04 Ch. 13 s. 70), and treatment after it reopens the course."""
        today = self.today()
        closed_on = closed_on or today
        if closed_on > today:
            raise RuleViolation(f"closed_on {closed_on} is in the future; at the latest {today}")
        with self._factory.begin() as session:
            course = session.get(Course, course_id)
            if course is None:
                raise NotFound(f"no course {course_id!r}; GET /v1/courses lists them")
            if course.first_session and closed_on < course.first_session:
                raise RuleViolation(
                    f"closed_on {closed_on} is before the course's first session "
                    f"({course.first_session})"
                )
            patient_id = course.patient_id
            session.add(
                CourseClosure(
                    course_id=course_id,
                    patient_id=patient_id,
                    closed_on=closed_on,
                    closed_by=principal.user,
                    reason=reason,
                    recorded_at=self._now(),
                )
            )
            session.flush()
            raise_generations(session, [patient_id])  # memory no longer holds its closures
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[patient_id],
            )
            memos = self._evaluate(session, [patient_id])
            # The evaluation wrote with Core: read the row again, not the identity map's copy.
            course = session.get(Course, course_id, populate_existing=True)
            assert course is not None  # a closure never regroups
        self._memos.keep(memos)
        self._on_commit()
        return course

    def set_course_kind(
        self,
        course_id: str,
        *,
        kind: CourseKind,
        reason: str | None,
        principal: Principal,
        resource: str,
    ) -> Course:
        """Staff confirm a course's kind (DICOM has no attribute for SRS/SBRT): the course is
        evaluated again with it, so held kind-dependent charges are released under the right
        codes and exported charges that change are voided. Setting the kind it has changes
        nothing (the request is still audited)."""
        with self._factory.begin() as session:
            course = session.get(Course, course_id)
            if course is None:
                raise NotFound(f"no course {course_id!r}; GET /v1/courses lists them")
            patient_id = course.patient_id
            held = session.get(CourseKindRow, course_id)
            changed = held is None or held.kind != kind
            if held is None:
                held = CourseKindRow(course_id=course_id, patient_id=patient_id)
                session.add(held)
            if changed:
                held.kind = kind
                held.set_by = principal.user
                held.reason = reason
                held.set_at = self._now()
                session.flush()
                raise_generations(session, [patient_id])  # memory no longer holds its kinds
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[patient_id],
            )
            memos = self._evaluate(session, [patient_id]) if changed else {}
            # The evaluation wrote with Core: read the row again, not the identity map's copy.
            course = session.get(Course, course_id, populate_existing=True)
            assert course is not None  # a kind never regroups
        self._memos.keep(memos)
        if changed:
            self._on_commit()
        return course

    def export(
        self,
        where: ChargeFilter,
        *,
        principal: Principal,
        resource: str,
    ) -> list[ChargeRow]:
        """Ready charges not exported yet, marked exported in the same transaction as the
        audit row: an export is never handed out twice."""
        now = self._now()
        with self._factory.begin() as session:
            # Generations first, then the charges' locks: the order an evaluation takes them
            # in, so the two never wait on each other in a cycle. A patient whose charges
            # appeared in between is raised after (memory must not keep `exported` false).
            raised = set(exportable_patients(session, where))
            raise_generations(session, raised)
            rows = charges_to_export(session, where)
            raise_generations(session, {r.patient_id for r in rows} - raised)
            for row in rows:
                row.exported = True
                row.exported_at = now
            record_access(
                session,
                AuditLog,
                principal,
                action="export",
                resource=resource,
                patient_ids=[r.patient_id for r in rows],
            )
        return rows

    # ------------------------------------------------------------ evaluation

    def _evaluate(
        self,
        session: Session,
        patients: Iterable[str],
        added: Mapping[str, Sequence[FactHead]] | None = None,
    ) -> dict[str, PatientMemo]:
        """Evaluate the patients again in the caller's transaction, set-based: their
        generations raised (which locks them) in one statement, what memory does not hold
        read with one query per table (no autoflush between), the engine in memory, then one
        write per table and one outbox executemany. ``added``: the facts this transaction
        stored, by patient. Returns the patients' new memos, for the caller to keep once the
        transaction has committed (``PatientMemos.keep``)."""
        todo = sorted(set(patients))
        if not todo:
            return {}
        added = added or {}
        today = self.today()
        now = self._now()
        cache = self._facts
        cache.trim()
        with session.no_autoflush:
            generations = raise_generations(session, todo)
            held = {p: m for p in todo if (m := self._memos.at(p, generations[p] - 1)) is not None}
            load = [p for p in todo if p not in held]
            closures_of = closures_of_many(session, load) if load else {}
            kinds_of = kinds_of_many(session, load) if load else {}
            heads_of = fact_heads_of_many(session, load) if load else {}
            courses_of = course_ids_of_many(session, load) if load else {}
            charges_of = charges_of_many(session, load) if load else {}
            # Per patient held in memory: each course row as last written (its repr without
            # `evaluated_at`), so an evaluation that changes nothing of a course does not
            # rewrite its row (JSON columns and all).
            written: dict[str, Mapping[str, str]] = {}
            for p, memo in held.items():
                closures_of[p] = list(memo.closures)
                kinds_of[p] = dict(memo.kinds)
                # A fact stored twice in one patient's heads cannot happen: ``add_facts``
                # returns only what it inserted.
                heads_of[p] = sorted((*memo.facts, *added.get(p, ())), key=_fact_order)
                courses_of[p] = set(memo.courses)
                written[p] = memo.courses
                charges_of[p] = dict(memo.charges)
            missing = [
                (h.kind, h.key, h.revision)
                for p in todo
                for h in heads_of.get(p, ())
                if not cache.holds(h.kind, h.key, h.revision, h.event_id)
            ]
            payloads = fact_payloads(session, missing) if missing else {}
            new_courses: list[dict[str, object]] = []
            changed_courses: list[dict[str, object]] = []
            gone_courses: set[str] = set()
            evaluated: list[tuple[str, list[Charge]]] = []
            course_rows: dict[str, dict[str, str]] = {}
            for patient_id in todo:
                closures: dict[str, list[StaffClosure]] = {}
                for c in closures_of.get(patient_id, ()):
                    closures.setdefault(c.course_id, []).append(
                        StaffClosure(closed_on=c.closed_on, reference=f"closure:{c.id}")
                    )
                kinds = cast(dict[str, CourseKind], kinds_of.get(patient_id, {}))
                facts = [
                    StoredFact(
                        h.kind,
                        h.key,
                        h.revision,
                        h.event_id,
                        h.event_time,
                        payloads.get((h.kind, h.key, h.revision), _NOT_LOADED),
                    )
                    for h in heads_of.get(patient_id, ())
                ]
                assembled = assemble(
                    patient_id,
                    facts,
                    closures,
                    zone=self.zone,
                    gap_days=self._gap_days,
                    kinds=kinds,
                    stereotactic_dose_gy=self._settings.stereotactic_dose_per_fraction_gy,
                    cache=cache,
                )
                evaluations = []
                candidates: dict[str, dict[str, object] | None] = {}
                for course in assembled.courses:
                    evaluation = domain.evaluate_course(
                        course, self._rules, self._settings, self._payer, as_of=today
                    )
                    screen = assembled.screens.get(course.course_id)
                    # Beyond five sessions even a confirmed SBRT course bills as conventional.
                    if screen and evaluation.fractions_delivered > STEREOTACTIC_MAX_FRACTIONS:
                        screen = None
                    candidates[course.course_id] = screen.as_json() if screen else None
                    if screen and course.course_id not in kinds:
                        evaluation = hold_unconfirmed_kind(evaluation, self._rules)
                    evaluations.append(evaluation)
                corrected = {c.id: c.corrected for c in assembled.grouping.courses}
                plans = {c.id: list(c.plan_uids) for c in assembled.grouping.courses}
                courses = courses_of.get(patient_id, set())
                before = written.get(patient_id, {})
                rows = course_rows[patient_id] = {}
                for ev in evaluations:
                    row = _course_row(patient_id, ev, plans, corrected, kinds, candidates, now=now)
                    as_written = rows[ev.course_id] = repr(
                        {k: v for k, v in row.items() if k != "evaluated_at"}
                    )
                    if ev.course_id in courses:
                        courses.discard(ev.course_id)
                        if before.get(ev.course_id) != as_written:
                            changed_courses.append(row)
                    else:
                        new_courses.append(row)
                gone_courses |= courses  # regrouped away; its charges are removed below
                evaluated.append((patient_id, [c for e in evaluations for c in e.charges]))
            write_courses(session, new=new_courses, changed=changed_courses, gone=gone_courses)
            charges_after = store_charges_of_many(session, evaluated, now=now, held_of=charges_of)
        return {
            p: PatientMemo(
                generation=generations[p],
                facts=tuple(heads_of.get(p, ())),
                charges=charges_after.get(p, {}),
                courses=course_rows[p],
                closures=tuple(closures_of.get(p, ())),
                kinds=dict(kinds_of.get(p, {})),
            )
            for p in todo
        }


def _fact_order(head: FactHead) -> tuple[str, str, int]:
    return (head.kind, head.key, head.revision)


_NOT_LOADED: Mapping[str, object] = MappingProxyType({})  # the parse cache holds the fact


def _course_row(
    patient_id: str,
    ev: CourseEvaluation,
    plans: dict[str, list[str]],
    corrected: dict[str, bool],
    kinds: dict[str, CourseKind],
    candidates: dict[str, dict[str, object] | None],
    *,
    now: datetime,
) -> dict[str, object]:
    external = [s for s in ev.sessions if s.kind in ("beams", "ion_beams")] or list(ev.sessions)
    return {
        "id": ev.course_id,
        "patient_id": patient_id,
        "plan_uids": plans[ev.course_id],
        "corrected": corrected[ev.course_id],
        "kind": ev.kind,
        "kind_confirmed": kinds.get(ev.course_id),
        "kind_candidate": candidates[ev.course_id],
        "status": ev.status.state,
        "fractions_delivered": ev.fractions_delivered,
        "first_session": external[0].day if external else None,
        "last_session": external[-1].day if external else None,
        "closures": [
            {
                "on": p.on.isoformat(),
                "fractions": p.count,
                "reason": p.reason,
                "evidence": list(p.evidence),
            }
            for p in ev.status.closures
        ],
        "unresolved": [
            {
                "family": u.family,
                "key": u.key,
                "service_date": u.service_date.isoformat(),
                "reason": u.reason,
                "attrs": {k: _jsonable(v) for k, v in u.attrs},
            }
            for u in ev.unresolved
        ],
        "bundled": [
            {
                **charge_fields(b.charge),
                "bundle": b.bundle,
                "primary_charge_id": b.primary_charge_id,
                "bundle_citation": b.citation,
            }
            for b in ev.bundled
        ],
        "evaluated_at": now,
    }


def _jsonable(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | None) else str(value)
