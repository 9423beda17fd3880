"""The billing service over a real database (SQLite, or PostgreSQL with RTOPS_DATABASE_URL):
events in through ``BillingService.apply_batch``, charges and outbox events out."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.billing.service import BillingService
from services.billing.store import ChargeRow, Course
from services.billing.store.queries import ChargeFilter
from shared.auth import Principal
from shared.events import ChargePosted, ChargeVoided, CloudEvent, PlanReference, parse_event
from shared.outbox import OutboxMixin
from tests.billing.conftest import Db, billing_database, make_service
from tests.billing.events import (
    MONDAY,
    PID,
    assessed_event,
    billing_plan_event,
    note_event,
    regrouped_event,
    summary_event,
    treatment,
    weekdays,
)
from tests.databases import sub_database
from tests.events import PLAN_UID, Clock, at, record_event, sim_completed_event

COURSE = f"course:{PLAN_UID}"
BILLER = Principal(user="bea.biller", roles=frozenset({"billing"}))


def charges(factory: sessionmaker[Session], *, removed: bool = False) -> list[dict[str, Any]]:
    with factory() as session:
        rows = session.scalars(
            select(ChargeRow)
            .where(ChargeRow.removed.is_(removed))
            .order_by(ChargeRow.service_date, ChargeRow.cpt, ChargeRow.id)
        )
        return [
            {
                "id": r.id,
                "cpt": r.cpt,
                "modifiers": r.modifiers,
                "units": r.units,
                "service_date": r.service_date,
                "status": r.status,
                "hold_reason": r.hold_reason,
                "revision": r.revision,
                "exported": r.exported,
            }
            for r in rows
        ]


def codes(factory: sessionmaker[Session], cpt: str) -> list[dict[str, Any]]:
    return [c for c in charges(factory) if c["cpt"] == cpt]


def published(factory: sessionmaker[Session]) -> list[CloudEvent]:
    from services.billing.store import Outbox

    model: type[OutboxMixin] = Outbox
    with factory() as session:
        return [parse_event(b) for b in session.scalars(select(model.body).order_by(model.id))]


def notes(weeks: int) -> list[CloudEvent]:
    return [note_event(MONDAY + timedelta(days=7 * w)) for w in range(weeks)]


def reviews(n: int) -> list[CloudEvent]:
    return [assessed_event(i + 1, day) for i, day in enumerate(weekdays(n))]


def course_of(n: int, *, planned: int | None = None) -> list[CloudEvent]:
    """A VMAT course of n daily fractions, each reviewed on time, a note every week."""
    return [
        billing_plan_event(fractions=planned if planned is not None else n),
        *treatment(n),
        *reviews(n),
        *notes((n + 4) // 5 + 1),
    ]


# ---------------------------------------------------------------- counting


@pytest.mark.parametrize(
    ("fractions", "units"),
    [(6, 1), (8, 2), (18, 4)],
    ids=["CMS Pub 100-04 Ch.13 s.70: 6 fx -> 1", "8 fx -> 2", "18 fx -> 4"],
)
def test_a_completed_course_earns_77427_per_the_cms_rule(
    service: BillingService, billing_db: Db, fractions: int, units: int
) -> None:
    assert service.apply_batch(course_of(fractions)) == len(course_of(fractions))
    factory = billing_db[1]
    management = codes(factory, "77427")
    assert len(management) == units
    assert all(c["units"] == 1 and c["status"] == "ready" for c in management)
    # One delivery (2026: 77407, VMAT to one isocenter) and one image guidance per session.
    assert len(codes(factory, "77407")) == fractions
    guidance = codes(factory, "77387")
    assert len(guidance) == fractions
    assert all(c["modifiers"] == ["26"] and c["status"] == "ready" for c in guidance)
    assert [c["units"] for c in codes(factory, "77301")] == [1]
    with factory() as session:
        course = session.get(Course, COURSE)
        assert course is not None
        assert (course.status, course.fractions_delivered) == ("closed", fractions)
        assert course.closures[-1]["reason"] == "planned_delivered"
    posted = [e.data for e in published(factory) if isinstance(e.data, ChargePosted)]
    assert sorted(p.charge_id for p in posted) == sorted(c["id"] for c in charges(factory))
    assert all(p.revision == 1 and p.patient.id == PID for p in posted)


def test_an_open_course_earns_full_blocks_only_and_closes_after_inactivity(
    service: BillingService, billing_db: Db, clock: Clock
) -> None:
    service.apply_batch(course_of(8, planned=28))
    factory = billing_db[1]
    assert len(codes(factory, "77427")) == 1  # 5 done; 3 more wait for the course's end
    clock.now = at("2026-04-13", "12:00")  # 31 days after the last session (2026-03-11)
    assert service.reevaluate_open() == 1
    assert len(codes(factory, "77427")) == 2  # CMS: the 3-4 remainder at the end
    with factory() as session:
        course = session.get(Course, COURSE)
        assert course is not None and course.status == "closed"
        assert course.closures[-1]["reason"] == "inactivity"
    assert service.reevaluate_open() == 0  # nothing open any more


def test_a_summary_record_that_says_completed_ends_the_course(
    service: BillingService, billing_db: Db
) -> None:
    service.apply_batch(course_of(8, planned=28))
    service.apply(summary_event("COMPLETED", weekdays(8)[-1]))
    assert len(codes(billing_db[1], "77427")) == 2


def test_a_staff_closure_earns_the_remainder_and_a_resumed_course_only_the_difference(
    service: BillingService, billing_db: Db, clock: Clock
) -> None:
    service.apply_batch(course_of(8, planned=28))
    factory = billing_db[1]
    course = service.close_course(
        COURSE, closed_on=None, reason="patient moved", principal=BILLER, resource="/x"
    )
    assert course.status == "closed" and course.closures[-1]["reason"] == "staff"
    assert len(codes(factory, "77427")) == 2
    # CMS Pub 100-04 Ch. 13 s. 70: 8 fx billed as 2; 2 more fractions stay 2 (no refund).
    clock.now = at("2026-03-25", "12:00")
    service.apply_batch(
        [record_event(9, "2026-03-23", pid=PID), record_event(10, "2026-03-24", pid=PID)]
    )
    assert len(codes(factory, "77427")) == 2
    with factory() as session:
        assert session.get(Course, COURSE).status == "open"  # type: ignore[union-attr]


def test_a_closure_in_the_future_or_of_an_unknown_course_is_refused(
    service: BillingService,
) -> None:
    from shared.errors import NotFound, RuleViolation

    service.apply_batch(course_of(3, planned=28))
    with pytest.raises(RuleViolation, match="future"):
        service.close_course(
            COURSE, closed_on=date(2026, 4, 1), reason=None, principal=BILLER, resource="/x"
        )
    with pytest.raises(NotFound):
        service.close_course(
            "course:nope", closed_on=None, reason=None, principal=BILLER, resource="/x"
        )


# ---------------------------------------------------------------- idempotence and order


def test_a_redelivered_event_changes_nothing(service: BillingService, billing_db: Db) -> None:
    events = course_of(6)
    service.apply_batch(events)
    factory = billing_db[1]
    before, outbox = charges(factory), published(factory)
    assert service.apply_batch(events) == 0
    for event in events[:5]:
        assert not service.apply(event)
    assert charges(factory) == before
    assert [e.id for e in published(factory)] == [e.id for e in outbox]


def test_a_revision_already_held_under_another_event_id_changes_nothing(
    service: BillingService, billing_db: Db
) -> None:
    """Beyond the inbox: the fact's key and revision are stored once."""
    service.apply_batch(course_of(6))
    factory = billing_db[1]
    before = charges(factory), len(published(factory))
    again = assessed_event(1, MONDAY).model_copy(update={"id": "another-id"})
    assert service.apply(again)
    assert (charges(factory), len(published(factory))) == before


