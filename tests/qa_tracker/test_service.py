"""The QA tracker's event handling against a real database: order, duplicates, revisions,
opportunistic approvals, the overdue sweep, and the consumer on real NATS."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.__main__ import reassess
from services.qa_tracker.domain import Decision
from services.qa_tracker.rebuild import Rebuilder
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Fraction, ImagingSeries, Outbox, Registration, ReviewRow
from shared.auth import Principal
from shared.events import CloudEvent, ImageApproval, envelope, parse_event
from tests.databases import sub_database
from tests.events import (
    Clock,
    at,
    imaged_day,
    imaging_event,
    plan_event,
    record_event,
    registration_event,
)
from tests.qa_tracker.factories import make_service, qa_database
from tests.qa_tracker.test_fraction_assessed import running, until

ASSESSED = "rtops.qa.fraction.assessed"
DR = Principal(user="dr.olga", roles=frozenset({"physician"}))
Db = tuple[QaSettings, sessionmaker[Session]]


def snapshot(factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The fraction table without its surrogate ids, in a stable order."""
    with factory() as session:
        rows = session.scalars(select(Fraction).order_by(Fraction.key)).all()
        return [
            {c.name: getattr(r, c.name) for c in Fraction.__table__.columns if c.name != "id"}
            for r in rows
        ]


def week() -> list:  # type: ignore[type-arg]
    return [
        plan_event(),
        *imaged_day(1, "2026-11-23"),
        *imaged_day(2, "2026-11-24"),
        record_event(3, "2026-11-25"),  # not imaged
        *imaged_day(4, "2026-11-27", shift_mm=(6.0, 0.0, 0.0)),
    ]


def test_a_week_becomes_fractions(service: QaService, qa_db: Db) -> None:
    for event in week():
        assert service.apply(event)
    rows = snapshot(qa_db[1])
    assert [(r["fraction_number"], r["imaged"], r["review_status"]) for r in rows] == [
        (1, True, "pending"),
        (2, True, "pending"),
        (3, False, "not_imaged"),
        (4, True, "pending"),
    ]
    first = rows[0]
    assert first["physician"] == "Oncologist^Olga" and first["machine"] == "TrueBeam1"
    assert first["translation_mm"] == [1.0, -2.0, 0.5]
    # Due before the next fraction (Tue 08:00), earlier than 24 business hours after Monday's.
    assert first["due_at"] == at("2026-11-24", "08:00")
    assert rows[3]["override_required"] and not rows[3]["override_documented"]


def test_order_and_duplicates_do_not_change_the_result(
    base_settings: dict[str, object], clock: Clock
) -> None:
    with qa_database(base_settings) as (settings, factory):
        reference_service = make_service(settings, factory, clock)
        for event in week():
            reference_service.apply(event)
        reference = snapshot(factory)
    shuffler = random.Random(4)
    for attempt in range(3):
        events = week() + week()[:4]  # redeliveries too
        shuffler.shuffle(events)
        with qa_database(sub_database(base_settings, str(attempt))) as (s, f):
            svc = make_service(s, f, clock)
            applied = [svc.apply(e) for e in events]
            assert applied.count(False) == 4  # the inbox skipped every redelivery
            assert snapshot(f) == reference


def test_interrupted_fraction_spanning_two_records_is_one_fraction(
    service: QaService, qa_db: Db
) -> None:
    service.apply(record_event(5, "2026-11-23", "08:00", uid="1.1", minutes=3))
    service.apply(record_event(5, "2026-11-23", "08:20", uid="1.2", minutes=4))
    (row,) = snapshot(qa_db[1])
    assert row["treated_at"] == at("2026-11-23", "08:00")
    assert row["ended_at"] == at("2026-11-23", "08:24")


def test_simulation_records_and_verification_plans_are_ignored(
    service: QaService, qa_db: Db
) -> None:
    assert service.apply(record_event(1, "2026-11-23", origin="SIMULATION"))
    assert service.apply(plan_event(plan_uid="7.7", intent="VERIFICATION"))
    assert service.apply(record_event(2, "2026-11-23", delivered=False))  # setup beams only
    assert snapshot(qa_db[1]) == []


