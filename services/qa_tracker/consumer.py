"""The QA tracker's durable JetStream consumer: DICOM events -> ``QaService.apply``."""

from __future__ import annotations

import asyncio

import structlog

from services.qa_tracker.service import CONSUMER, QaService
from shared.events import CloudEvent
from shared.jetstream import ConsumerPolicy, NatsLink

log = structlog.get_logger(__name__)


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

    await link.consume(
        durable=CONSUMER, event_filter="rtops.dicom.>", handler=handle, policy=policy, stop=stop
    )