def test_order_and_batching_do_not_change_the_charges(
    service: BillingService, billing_db: Db, base_settings: dict[str, object], clock: Clock
) -> None:
    events = [
        *course_of(8, planned=28),
        assessed_event(3, weekdays(3)[-1], revision=2, status="reviewed_late"),
        sim_completed_event(pid=PID, day="2026-02-02", complexity="complex"),
    ]
    service.apply_batch(events)
    expected = charges(billing_db[1])
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    with billing_database(sub_database(base_settings, "shuffled")) as (settings, factory):
        other = make_service(settings, factory, clock)
        for start in range(0, len(shuffled), 4):
            other.apply_batch(shuffled[start : start + 4])
        got = charges(factory)
    strip = [{k: v for k, v in c.items() if k != "revision"} for c in expected]
    assert [{k: v for k, v in c.items() if k != "revision"} for c in got] == strip


# ---------------------------------------------------------------- image guidance and holds


def test_a_withdrawn_review_moves_77387_to_hold(service: BillingService, billing_db: Db) -> None:
    service.apply_batch(course_of(6))
    factory = billing_db[1]
    day3 = weekdays(3)[-1]
    service.apply(assessed_event(3, day3, revision=2, status="reviewed_late"))
    guidance = {c["service_date"]: c for c in codes(factory, "77387")}
    assert guidance[day3]["status"] == "hold"
    assert guidance[day3]["hold_reason"] == "review_withdrawn"
    assert guidance[day3]["revision"] == 2
    assert all(c["status"] == "ready" for d, c in guidance.items() if d != day3)
    last = [e.data for e in published(factory) if isinstance(e.data, ChargePosted)][-1]
    assert (last.cpt, last.status, last.hold_reason, last.revision) == (
        "77387",
        "hold",
        "review_withdrawn",
        2,
    )
    # Not exported: nothing to void.
    assert not [e for e in published(factory) if isinstance(e.data, ChargeVoided)]
    # An older revision arriving late changes nothing: the latest wins.
    service.apply(assessed_event(3, day3, revision=1))
    assert {c["service_date"]: c for c in codes(factory, "77387")}[day3]["status"] == "hold"


