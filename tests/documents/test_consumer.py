"""The documents service end to end on real NATS (one test: it is slow): plans and treatment
records published twice to the test's stream reach the service through its durable consumer;
the letter is drafted once; ``rtops.documents.plan.versioned`` and
``rtops.documents.treatment.flagged`` come back through the outbox relay into the stream."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from services.documents.consumer import run_consumer
from services.documents.service import DocumentsService
from services.documents.store import LetterRow, Outbox, RecordRow
from shared.events import parse_event
from shared.events.documents import PlanVersioned, TreatmentFlagged
from shared.jetstream import ConsumerPolicy, NatsLink, subject_for
from shared.outbox import OutboxRelay
from tests.documents.conftest import Db
from tests.documents.events import fraction, plan, weekday
from tests.qa_tracker.test_fraction_assessed import until


async def test_events_through_the_consumer_version_flag_and_draft_once(
    service: DocumentsService, documents_db: Db
) -> None:
    settings, factory = documents_db
    link = NatsLink(settings, name="documents-e2e-test")
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
        events = [plan(1, approved=False), *[fraction(i + 1, weekday(i)) for i in range(3)]]
        for event in events + events:  # sent twice: JetStream or the inbox drops them
            await link.publish(event.type, event.to_json(), event.id)

        def letters() -> int:
            with factory() as session:
                return int(session.scalar(select(func.count()).select_from(LetterRow)) or 0)

        def flagged() -> int:
            # Read the records, not the outbox: the relay prunes the rows it has sent.
            with factory() as session:
                return len(
                    session.scalars(
                        select(RecordRow.uid).where(RecordRow.flag_reasons.is_not(None))
                    ).all()
                )

        await until(lambda: letters() == 1 and flagged() == 3, "the letter and three flags")
        js = link.js
        assert js is not None
        sub = await js.subscribe(subject_for(settings, "rtops.documents.>"), ordered_consumer=True)
        seen: dict[str, int] = {}
        while sum(seen.values()) < 4:
            event = parse_event((await sub.next_msg(timeout=10)).data)
            seen[event.type] = seen.get(event.type, 0) + 1
        assert seen == {PlanVersioned.type: 1, TreatmentFlagged.type: 3}
        assert letters() == 1
        await sub.unsubscribe()
    finally:
        stop.set()
        relay.cancel()
        await asyncio.wait_for(consumer, 10)
        runner.cancel()
        await link.close()