def test_an_older_revision_arriving_late_changes_nothing(service: QaService, qa_db: Db) -> None:
    service.apply(record_event(1, "2026-11-23", "09:00", uid="r", revision=2))
    service.apply(record_event(1, "2026-11-23", "08:00", uid="r", revision=1))
    (row,) = snapshot(qa_db[1])
    assert row["treated_at"] == at("2026-11-23", "09:00")


def test_an_approved_rt_image_is_an_opportunistic_review(service: QaService, qa_db: Db) -> None:
    approval = ImageApproval(
        sop_instance_uid="5.5.1",
        status="APPROVED",
        reviewer_name="Oncologist^Olga",
        reviewed_at=at("2026-11-23", "10:00"),
    )
    service.apply(record_event(1, "2026-11-23", "08:00"))
    service.apply(
        imaging_event(
            "kv", "2026-11-23", "07:55", classification="kv_2d", count=2, approvals=(approval,)
        )
    )
    service.apply(
        imaging_event(
            "kv", "2026-11-23", "07:55", classification="kv_2d", count=2, approvals=(approval,)
        )
    )  # the same again: no second review
    (row,) = snapshot(qa_db[1])
    assert row["review_status"] == "reviewed_on_time"
    with qa_db[1]() as session:
        reviews = session.scalars(select(ReviewRow)).all()
        outbox = [parse_event(o.body) for o in session.scalars(select(Outbox))]
    assert [(r.source, r.physician) for r in reviews] == [("dicom_approval", "Oncologist^Olga")]
    assert [e.type for e in outbox if e.type != ASSESSED] == ["rtops.qa.review.documented"]


def test_an_adopted_approval_is_announced_with_its_fractions_verdict(
    service: QaService, qa_db: Db
) -> None:
    """Billing reads ``on_time`` and ``due_at`` from the event: they must be those of the
    assessed fraction, not of a fraction created a moment before in the same rebuild."""
    approval = ImageApproval(
        sop_instance_uid="5.5.2",
        status="APPROVED",
        reviewer_name="Oncologist^Olga",
        reviewed_at=at("2026-11-24", "10:00"),  # after the 24 business hours
    )
    service.apply_batch(
        [
            record_event(1, "2026-11-23", "08:00"),
            imaging_event("cb", "2026-11-23", "07:55", approvals=(approval,)),
        ]
    )
    (row,) = snapshot(qa_db[1])
    assert row["review_status"] == "reviewed_late"
    with qa_db[1]() as session:
        (event,) = [
            e
            for o in session.scalars(select(Outbox))
            if (e := parse_event(o.body)).type != ASSESSED
        ]
    assert event.data.due_at == at("2026-11-24", "08:00")  # type: ignore[union-attr]
    assert event.data.on_time is False  # type: ignore[union-attr]


def test_overdue_is_published_once(service: QaService, qa_db: Db, clock: Clock) -> None:
    for event in imaged_day(1, "2026-11-23"):
        service.apply(event)
    assert service.publish_overdue() == 0  # not yet due
    clock.now = at("2026-11-24", "08:00") + timedelta(seconds=1)
    assert service.publish_overdue() == 1
    assert service.publish_overdue() == 0
    with qa_db[1]() as session:
        (event,) = [
            e
            for o in session.scalars(select(Outbox))
            if (e := parse_event(o.body)).type != ASSESSED
        ]
    assert event.type == "rtops.qa.review.overdue"
    assert event.data.due_at == at("2026-11-24", "08:00")  # type: ignore[attr-defined]


def test_daily_digest_once_per_physician_and_business_day(
    service: QaService, qa_db: Db, clock: Clock
) -> None:
    service.apply(plan_event())
    for event in imaged_day(1, "2026-11-23") + imaged_day(2, "2026-11-24"):
        service.apply(event)
    clock.now = at("2026-11-25", "06:59")  # before the digest hour (07:00)
    assert service.publish_digests() == 0
    clock.now = at("2026-11-25", "08:30")  # both fractions past due
    assert service.publish_digests() == 1  # one physician, both overdue fractions in it
    assert service.publish_digests() == 0  # a restart or a second replica sends nothing
    clock.now = at("2026-11-26", "09:00")  # Thanksgiving: no digest
    assert service.publish_digests() == 0
    with qa_db[1]() as session:
        (digest,) = [
            e
            for o in session.scalars(select(Outbox))
            if (e := parse_event(o.body)).type == "rtops.qa.review.digest"
        ]
    assert digest.data.physician == "Oncologist^Olga"  # type: ignore[attr-defined]
    assert [(f.kind, f.fraction_number) for f in digest.data.flags] == [  # type: ignore[attr-defined]
        ("overdue_review", 1),
        ("overdue_review", 2),
    ]


