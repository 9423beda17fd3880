"""The QA tracker's durable JetStream consumer: DICOM events -> ``QaService.apply``."""

from __future__ import annotations

import asyncio

import structlog

from services.qa_tracker.service import CONSUMER, QaService
from shared.events import CloudEvent
from shared.jetstream import ConsumerPolicy, NatsLink

log = structlog.get_logger(__name__)
# Events per fetch and per transaction: a batch rebuilds each of its patients once.
CONSUMER_BATCH = 200


async def run_consumer(
    link: NatsLink,
    service: QaService,
    *,
    policy: ConsumerPolicy | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Every ``rtops.dicom.*`` event; those the tracker does not use are acknowledged. A
    failing handler is redelivered with backoff, then dead-lettered (shared.jetstream)."""

    async def handle(event: CloudEvent) -> None:
        applied = await asyncio.to_thread(service.apply, event)
        if not applied:
            log.debug("event already applied", event_id=event.id, type=event.type)

    async def handle_batch(events: list[CloudEvent]) -> None:
        await asyncio.to_thread(service.apply_batch, events)

    await link.consume(
        durable=CONSUMER,
        event_filter="rtops.dicom.>",
        handler=handle,
        batch_handler=handle_batch,
        policy=policy or ConsumerPolicy(batch=CONSUMER_BATCH),
        stop=stop,
    )