def test_an_exported_charge_that_goes_to_hold_is_voided(
    service: BillingService, billing_db: Db
) -> None:
    service.apply_batch(course_of(6))
    factory = billing_db[1]
    exported = service.export(ChargeFilter(patient_id=PID), principal=BILLER, resource="/x")
    assert len(exported) == len(charges(factory))
    assert all(c["exported"] for c in charges(factory))
    assert service.export(ChargeFilter(), principal=BILLER, resource="/x") == []  # once
    day2 = weekdays(2)[-1]
    service.apply(assessed_event(2, day2, revision=2, status="pending"))
    (voided,) = [e.data for e in published(factory) if isinstance(e.data, ChargeVoided)]
    assert (voided.cpt, voided.modifiers, voided.service_date) == ("77387", ("26",), day2)
    assert (voided.reason, voided.hold_reason, voided.revision) == ("hold", "review_withdrawn", 2)
    assert voided.exported_at is not None
    held = {c["service_date"]: c for c in codes(factory, "77387")}[day2]
    assert held["status"] == "hold" and not held["exported"]
    # Reviewed again on time: ready again, and exported with the next export.
    service.apply(assessed_event(2, day2, revision=3))
    again = service.export(ChargeFilter(), principal=BILLER, resource="/x")
    assert [(r.cpt, r.service_date) for r in again] == [("77387", day2)]


def test_an_exported_charge_that_disappears_is_voided(
    service: BillingService, billing_db: Db
) -> None:
    service.apply_batch(course_of(6, planned=28))
    factory = billing_db[1]
    service.export(ChargeFilter(), principal=BILLER, resource="/x")
    day6 = weekdays(6)[-1]
    # The record of fraction 6 is revised: it delivered nothing after all.
    uid = f"1.2.3.{PID}.6.{day6.isoformat()}"
    service.apply(record_event(6, day6.isoformat(), pid=PID, uid=uid, revision=2, delivered=False))
    voided = [e.data for e in published(factory) if isinstance(e.data, ChargeVoided)]
    assert sorted((v.cpt, v.reason) for v in voided) == [("77387", "removed"), ("77407", "removed")]
    gone = charges(factory, removed=True)
    assert sorted(c["cpt"] for c in gone) == ["77387", "77407"]
    assert all(not c["exported"] for c in gone)
    removed = [
        e.data for e in published(factory) if isinstance(e.data, ChargePosted) and e.data.removed
    ]
    assert sorted(p.cpt for p in removed) == ["77387", "77407"]
    # It comes back (revision 3): revisions continue, so a new event id.
    service.apply(record_event(6, day6.isoformat(), pid=PID, uid=uid, revision=3))
    assert [c["revision"] for c in codes(factory, "77407") if c["service_date"] == day6] == [3]


