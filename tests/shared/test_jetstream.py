"""JetStream client (shared/jetstream.py) and transactional outbox (shared/outbox.py) against a
real NATS server and the configured database.

Every test works in its own stream and subject prefix (the ``isolation`` fixture), so the file
runs in parallel with itself and with a suite sharing the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StorageType
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from shared.db import new_metadata
from shared.events import CloudEvent, Patient, PlanReceived, SourceDevice, StoredObject, envelope
from shared.jetstream import (
    ConsumerPolicy,
    NatsLink,
    Poison,
    connect,
    consume,
    ensure_stream,
    publish,
    subject_for,
)
from shared.natsd import EmbeddedNats
from shared.outbox import (
    OutboxMixin,
    OutboxRelay,
    ProcessedEventMixin,
    add_to_outbox,
    claim_event,
    claim_events,
    outbox_depth,
)
from shared.settings import RtopsSettings
from tests.databases import scratch_database

T = TypeVar("T")
DEAD_LETTER_REASON = "Rtops-Dead-Letter-Reason"
# Small enough that a redelivery or a give-up happens within a second.
FAST = dict(max_deliver=2, backoff_s=(0.1,), ack_wait_s=1, fetch_timeout_s=0.2)


async def eventually(
    condition: Callable[[], T | Awaitable[T]], *, within: float = 15.0, message: str = "condition"
) -> T:
    """Poll ``condition`` (sync or async) until it is truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(0.05)


def plan_event(n: int) -> CloudEvent:
    payload = PlanReceived(
        patient=Patient(id=f"P{n:03d}"),
        source=SourceDevice(ae_title="TPS", role="tps"),
        object=StoredObject(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.481.5",
            sop_instance_uid=f"1.2.826.0.1.{n}",
            storage_key=f"k/{n}",
            sha256=f"{n:064d}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        ),
        ion=False,
        label=f"PLAN{n}",
    )
    return envelope(payload, source="urn:rtops:test")


# ---------------------------------------------------------------- fixtures


# Links that ran a consumer. NatsLink.close() drains, and the drain waits out nats-py's 30 s
# drain_timeout on the pull subscription that consume() leaves behind (see
# test_close_after_consuming_is_prompt), so those links are closed without draining.
_CONSUMED: weakref.WeakSet[NatsLink] = weakref.WeakSet()


@contextlib.asynccontextmanager
async def running_link(settings: RtopsSettings, name: str = "test") -> AsyncIterator[NatsLink]:
    link = NatsLink(settings, name=name)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.ready.wait(), 15)
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if link in _CONSUMED and link.nc is not None:
            await link.nc.close()
        else:
            await asyncio.wait_for(link.close(), 15)


@pytest.fixture
async def link(settings: RtopsSettings, js: JetStreamContext) -> AsyncIterator[NatsLink]:
    async with running_link(settings) as connected:
        yield connected


