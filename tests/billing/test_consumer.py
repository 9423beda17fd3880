"""Billing end to end on real NATS (one test: it is slow): events published to the test's
JetStream stream reach the service through its durable consumer, charges are derived, and
``rtops.billing.charge.posted`` comes back through the outbox relay into the stream."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from services.billing.consumer import run_consumer
from services.billing.service import BillingService
from services.billing.store import ChargeRow, Outbox
from shared.events import ChargePosted, parse_event
from shared.jetstream import ConsumerPolicy, NatsLink, subject_for
from shared.outbox import OutboxRelay
from tests.billing.conftest import Db
from tests.billing.events import (
    MONDAY,
    PID,
    assessed_event,
    billing_plan_event,
    note_event,
    treatment,
    weekdays,
)
from tests.events import sim_completed_event
from tests.qa_tracker.test_fraction_assessed import until


async def test_events_through_the_consumer_become_charges_and_posted_events(
    service: BillingService, billing_db: Db
) -> None:
    settings, factory = billing_db
    link = NatsLink(settings, name="billing-e2e-test")
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
        events = [
            billing_plan_event(fractions=6),
            *treatment(6),
            *[assessed_event(i + 1, d) for i, d in enumerate(weekdays(6))],
            note_event(MONDAY),
            note_event(MONDAY + timedelta(days=7)),
            sim_completed_event(pid=PID, day="2026-02-02"),
        ]
        for event in events + events[:4]:  # sent twice: JetStream or the inbox drops them
            await link.publish(event.type, event.to_json(), event.id)

        def cpts() -> list[str]:
            with factory() as session:
                return sorted(session.scalars(select(ChargeRow.cpt)))

        await until(lambda: cpts().count("77387") == 6 and "77285" in cpts(), "the charges")
        assert cpts().count("77427") == 1  # CMS Pub 100-04 Ch. 13 s. 70: 6 fractions, 1 unit
        assert cpts().count("77407") == 6

        # What the relay published is in the stream, one posted event per charge.
        js = link.js
        assert js is not None
        sub = await js.subscribe(subject_for(settings, ChargePosted.type), ordered_consumer=True)
        posted: dict[str, ChargePosted] = {}
        with factory() as session:
            total = len(session.scalars(select(ChargeRow.id)).all())
        while len(posted) < total:
            message = await sub.next_msg(timeout=10)
            event = parse_event(message.data)
            assert isinstance(event.data, ChargePosted)
            posted[event.data.charge_id] = event.data
        await sub.unsubscribe()
        assert sorted(p.cpt for p in posted.values()) == cpts()
        # Every event acked: one durable "billing", or one per subject on NATS before 2.10.
        for _ in range(100):
            durables = [
                c
                for c in await js.consumers_info(settings.stream_name)
                if c.name == "billing" or c.name.startswith("billing_")
            ]
            if durables and all(c.num_ack_pending == c.num_pending == 0 for c in durables):
                break
            await asyncio.sleep(0.05)
        assert durables and all(c.num_ack_pending == c.num_pending == 0 for c in durables)
    finally:
        stop.set()
        relay.cancel()
        await asyncio.wait_for(consumer, 10)
        runner.cancel()
        await link.close()