def test_review_after_overdue_is_late(service: QaService, qa_db: Db, clock: Clock) -> None:
    for event in imaged_day(1, "2026-11-23"):
        service.apply(event)
    clock.now = at("2026-11-24", "10:00")
    (fraction_id,) = _ids(qa_db[1])
    service.add_review(
        fraction_id,
        NewReview(Decision.APPROVED, None, None, None),
        principal=DR,
        resource="/v1/fractions/1/reviews",
    )
    assert snapshot(qa_db[1])[0]["review_status"] == "reviewed_late"


def _ids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as session:
        return list(session.scalars(select(Fraction.id)))


async def test_consumer_on_real_nats(service: QaService, qa_db: Db) -> None:
    settings, factory = qa_db
    async with running(service, settings, factory) as link:
        events = week()
        for event in events + events[:3]:  # the same ids again: JetStream or the inbox drops them
            await link.publish(event.type, event.to_json(), event.id + "-resent")
        await until(lambda: len(snapshot(factory)) == 4, "four fractions")
        assert [r["fraction_number"] for r in snapshot(factory)] == [1, 2, 3, 4]
        for _ in range(100):
            info = await link.js.consumer_info(settings.stream_name, "qa_tracker")  # type: ignore[union-attr]
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert info.num_ack_pending == 0 and info.num_pending == 0


def awkward_course() -> list[CloudEvent]:
    """A course whose facts reach across days: what a rebuild of only the changed days must
    still get right."""
    approval = ImageApproval(
        sop_instance_uid="5.5.9",
        status="APPROVED",
        reviewer_name="Oncologist^Olga",
        reviewed_at=at("2026-12-07", "10:00"),
    )
    return [
        plan_event(),
        *imaged_day(1, "2026-11-23"),
        # Fraction 2 interrupted on Tuesday and finished on Wednesday (same fraction number).
        imaging_event("9.9.2", "2026-11-24", "07:55"),
        record_event(2, "2026-11-24", "08:00", uid="2a", minutes=3),
        record_event(2, "2026-11-25", "09:00", uid="2b", minutes=4),
        # Thursday's CBCT matched offline on Friday, naming its series; beyond tolerance.
        imaging_event("9.9.3", "2026-11-26", "07:55"),
        record_event(3, "2026-11-26", "08:00"),
        registration_event("8.8.3", "9.9.3", "2026-11-27", "10:00", shift_mm=(7.0, 0.0, 0.0)),
        # A treatment break: fraction 4 ten days later, approved in the OIS.
        imaging_event("9.9.4", "2026-12-07", "07:55", approvals=(approval,)),
        record_event(4, "2026-12-07", "08:00"),
        # A corrected record moves fraction 1 to 08:30; the plan's approver changes.
        record_event(1, "2026-11-23", "08:30", uid="1.2.3.QA-001.1.2026-11-23", revision=2),
        plan_event(physician="Oncologist^Omar", revision=2),
    ]


def matches(factory: sessionmaker[Session]) -> list[tuple[str, str | None]]:
    with factory() as session:
        sessions = session.execute(select(ImagingSeries.series_uid, ImagingSeries.fraction_key))
        registrations = session.execute(select(Registration.sop_uid, Registration.session_uid))
        return sorted((*sessions, *registrations))  # type: ignore[arg-type]


