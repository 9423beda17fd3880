"""The service's in-memory patient state (``services.billing.memo``) changes nothing about the
charges: whoever else writes a patient's billing state (a second replica, an export, a staff
closure), and whatever a rolled-back batch did, the next evaluation sees the tables' truth."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.billing import posting
from services.billing.memo import PatientMemos
from services.billing.service import BillingService
from services.billing.store import Course, PatientGeneration
from services.billing.store.queries import ChargeFilter
from shared.auth import Principal
from shared.events import ChargeVoided, CloudEvent
from tests.billing.conftest import Db, billing_database, make_service
from tests.billing.events import PID, assessed_event, weekdays
from tests.billing.test_service import charges, course_of, published
from tests.databases import sub_database
from tests.events import PLAN_UID, Clock

BILLER = Principal(user="bea.biller", roles=frozenset({"billing"}))


def without_revisions(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k != "revision"} for r in rows]


def reference(
    base_settings: dict[str, object], clock: Clock, events: list[CloudEvent]
) -> list[dict[str, object]]:
    """The charges of all the events applied at once, in a database of their own."""
    with billing_database(sub_database(base_settings, "reference")) as (settings, factory):
        make_service(settings, factory, clock).apply_batch(events)
        return without_revisions(charges(factory))


def test_batches_through_one_service_give_what_a_fresh_service_per_batch_gives(
    service: BillingService, billing_db: Db, base_settings: dict[str, object], clock: Clock
) -> None:
    events = course_of(12, planned=28)
    random.Random(3).shuffle(events)
    batches = [events[i : i + 3] for i in range(0, len(events), 3)]
    for batch in batches:  # one service: the memo carries each patient between batches
        service.apply_batch(batch)
    assert len(service._memos) == 1
    with billing_database(sub_database(base_settings, "fresh")) as (settings, factory):
        for batch in batches:  # a new service each time: every patient read from the tables
            make_service(settings, factory, clock).apply_batch(batch)
        assert charges(factory) == charges(billing_db[1])
        # Course rows too: memory skips rewriting an unchanged row, never a changed one.
        assert courses(factory) == courses(billing_db[1])
        assert courses(factory)[0]["fractions_delivered"] == 12


def courses(factory: sessionmaker[Session]) -> list[dict[str, object]]:
    with factory() as session:
        return [
            {
                c.name: getattr(row, c.name)
                for c in Course.__table__.columns
                if c.name != "evaluated_at"
            }
            for row in session.scalars(select(Course).order_by(Course.id))
        ]


def test_a_second_replica_writing_the_patient_makes_the_first_read_it_again(
    service: BillingService, billing_db: Db, base_settings: dict[str, object], clock: Clock
) -> None:
    settings, factory = billing_db
    replica = make_service(settings, factory, clock)
    events = course_of(10, planned=10)
    service.apply_batch(events[:8])
    replica.apply_batch(events[8:16])  # the first service's memo is now behind
    service.apply_batch(events[16:])
    assert without_revisions(charges(factory)) == reference(base_settings, clock, events)


def test_an_export_by_another_replica_is_seen_and_a_later_hold_voids_it(
    service: BillingService, billing_db: Db, clock: Clock
) -> None:
    settings, factory = billing_db
    service.apply_batch(course_of(6))
    # The API of another replica exports; this service's memo still says "not exported".
    make_service(settings, factory, clock).export(
        ChargeFilter(patient_id=PID), principal=BILLER, resource="/x"
    )
    day2 = weekdays(2)[-1]
    service.apply(assessed_event(2, day2, revision=2, status="pending"))
    voided = [e.data for e in published(factory) if isinstance(e.data, ChargeVoided)]
    assert [(v.cpt, v.service_date, v.reason) for v in voided] == [("77387", day2, "hold")]


def test_a_staff_closure_reaches_the_next_evaluation(
    service: BillingService, billing_db: Db
) -> None:
    service.apply_batch(course_of(8, planned=28))
    course = f"course:{PLAN_UID}"
    service.close_course(
        course, closed_on=weekdays(8)[-1], reason="ended", principal=BILLER, resource="/x"
    )
    units = [c for c in charges(billing_db[1]) if c["cpt"] == "77427"]
    assert len(units) == 2  # 5 + a remainder of 3 at the closure
    # A later event for the patient keeps the closure (memory was not trusted after it).
    service.apply(assessed_event(8, weekdays(8)[-1], revision=2))
    assert len([c for c in charges(billing_db[1]) if c["cpt"] == "77427"]) == 2


def test_a_rolled_back_batch_leaves_nothing_in_memory(
    service: BillingService,
    billing_db: Db,
    base_settings: dict[str, object],
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = course_of(6)
    service.apply_batch(events[:4])
    before = charges(billing_db[1])
    held = dict(service._memos._held)

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the outbox write failed")

    monkeypatch.setattr(posting, "emit_many", fail)
    with pytest.raises(RuntimeError):
        service.apply_batch(events[4:])
    monkeypatch.undo()
    assert charges(billing_db[1]) == before
    assert dict(service._memos._held) == held
    service.apply_batch(events[4:])
    assert without_revisions(charges(billing_db[1])) == reference(base_settings, clock, events)


def test_every_evaluation_raises_the_patients_generation(
    service: BillingService, billing_db: Db
) -> None:
    events = course_of(3)
    service.apply_batch(events[:2])
    service.apply_batch(events[2:])
    service.export(ChargeFilter(), principal=BILLER, resource="/x")
    with billing_db[1]() as session:
        generation = session.scalar(
            select(PatientGeneration.generation).where(PatientGeneration.patient_id == PID)
        )
    assert generation == 3  # two batches and an export


def test_memos_are_bounded_and_trusted_only_at_their_generation() -> None:
    from services.billing.memo import PatientMemo

    memos = PatientMemos(max_patients=2)

    def memo(generation: int) -> PatientMemo:
        return PatientMemo(generation, (), {}, {}, (), {})

    memos.keep({"a": memo(1), "b": memo(4)})
    assert memos.at("a", 1) is not None and memos.at("a", 2) is None
    memos.keep({"c": memo(1)})  # "b" was used least recently
    assert memos.at("b", 4) is None and memos.at("a", 1) is not None and len(memos) == 2
