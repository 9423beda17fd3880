"""``rtops.qa.fraction.assessed``: the fraction state billing can trust.

The two contract bugs it fixes, end to end (events in through the consumer on real NATS, the
published events read back from the JetStream stream) and at the service level: an adopted
approval that moves to another fraction is announced again, and a verdict that changes after
its review was announced (a twice-daily record arriving later) is published again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.announcements import verdict_fields
from services.qa_tracker.consumer import run_consumer
from services.qa_tracker.domain import Decision
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Fraction, FractionRevision, Outbox, ReviewRow
from shared.auth import Principal
from shared.events import CloudEvent, ImageApproval, ReviewDocumented, parse_event
from shared.events.qa import FractionAssessed
from shared.jetstream import ConsumerPolicy, NatsLink, subject_for
from shared.outbox import OutboxRelay
from tests.events import PLAN_UID, Clock, at, imaged_day, imaging_event, record_event

ASSESSED = "rtops.qa.fraction.assessed"
DOCUMENTED = "rtops.qa.review.documented"
DR = Principal(user="dr.olga", roles=frozenset({"physician"}))
Db = tuple[QaSettings, sessionmaker[Session]]


def key(number: int, pid: str = "QA-001") -> str:
    return f"{pid}|{PLAN_UID}|1|{number}"


def outbox_events(factory: sessionmaker[Session]) -> list[CloudEvent]:
    with factory() as session:
        return [parse_event(b) for b in session.scalars(select(Outbox.body).order_by(Outbox.id))]


def latest(events: Iterable[CloudEvent]) -> dict[str, FractionAssessed]:
    """The current state per fraction key: its highest revision."""
    current: dict[str, FractionAssessed] = {}
    for e in events:
        if isinstance(e.data, FractionAssessed):
            known = current.get(e.data.fraction_key)
            if known is None or e.data.revision > known.revision:
                current[e.data.fraction_key] = e.data
    return current


def assert_published_state_is_current(factory: sessionmaker[Session]) -> None:
    """The last fraction.assessed of each key says what the tracker now says: the fraction's
    verdict, or ``removed`` for a key without a fraction."""
    published = latest(outbox_events(factory))
    with factory() as session:
        fractions = {f.key: f for f in session.scalars(select(Fraction))}
        reviews: dict[int, list[ReviewRow]] = {}
        for r in session.scalars(select(ReviewRow)):
            reviews.setdefault(r.fraction_id, []).append(r)
        expected = {k: verdict_fields(f, reviews.get(f.id, [])) for k, f in fractions.items()}
        revisions = {r.key: r.revision for r in session.scalars(select(FractionRevision))}
    assert set(expected) <= set(published), "every fraction has been announced"
    for k, event in published.items():
        assert revisions[k] == event.revision
        if k not in expected:
            assert event.removed, f"{k} is gone but its last event does not say so"
            continue
        want = FractionAssessed.model_validate({**expected[k], "revision": event.revision})
        assert event == want, f"{k}: published {event}, current {want}"


def _approved(series: str, day: str, hhmm: str, image: str) -> CloudEvent:
    approval = ImageApproval(
        sop_instance_uid=image,
        status="APPROVED",
        reviewer_name="Oncologist^Olga",
        reviewed_at=at(day, "10:00"),
    )
    return imaging_event(series, day, hhmm, approvals=(approval,))


def moved_approval() -> list[CloudEvent]:
    """An approved CBCT matched to fraction 1; then the record is corrected to fraction 2."""
    return [
        _approved("9.9.am", "2026-11-23", "07:55", "5.5.am"),
        record_event(1, "2026-11-23", "08:00", uid="r"),
        record_event(2, "2026-11-23", "08:00", uid="r", revision=2),
    ]


def check_moved_approval(events: list[CloudEvent]) -> None:
    documented = [e.data for e in events if isinstance(e.data, ReviewDocumented)]
    assert [d.fraction_key for d in documented] == [key(1), key(2)]
    assert len({d.review_id for d in documented}) == 1  # one review, placed twice
    state = latest(events)
    moved = state[key(2)]
    assert moved.review_status == "reviewed_on_time" and moved.on_time
    assert moved.review is not None and moved.review.origin == "dicom_approval"
    assert moved.review.physician == "Oncologist^Olga"
    assert moved.fraction_number == 2 and moved.fraction_group == 1
    assert moved.plan_uid == PLAN_UID and moved.imaging == ("cbct",)
    gone = state[key(1)]
    assert gone.removed or gone.review is None
    assert not gone.on_time


def stale_on_time(service: QaService, clock: Clock) -> tuple[list[CloudEvent], Callable[[], None]]:
    """Fraction 1 at 08:00 (imaged), reviewed at 20:00; then a twice-daily fraction at 18:00
    the same day arrives: the review was due before it, so it is late."""

    def review() -> None:
        clock.now = at("2026-11-23", "21:00")
        with service._factory() as session:
            (fraction_id,) = session.scalars(select(Fraction.id).where(Fraction.key == key(1)))
        service.add_review(
            fraction_id,
            NewReview(Decision.APPROVED, None, None, at("2026-11-23", "20:00")),
            principal=DR,
            resource="/v1/fractions/1/reviews",
        )

    return [*imaged_day(1, "2026-11-23")], review


def check_stale_on_time(events: list[CloudEvent]) -> None:
    (documented,) = [e.data for e in events if isinstance(e.data, ReviewDocumented)]
    assert documented.on_time  # as of the announcement
    first = latest(events)[key(1)]
    assert first.review_status == "reviewed_late" and first.on_time is False
    assert first.due_at == at("2026-11-23", "18:00")
    assert first.review is not None and first.review.origin == "api"
    assert latest(events)[key(2)].review_status == "not_imaged"


# ---------------------------------------------------------------- service level


def test_a_moved_approval_is_announced_for_its_new_fraction(service: QaService, qa_db: Db) -> None:
    for event in moved_approval():
        assert service.apply(event)
    events = outbox_events(qa_db[1])
    check_moved_approval(events)
    assert latest(events)[key(1)].removed
    assert_published_state_is_current(qa_db[1])


def test_a_verdict_changed_by_a_later_fraction_is_published_again(
    service: QaService, qa_db: Db, clock: Clock
) -> None:
    before, review = stale_on_time(service, clock)
    for event in before:
        service.apply(event)
    review()
    assert latest(outbox_events(qa_db[1]))[key(1)].on_time
    service.apply(record_event(2, "2026-11-23", "18:00"))
    check_stale_on_time(outbox_events(qa_db[1]))
    assert_published_state_is_current(qa_db[1])


def test_an_unchanged_verdict_is_not_published_again(service: QaService, qa_db: Db) -> None:
    for event in imaged_day(1, "2026-11-23"):
        service.apply(event)
    count = len(outbox_events(qa_db[1]))
    assert service.rebuild_all(reassess=True) == 1
    # The record ending later changes the fraction's span, not its verdict.
    service.apply(record_event(1, "2026-11-23", "08:00", uid="1.2.3.QA-001.1.2026-11-23.b"))
    assert len(outbox_events(qa_db[1])) == count
    assert_published_state_is_current(qa_db[1])


def test_revisions_keep_increasing_across_removal_and_recreation(
    service: QaService, qa_db: Db
) -> None:
    service.apply(imaging_event("9.9.1", "2026-11-23", "07:55"))
    service.apply(record_event(1, "2026-11-23", "08:00", uid="r"))
    service.apply(record_event(2, "2026-11-23", "08:00", uid="r", revision=2))  # 1 is gone
    service.apply(record_event(1, "2026-11-23", "08:00", uid="r", revision=3))  # and back
    history = [
        (e.data.revision, e.data.removed)
        for e in outbox_events(qa_db[1])
        if isinstance(e.data, FractionAssessed) and e.data.fraction_key == key(1)
    ]
    assert history == [(1, False), (2, True), (3, False)]
    ids = [e.id for e in outbox_events(qa_db[1]) if e.type == ASSESSED]
    assert len(ids) == len(set(ids))
    assert_published_state_is_current(qa_db[1])


def test_reassess_publishes_the_verdicts_a_new_policy_changes(
    service: QaService, qa_db: Db
) -> None:
    """The API review path publishes too: an override documented changes the verdict."""
    for event in imaged_day(1, "2026-11-23", shift_mm=(6.0, 0.0, 0.0)):
        service.apply(event)
    (state,) = latest(outbox_events(qa_db[1])).values()
    assert state.override_required and not state.override_documented and state.revision == 1
    with qa_db[1]() as session:
        (fraction_id,) = session.scalars(select(Fraction.id))
    service.add_review(
        fraction_id,
        NewReview(Decision.APPROVED, None, "immobilisation redone", None),
        principal=DR,
        resource="/v1/fractions/1/reviews",
    )
    (state,) = latest(outbox_events(qa_db[1])).values()
    assert state.override_documented and state.revision == 2
    assert state.review is not None and state.review.physician == "dr.olga"


# ---------------------------------------------------------------- end to end on NATS


@asynccontextmanager
async def running(service: QaService, settings: QaSettings, factory: Any) -> AsyncIterator[Any]:
    """The consumer and the outbox relay of ``service`` on real NATS (the test's stream)."""
    link = NatsLink(settings, name="qa-assessed-test")
    runner = asyncio.create_task(link.run())
    await asyncio.wait_for(link.ready.wait(), 10)
    stop = asyncio.Event()
    consumer = asyncio.create_task(
        run_consumer(
            link,
            service,
            stop=stop,
            policy=ConsumerPolicy(fetch_timeout_s=0.2, max_deliver=2, backoff_s=(0.1,)),
        )
    )
    relay = asyncio.create_task(OutboxRelay(factory, Outbox, link.publish, idle_poll_s=0.05).run())
    try:
        yield link
    finally:
        stop.set()
        relay.cancel()
        await asyncio.wait_for(consumer, 10)
        runner.cancel()
        await link.close()


async def send(link: NatsLink, events: list[CloudEvent]) -> None:
    for event in events:
        await link.publish(event.type, event.to_json(), event.id)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def fraction_keys(factory: sessionmaker[Session]) -> set[str]:
    with factory() as session:
        return set(session.scalars(select(Fraction.key)))


def all_sent(factory: sessionmaker[Session]) -> bool:
    with factory() as session:
        return not session.scalars(select(Outbox.id).where(Outbox.sent_at.is_(None))).first()


async def published(link: NatsLink, settings: QaSettings) -> list[CloudEvent]:
    """The QA tracker's events as they are in the JetStream stream."""
    assert link.js is not None
    info = await link.js.stream_info(settings.stream_name)
    subjects = {subject_for(settings, t) for t in (ASSESSED, DOCUMENTED)}
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await link.js.get_msg(settings.stream_name, seq)
        if msg.subject in subjects:
            events.append(parse_event(msg.data or b""))
    return events


async def test_a_moved_approval_end_to_end(service: QaService, qa_db: Db) -> None:
    settings, factory = qa_db
    first, renumbered = moved_approval()[:2], moved_approval()[2:]
    async with running(service, settings, factory) as link:
        await send(link, first)
        await until(lambda: fraction_keys(factory) == {key(1)}, "fraction 1")
        await send(link, renumbered)
        await until(lambda: fraction_keys(factory) == {key(2)}, "the renumbered fraction")
        await until(lambda: all_sent(factory), "the outbox to drain")
        events = await published(link, settings)
    check_moved_approval(events)


async def test_a_stale_on_time_end_to_end(service: QaService, qa_db: Db, clock: Clock) -> None:
    settings, factory = qa_db
    before, review = stale_on_time(service, clock)
    async with running(service, settings, factory) as link:
        await send(link, before)
        await until(lambda: fraction_keys(factory) == {key(1)}, "fraction 1")
        await asyncio.to_thread(review)
        await send(link, [record_event(2, "2026-11-23", "18:00")])
        await until(lambda: len(fraction_keys(factory)) == 2, "the evening fraction")
        await until(lambda: all_sent(factory), "the outbox to drain")
        events = await published(link, settings)
    check_stale_on_time(events)