def test_any_order_and_batching_equals_a_rebuild_from_scratch(
    base_settings: dict[str, object], clock: Clock
) -> None:
    """Each batch rebuilds only the days it changes; in any order and any batching, the
    result equals rebuilding every patient from all facts."""
    with qa_database(base_settings) as (settings, factory):
        service = make_service(settings, factory, clock)
        for event in awkward_course():
            assert service.apply(event)
        reference, reference_matches = snapshot(factory), matches(factory)
        assert service.rebuild_all() == 1
        assert snapshot(factory) == reference and matches(factory) == reference_matches
    by_number = {r["fraction_number"]: r for r in reference}
    assert by_number[2]["treated_at"] == at("2026-11-24", "08:00")
    assert by_number[2]["ended_at"] == at("2026-11-25", "09:04")
    assert by_number[3]["translation_mm"] == [7.0, 0.0, 0.0] and by_number[3]["override_required"]
    assert by_number[3]["next_fraction_at"] == at("2026-12-07", "08:00")
    assert by_number[1]["treated_at"] == at("2026-11-23", "08:30")
    assert by_number[4]["review_status"] == "reviewed_on_time"
    assert {r["physician"] for r in reference} == {"Oncologist^Omar"}

    shuffler = random.Random(7)
    for attempt in range(4):
        events = awkward_course()
        shuffler.shuffle(events)
        cuts = sorted(shuffler.sample(range(1, len(events)), 3))
        with qa_database(sub_database(base_settings, f"s{attempt}")) as (s, f):
            svc = make_service(s, f, clock)
            for lo, hi in zip([0, *cuts], [*cuts, len(events)], strict=True):
                assert svc.apply_batch(events[lo:hi]) == hi - lo
            assert snapshot(f) == reference, f"order {attempt}"
            assert matches(f) == reference_matches, f"order {attempt}"


def test_a_registration_arriving_before_the_series_it_names(service: QaService, qa_db: Db) -> None:
    service.apply(registration_event("8.8.1", "9.9.1", "2026-11-24", "10:00", shift_mm=(9, 0, 0)))
    service.apply(record_event(1, "2026-11-23", "08:00"))
    service.apply(imaging_event("9.9.1", "2026-11-23", "07:55"))
    (row,) = snapshot(qa_db[1])
    assert row["imaged"] and row["translation_mm"] == [9.0, 0.0, 0.0]


def test_a_failed_batch_changes_nothing(
    service: QaService, qa_db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is one transaction: a failure after its facts were recorded leaves neither
    them nor its inbox claims behind, so the events can be applied again."""
    events = imaged_day(1, "2026-11-23")

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database went away")

    with monkeypatch.context() as patch:
        patch.setattr(Rebuilder, "rebuild", fail)
        with pytest.raises(RuntimeError):
            service.apply_batch(events)
    with qa_db[1]() as session:
        assert session.scalars(select(ImagingSeries)).all() == []
    assert snapshot(qa_db[1]) == []
    assert service.apply_batch(events) == 3
    assert len(snapshot(qa_db[1])) == 1


def test_reassess_applies_a_changed_policy_to_stored_fractions(
    service: QaService, qa_db: Db, tmp_path: Path
) -> None:
    for event in [plan_event(), *imaged_day(1, "2026-11-23", shift_mm=(1.0, 0.0, 0.0))]:
        service.apply(event)
    (row,) = snapshot(qa_db[1])
    assert not row["override_required"]  # 1 mm is within the default 5 mm
    policy = tmp_path / "policy.yaml"
    policy.write_text("default_tolerance: {translation_mm: 0.5, rotation_deg: 3}\n")
    settings = qa_db[0].model_copy(update={"qa_policy": policy})

    assert reassess(settings) == 1

    (row,) = snapshot(qa_db[1])
    assert row["override_required"]


def test_a_registration_without_content_time_takes_the_events_time(
    service: QaService, qa_db: Db
) -> None:
    """Not the clock's: a replay on another day must record the same fact."""
    sent_at = at("2026-11-23", "07:58")
    plain = registration_event("8.8.t", "9.9.t", "2026-11-23").data
    event = envelope(
        plain.model_copy(update={"content_at": None}), source="rtops/scp_listener", time=sent_at
    )
    assert service.apply(event)
    with qa_db[1]() as session:
        (content_at,) = session.scalars(select(Registration.content_at))
    assert content_at == sent_at


def test_rebuild_all_visits_every_patient_with_facts(service: QaService, qa_db: Db) -> None:
    """Also those whose fractions were never derived (or all removed)."""
    for event in imaged_day(1, "2026-11-23") + imaged_day(1, "2026-11-23", pid="QA-002"):
        service.apply(event)
    reference = snapshot(qa_db[1])
    with qa_db[1].begin() as session:
        session.execute(delete(Fraction))
    assert service.rebuild_all() == 2
    assert snapshot(qa_db[1]) == reference