@contextlib.asynccontextmanager
async def consuming(
    link: NatsLink,
    settings: RtopsSettings,
    handler: Callable[[CloudEvent], Awaitable[None]],
    *,
    durable: str = "worker",
    batch_handler: Callable[[list[CloudEvent]], Awaitable[None]] | None = None,
    **policy: Any,
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``NatsLink.consume`` for the block; stop it after and re-raise what it raised."""
    stop = asyncio.Event()
    _CONSUMED.add(link)
    # The stream must be named: a policy passed in keeps ConsumerPolicy's default "RTOPS".
    consumer_policy = ConsumerPolicy(stream=settings.stream_name, **{**FAST, **policy})
    task = asyncio.create_task(
        link.consume(
            durable=durable,
            event_filters=["rtops.dicom.>"],
            handler=handler,
            batch_handler=batch_handler,
            policy=consumer_policy,
            stop=stop,
        )
    )
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def publish_events(
    js: JetStreamContext, settings: RtopsSettings, events: list[CloudEvent]
) -> None:
    for event in events:
        await publish(js, subject_for(settings, event.type), event.to_json(), event.id)


async def stream_messages(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    return [
        await js.get_msg(stream, seq)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def dead_letter(
    js: JetStreamContext, settings: RtopsSettings, durable: str
) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg(
            settings.stream_name, f"{settings.subject_prefix}.deadletter.{durable}"
        )
    except NotFoundError:
        return None


async def settled(js: JetStreamContext, settings: RtopsSettings, durable: str, acked: int) -> bool:
    """Every delivered message acked or termed, and the ack floor at ``acked``."""
    try:
        info = await js.consumer_info(settings.stream_name, durable)
    except NotFoundError:  # the loop has not created the durable yet
        return False
    return (
        info.num_ack_pending == 0
        and info.num_pending == 0
        and info.ack_floor.stream_seq is not None
        and info.ack_floor.stream_seq >= acked
    )


# ---------------------------------------------------------------- stream and publish


async def test_ensure_stream_creates_the_prefixed_stream_idempotently(
    nc: NATS, settings: RtopsSettings
) -> None:
    js = nc.jetstream()
    await ensure_stream(js, settings)
    info = await js.stream_info(settings.stream_name)
    assert info.config.subjects == [f"{settings.subject_prefix}.>"]
    assert info.config.storage == StorageType.FILE
    assert info.config.duplicate_window == pytest.approx(settings.duplicate_window_s)

    event = plan_event(1)
    await publish_events(js, settings, [event])
    await ensure_stream(js, settings)  # second start of a service: nothing lost

    again = await js.stream_info(settings.stream_name)
    assert again.config.subjects == [f"{settings.subject_prefix}.>"]
    assert again.state.messages == 1
    assert again.created == info.created

    shorter = settings.model_copy(update={"duplicate_window_s": 60.0})
    await ensure_stream(js, shorter)  # a changed setting is applied to the existing stream
    updated = await js.stream_info(settings.stream_name)
    assert updated.config.duplicate_window == pytest.approx(60.0)
    assert updated.state.messages == 1


async def test_subjects_carry_the_configured_prefix(settings: RtopsSettings) -> None:
    assert (
        subject_for(settings, "rtops.dicom.plan.received")
        == f"{settings.subject_prefix}.dicom.plan.received"
    )


async def test_same_msg_id_is_stored_once(js: JetStreamContext, settings: RtopsSettings) -> None:
    event = plan_event(1)
    subject = subject_for(settings, event.type)

    await publish(js, subject, event.to_json(), event.id)
    await publish(js, subject, event.to_json(), event.id)
    await publish(js, subject, plan_event(2).to_json(), plan_event(2).id)

    messages = await stream_messages(js, settings.stream_name)
    assert [m.headers["Nats-Msg-Id"] for m in messages if m.headers] == [event.id, plan_event(2).id]


async def test_link_publishes_under_the_prefix(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    event = plan_event(7)
    await link.publish(event.type, event.to_json(), event.id)
    (msg,) = await stream_messages(js, settings.stream_name)
    assert msg.subject == f"{settings.subject_prefix}.dicom.plan.received"
    assert msg.data is not None
    assert msg.data == event.to_json()


# ---------------------------------------------------------------- consumer loop


async def test_handled_events_are_acked(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    events = [plan_event(n) for n in range(3)]
    seen: list[str] = []

    async def handler(event: CloudEvent) -> None:
        seen.append(event.id)

    await publish_events(js, settings, events)
    async with consuming(link, settings, handler):
        await eventually(lambda: settled(js, settings, "worker", 3), message="3 acks")

    assert seen == [e.id for e in events]
    info = await js.consumer_info(settings.stream_name, "worker")
    assert info.num_redelivered == 0
    assert await dead_letter(js, settings, "worker") is None


async def test_consume_function_acks_with_its_own_arguments(
    js: JetStreamContext, settings: RtopsSettings
) -> None:
    # The module-level loop, as a service without a NatsLink would call it.
    seen: list[CloudEvent] = []
    event = plan_event(1)

    async def handler(e: CloudEvent) -> None:
        seen.append(e)

    await publish_events(js, settings, [event])
    stop = asyncio.Event()
    task = asyncio.create_task(
        consume(
            js,
            durable="direct",
            filter_subjects=[f"{settings.subject_prefix}.dicom.>"],
            handler=handler,
            policy=ConsumerPolicy(stream=settings.stream_name, **FAST),
            stop=stop,
            dead_letter_prefix=f"{settings.subject_prefix}.deadletter",
        )
    )
    try:
        await eventually(lambda: settled(js, settings, "direct", 1), message="ack")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [e.id for e in seen] == [event.id]
    assert seen[0] == event


async def test_unparseable_message_is_dead_lettered(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    seen: list[str] = []

    async def handler(event: CloudEvent) -> None:
        seen.append(event.id)

    subject = f"{settings.subject_prefix}.dicom.plan.received"
    await js.publish(subject, b"\x00garbage", headers={"Nats-Msg-Id": "garbage-1"})
    good = plan_event(1)
    await publish_events(js, settings, [good])

    async with consuming(link, settings, handler):
        dead = await eventually(lambda: dead_letter(js, settings, "worker"), message="dead letter")
        await eventually(lambda: settled(js, settings, "worker", 2), message="term and ack")

    assert dead.data == b"\x00garbage"
    assert dead.headers is not None
    assert "not JSON" in dead.headers[DEAD_LETTER_REASON]
    assert dead.headers["Rtops-Original-Subject"] == subject
    assert dead.headers["Rtops-Original-Sequence"] == "1"
    # The bad message neither blocks nor poisons the good one behind it.
    assert seen == [good.id]
    info = await js.consumer_info(settings.stream_name, "worker")
    assert info.num_redelivered == 0


async def test_poison_is_dead_lettered_without_retry(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    calls: list[str] = []

    async def handler(event: CloudEvent) -> None:
        calls.append(event.id)
        raise Poison("plan references an unknown machine")

    event = plan_event(1)
    await publish_events(js, settings, [event])
    async with consuming(link, settings, handler, durable="poisoned"):
        dead = await eventually(
            lambda: dead_letter(js, settings, "poisoned"), message="dead letter"
        )
        await eventually(lambda: settled(js, settings, "poisoned", 1), message="term")

    assert calls == [event.id]
    assert dead.headers is not None
    assert dead.headers[DEAD_LETTER_REASON] == "plan references an unknown machine"
    assert dead.data == event.to_json()
    assert dead.subject == f"{settings.subject_prefix}.deadletter.poisoned"


async def test_failure_is_nakked_and_redelivery_succeeds(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    attempts: list[float] = []

    async def handler(event: CloudEvent) -> None:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("database briefly unavailable")

    await publish_events(js, settings, [plan_event(1)])
    async with consuming(link, settings, handler):
        await eventually(lambda: settled(js, settings, "worker", 1), message="ack on retry")

    assert len(attempts) == 2
    # The nak carried the policy's backoff, not an immediate redelivery.
    assert attempts[1] - attempts[0] >= 0.09
    info = await js.consumer_info(settings.stream_name, "worker")
    assert info.num_redelivered == 0  # acked: nothing left awaiting redelivery
    assert await dead_letter(js, settings, "worker") is None


async def test_a_batch_handler_gets_whole_fetches_and_they_are_acked(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    events = [plan_event(n) for n in range(5)]
    batches: list[list[str]] = []

    async def one(event: CloudEvent) -> None:
        raise AssertionError("a batch that succeeds never goes one by one")

    async def batch(got: list[CloudEvent]) -> None:
        batches.append([e.id for e in got])

    await publish_events(js, settings, events)
    async with consuming(link, settings, one, batch_handler=batch, batch=10):
        await eventually(lambda: settled(js, settings, "worker", 5), message="5 acks")

    assert [i for b in batches for i in b] == [e.id for e in events]
    info = await js.consumer_info(settings.stream_name, "worker")
    assert info.num_redelivered == 0


async def test_a_failed_batch_falls_back_to_one_event_at_a_time(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    """A batch with a garbage message and an event its handler rejects: the rest are applied,
    the garbage and the poison are dead-lettered, nothing waits on them."""
    good = [plan_event(n) for n in range(3)]
    poison = plan_event(99)
    subject = f"{settings.subject_prefix}.dicom.plan.received"
    await publish_events(js, settings, good[:2])
    await js.publish(subject, b"\x00garbage", headers={"Nats-Msg-Id": "garbage-2"})
    await publish_events(js, settings, [poison, good[2]])
    applied: list[str] = []

    async def one(event: CloudEvent) -> None:
        if event.id == poison.id:
            raise Poison("no such plan")
        applied.append(event.id)

    async def batch(got: list[CloudEvent]) -> None:
        # Never reached while the garbage is in the fetch (it fails to parse first); a
        # fetch without it still holds the poison, which fails the whole transaction.
        if poison.id in {e.id for e in got}:
            raise RuntimeError("one bad event rolls back the batch")
        applied.extend(e.id for e in got)

    async with consuming(link, settings, one, batch_handler=batch, batch=10):
        await eventually(lambda: settled(js, settings, "worker", 5), message="5 settled")

    assert applied == [e.id for e in good]
    info = await js.consumer_info(settings.stream_name, "worker")
    assert info.num_redelivered == 0


async def test_gives_up_after_max_deliver(
    link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    calls: list[str] = []

    async def handler(event: CloudEvent) -> None:
        calls.append(event.id)
        raise RuntimeError("still broken")

    event = plan_event(1)
    await publish_events(js, settings, [event])
    async with consuming(link, settings, handler):
        dead = await eventually(lambda: dead_letter(js, settings, "worker"), message="dead letter")
        await eventually(lambda: settled(js, settings, "worker", 1), message="term")

    assert calls == [event.id, event.id]  # max_deliver=2, no third try
    assert dead.headers is not None
    assert dead.headers[DEAD_LETTER_REASON] == "gave up after 2: still broken"
    assert dead.data == event.to_json()


async def test_replicas_sharing_a_durable_split_the_work(
    js: JetStreamContext, settings: RtopsSettings
) -> None:
    events = [plan_event(n) for n in range(20)]
    handled: dict[str, list[str]] = {"a": [], "b": []}

    def handler_for(name: str) -> Callable[[CloudEvent], Awaitable[None]]:
        async def handler(event: CloudEvent) -> None:
            handled[name].append(event.id)
            await asyncio.sleep(0.01)  # a little work, so the other replica's pull is served

        return handler

    async with (
        running_link(settings, "replica-a") as a,
        running_link(settings, "replica-b") as b,
        consuming(a, settings, handler_for("a"), batch=1),
        consuming(b, settings, handler_for("b"), batch=1),
    ):

        async def both_pulling() -> bool:
            try:
                info = await js.consumer_info(settings.stream_name, "worker")
            except NotFoundError:
                return False
            return info.num_waiting >= 2

        await eventually(both_pulling, message="two replicas waiting on the durable")
        await publish_events(js, settings, events)
        await eventually(lambda: settled(js, settings, "worker", 20), message="20 acks")

    everything = handled["a"] + handled["b"]
    assert sorted(everything) == sorted(e.id for e in events)  # each exactly once
    assert handled["a"] and handled["b"], handled


async def test_close_after_consuming_is_prompt(
    nc: NATS, js: JetStreamContext, settings: RtopsSettings
) -> None:
    # Pull requests that expire leave status messages behind in the subscription's queue,
    # which a drain then waits for; an idle consumer produces them every fetch timeout.
    pulls: list[Msg] = []

    async def count_pull(msg: Msg) -> None:
        pulls.append(msg)

    watch = await nc.subscribe(
        f"$JS.API.CONSUMER.MSG.NEXT.{settings.stream_name}.closing", cb=count_pull
    )
    link = NatsLink(settings, name="closing")
    runner = asyncio.create_task(link.run())
    seen = asyncio.Event()

    async def handler(event: CloudEvent) -> None:
        seen.set()

    try:
        await asyncio.wait_for(link.ready.wait(), 15)
        await publish_events(js, settings, [plan_event(1)])
        stop = asyncio.Event()
        policy = ConsumerPolicy(stream=settings.stream_name, **{**FAST, "fetch_timeout_s": 0.05})
        task = asyncio.create_task(
            link.consume(
                durable="closing",
                event_filters=["rtops.dicom.>"],
                handler=handler,
                policy=policy,
                stop=stop,
            )
        )
        await asyncio.wait_for(seen.wait(), 15)
        handled_at = len(pulls)
        await eventually(lambda: len(pulls) >= handled_at + 10, message="idle pull requests")
        stop.set()
        await asyncio.wait_for(task, 10)
        started = time.monotonic()
        # drain() swallows the cancellation of wait_for, so measure rather than expect a raise.
        await asyncio.wait_for(link.close(), 2)
        assert time.monotonic() - started < 1.5, "NatsLink.close() waited on the drain"
    finally:
        await watch.unsubscribe()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if link.nc is not None and not link.nc.is_closed:
            await link.nc.close()


# ---------------------------------------------------------------- outbox


class Base(DeclarativeBase):
    metadata = new_metadata()


class Outbox(OutboxMixin, Base):
    pass


class ProcessedEvent(ProcessedEventMixin, Base):
    pass


@pytest.fixture
def factory(settings: RtopsSettings) -> Iterator[sessionmaker[Session]]:
    with scratch_database(settings, "outboxtest", Base.metadata) as factory:
        yield factory


def queue(factory: sessionmaker[Session], events: list[CloudEvent]) -> None:
    # The return value is tested on its own below; the relay tests must not depend on it.
    with factory.begin() as session:
        for event in events:
            add_to_outbox(session, Outbox, event)


def outbox_rows(factory: sessionmaker[Session]) -> list[Outbox]:
    with factory() as session:
        return list(session.scalars(select(Outbox).order_by(Outbox.id)))


async def published_ids(js: JetStreamContext, settings: RtopsSettings) -> list[str]:
    messages = await stream_messages(js, settings.stream_name)
    return [m.headers["Nats-Msg-Id"] for m in messages if m.headers]


def test_add_to_outbox_stores_one_row_per_event_id(factory: sessionmaker[Session]) -> None:
    first, second = plan_event(1), plan_event(2)
    with factory.begin() as session:
        add_to_outbox(session, Outbox, first)
        add_to_outbox(session, Outbox, first)
        add_to_outbox(session, Outbox, second)
    with factory.begin() as session:  # a replayed transaction, e.g. a re-sent DICOM object
        add_to_outbox(session, Outbox, first)

    rows = outbox_rows(factory)
    assert [r.event_id for r in rows] == [first.id, second.id]
    assert rows[0].subject == first.type
    assert rows[0].body == first.to_json()
    assert rows[0].sent_at is None
    assert rows[0].attempts == 0
    assert outbox_depth(factory, Outbox) == 2


def test_add_to_outbox_says_whether_it_queued(factory: sessionmaker[Session]) -> None:
    first, second = plan_event(1), plan_event(2)
    with factory.begin() as session:
        assert add_to_outbox(session, Outbox, first) is True
        assert add_to_outbox(session, Outbox, first) is False
        assert add_to_outbox(session, Outbox, second) is True
    with factory.begin() as session:
        assert add_to_outbox(session, Outbox, first) is False


def test_rolled_back_transaction_queues_nothing(factory: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), factory.begin() as session:
        add_to_outbox(session, Outbox, plan_event(1))
        raise RuntimeError("state change failed")
    assert outbox_depth(factory, Outbox) == 0


def test_claim_event_stores_one_row_per_consumer_and_event(factory: sessionmaker[Session]) -> None:
    event = plan_event(1)
    with factory.begin() as session:
        claim_event(session, ProcessedEvent, "qa_tracker", event.id)
    with factory.begin() as session:
        claim_event(session, ProcessedEvent, "qa_tracker", event.id)
        claim_event(session, ProcessedEvent, "billing", event.id)
    with factory() as session:
        claimed = session.execute(
            select(ProcessedEvent.consumer, ProcessedEvent.event_id).order_by(
                ProcessedEvent.consumer
            )
        ).all()
    assert [tuple(r) for r in claimed] == [("billing", event.id), ("qa_tracker", event.id)]


def test_claim_events_returns_the_ids_not_claimed_before(factory: sessionmaker[Session]) -> None:
    first, second, third = (plan_event(n).id for n in range(3))
    with factory.begin() as session:
        assert claim_events(session, ProcessedEvent, "qa_tracker", [first, first]) == {first}
    with factory.begin() as session:
        claimed = claim_events(session, ProcessedEvent, "qa_tracker", [first, second, third])
        assert claimed == {second, third}
        assert claim_events(session, ProcessedEvent, "qa_tracker", []) == set()


def test_claim_event_once_per_consumer(factory: sessionmaker[Session]) -> None:
    event = plan_event(1)
    with factory.begin() as session:
        assert claim_event(session, ProcessedEvent, "qa_tracker", event.id) is True
    with factory.begin() as session:
        assert claim_event(session, ProcessedEvent, "qa_tracker", event.id) is False
        # Another consumer handles the same event independently.
        assert claim_event(session, ProcessedEvent, "billing", event.id) is True


async def test_relay_publishes_pending_rows_in_order(
    factory: sessionmaker[Session], link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    events = [plan_event(n) for n in (5, 3, 9, 1, 7)]
    queue(factory, events)
    relay = OutboxRelay(factory, Outbox, link.publish, batch=2)

    assert await relay.drain_once() == 2  # one batch at a time
    assert outbox_depth(factory, Outbox) == 3
    assert await relay.drain_once() == 2
    assert await relay.drain_once() == 1
    assert await relay.drain_once() == 0

    assert await published_ids(js, settings) == [e.id for e in events]
    rows = outbox_rows(factory)
    assert all(r.sent_at is not None for r in rows)
    sent = [r.sent_at for r in rows]
    assert sent == sorted(sent)  # type: ignore[type-var]
    messages = await stream_messages(js, settings.stream_name)
    assert {m.subject for m in messages} == {f"{settings.subject_prefix}.dicom.plan.received"}
    assert [m.data for m in messages] == [e.to_json() for e in events]


async def test_relay_wakes_on_commit(
    factory: sessionmaker[Session], link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    # A long idle poll: only wake() can make the row leave within the wait below.
    relay = OutboxRelay(factory, Outbox, link.publish, idle_poll_s=60)
    task = asyncio.create_task(relay.run())
    event = plan_event(1)

    def nudged_and_sent() -> bool:
        # A wake() that lands while an empty drain is finishing is lost (run() clears the
        # flag after draining), so keep nudging as a committing service would.
        relay.wake()
        return outbox_depth(factory, Outbox) == 0

    try:
        queue(factory, [event])
        await eventually(nudged_and_sent, within=10, message="row sent after wake")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await published_ids(js, settings) == [event.id]


async def test_failed_publish_keeps_rows_until_it_works(
    factory: sessionmaker[Session], link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    events = [plan_event(n) for n in range(6)]
    queue(factory, events)
    broker = {"up": True, "calls": 0}

    async def flaky(subject: str, body: bytes, msg_id: str) -> None:
        broker["calls"] += 1
        if broker["calls"] == 3:
            broker["up"] = False  # NATS goes away in the middle of a batch
        if not broker["up"]:
            raise ConnectionError("not connected to NATS")
        await link.publish(subject, body, msg_id)

    relay = OutboxRelay(factory, Outbox, flaky)
    with pytest.raises(ConnectionError):
        await relay.drain_once()
    with pytest.raises(ConnectionError):
        await relay.drain_once()

    rows = outbox_rows(factory)
    assert [r.sent_at is not None for r in rows] == [True, True] + [False] * 4
    assert [r.attempts for r in rows] == [0, 0, 2, 0, 0, 0]  # only the head row was tried
    assert await published_ids(js, settings) == [e.id for e in events[:2]]

    broker["up"] = True
    assert await relay.drain_once() == 4
    assert outbox_depth(factory, Outbox) == 0
    assert await published_ids(js, settings) == [e.id for e in events]


async def test_republish_after_lost_ack_is_not_duplicated(
    factory: sessionmaker[Session], link: NatsLink, js: JetStreamContext, settings: RtopsSettings
) -> None:
    # The crash window of the outbox: published, but the row was not marked sent.
    events = [plan_event(n) for n in range(3)]
    queue(factory, events)
    lost = {"done": False}

    async def ack_lost_once(subject: str, body: bytes, msg_id: str) -> None:
        await link.publish(subject, body, msg_id)
        if msg_id == events[1].id and not lost["done"]:
            lost["done"] = True
            raise TimeoutError("ack lost")

    relay = OutboxRelay(factory, Outbox, ack_lost_once)
    with pytest.raises(TimeoutError):
        await relay.drain_once()
    assert outbox_depth(factory, Outbox) == 2
    assert await relay.drain_once() == 2

    assert await published_ids(js, settings) == [e.id for e in events]


async def test_relay_survives_a_nats_outage(
    factory: sessionmaker[Session], tmp_path: Path, settings: RtopsSettings
) -> None:
    """A NATS server of the test's own, stopped and restarted on the same port and store."""
    store = tmp_path / "nats-outage"
    server = EmbeddedNats(store, port=0).start()
    own = settings.model_copy(update={"nats_url": server.url})
    events = [plan_event(n) for n in range(6)]

    async def inspect_ids() -> list[str]:
        client = await nats.connect(server.url)
        try:
            return await published_ids(client.jetstream(), own)
        finally:
            await client.close()

    try:
        async with running_link(own, "outage") as link:
            relay = OutboxRelay(factory, Outbox, link.publish, idle_poll_s=0.2, retry_delay_s=0.1)
            task = asyncio.create_task(relay.run())
            try:
                queue(factory, events[:3])
                relay.wake()
                await eventually(
                    lambda: outbox_depth(factory, Outbox) == 0, message="first rows sent"
                )

                server.stop()
                await eventually(lambda: not link.connected, message="link to notice outage")
                queue(factory, events[3:])
                relay.wake()
                await eventually(
                    lambda: outbox_rows(factory)[3].attempts >= 2,
                    message="relay retrying during the outage",
                )
                assert outbox_depth(factory, Outbox) == 3

                server = EmbeddedNats(store, port=server.port).start()
                assert server.url == own.nats_url, "port taken meanwhile; the client can't return"
                await eventually(
                    lambda: outbox_depth(factory, Outbox) == 0,
                    within=30,
                    message="rows sent after NATS came back",
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert await inspect_ids() == [e.id for e in events]
    finally:
        server.stop()


async def test_connect_helper_reaches_the_server(settings: RtopsSettings) -> None:
    client = await connect(settings.resolved_nats_url(), name="probe")
    try:
        assert client.is_connected
        assert (await client.jetstream().account_info()).limits is not None
    finally:
        await client.close()