def test_77427_is_held_without_a_management_note_until_one_is_signed(
    service: BillingService, billing_db: Db
) -> None:
    service.apply_batch([billing_plan_event(fractions=5), *treatment(5), *reviews(5)])
    factory = billing_db[1]
    (management,) = codes(factory, "77427")
    assert (management["status"], management["hold_reason"]) == ("hold", "missing_management_note")
    service.apply(note_event(MONDAY))
    (management,) = codes(factory, "77427")
    assert (management["status"], management["revision"]) == ("ready", 2)
    # A voided note takes it back.
    service.apply(note_event(MONDAY, revision=2, voided=True))
    assert codes(factory, "77427")[0]["hold_reason"] == "missing_management_note"


def test_unreviewed_fractions_bill_no_guidance_until_assessed(
    service: BillingService, billing_db: Db
) -> None:
    service.apply_batch([billing_plan_event(fractions=5), *treatment(5), *notes(2)])
    assert codes(billing_db[1], "77387") == []
    assert len(codes(billing_db[1], "77407")) == 5


# ---------------------------------------------------------------- courses


def test_a_simulation_belongs_to_the_next_course_to_start(
    service: BillingService, billing_db: Db
) -> None:
    # 2026-02-02 is more than 14 days before the 77301 (2026-02-23): not bundled.
    service.apply_batch([*course_of(6), sim_completed_event(pid=PID, day="2026-02-02")])
    (sim,) = codes(billing_db[1], "77285")
    assert (sim["service_date"], sim["status"]) == (date(2026, 2, 2), "ready")
    # Within the IMRT planning window: bundled into 77301, reported on the course.
    service.apply(sim_completed_event("book-2", pid=PID, day="2026-02-20", complexity="complex"))
    assert codes(billing_db[1], "77290") == []
    with billing_db[1]() as session:
        course = session.get(Course, COURSE)
        assert course is not None
        assert [(b["cpt"], b["bundle"]) for b in course.bundled] == [
            ("77290", "imrt-planning-window")
        ]


def test_a_staff_regrouping_merges_courses_and_moves_their_charges(
    service: BillingService, billing_db: Db
) -> None:
    boost = "1.2.826.0.1.3680043.10.1.2"
    service.apply_batch(
        [
            *course_of(5, planned=28),
            billing_plan_event(plan_uid=boost, label="BOOST", fractions=3),
            *treatment(3, start=date(2026, 3, 9), plan_uid=boost, first=1),
        ]
    )
    factory = billing_db[1]
    with factory() as session:
        assert sorted(session.scalars(select(Course.id))) == [COURSE, f"course:{boost}"]
    service.apply(regrouped_event((PLAN_UID, boost)))
    with factory() as session:
        (course,) = session.scalars(select(Course))
        assert course.corrected and sorted(course.plan_uids) == sorted([PLAN_UID, boost])
        assert course.fractions_delivered == 8
    assert {c["id"].split("|")[0] for c in charges(factory)} == {course.id}
    removed = charges(factory, removed=True)
    # The merged course keeps the first plan's id; the boost course's charges are retracted.
    assert course.id == COURSE
    assert removed and all(c["id"].startswith(f"course:{boost}|") for c in removed)


def test_qa_plans_never_join_a_course(service: BillingService, billing_db: Db) -> None:
    qa = "1.2.826.0.1.3680043.10.1.9"
    service.apply_batch(
        [
            billing_plan_event(plan_uid=qa, intent="VERIFICATION", fractions=1),
            record_event(1, "2026-03-02", pid=PID, plan_uid=qa),
        ]
    )
    with billing_db[1]() as session:
        assert list(session.scalars(select(Course))) == []
    assert charges(billing_db[1]) == []


def test_a_replan_references_its_predecessor_and_stays_one_course(
    service: BillingService, billing_db: Db
) -> None:
    replan = "1.2.826.0.1.3680043.10.1.3"
    service.apply_batch(
        [
            *course_of(5, planned=28),
            billing_plan_event(
                plan_uid=replan,
                label="PROST v2",
                references=(PlanReference(sop_instance_uid=PLAN_UID, relationship="PREDECESSOR"),),
            ),
            *treatment(3, start=date(2026, 3, 9), plan_uid=replan, first=6),
        ]
    )
    with billing_db[1]() as session:
        (course,) = session.scalars(select(Course))
        assert course.id == COURSE and course.fractions_delivered == 8
    # The re-plan's own IMRT plan is held without a documented reason.
    plans = codes(billing_db[1], "77301")
    assert sorted((c["status"], c["hold_reason"]) for c in plans) == [
        ("hold", "missing_replan_justification"),
        ("ready", None),
    ]
