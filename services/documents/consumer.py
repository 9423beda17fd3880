"""Which events the documents service reads, and how they reach ``DocumentsService``: plans,
treatment records and Encapsulated PDFs from the SCP; a fetched batch per transaction."""

from __future__ import annotations

import asyncio

from services.documents.service import CONSUMER, EVENT_TYPES, DocumentsService
from shared.consumer import Subscription
from shared.consumer import run_consumer as run_subscription
from shared.jetstream import ConsumeObserver, ConsumerPolicy, NatsLink

CONSUMER_BATCH = 100
SUBSCRIPTION = Subscription(durable=CONSUMER, subjects=EVENT_TYPES, batch=CONSUMER_BATCH)


async def run_consumer(
    link: NatsLink,
    service: DocumentsService,
    *,
    policy: ConsumerPolicy | None = None,
    stop: asyncio.Event | None = None,
    metrics: ConsumeObserver | None = None,
) -> None:
    await run_subscription(
        link,
        SUBSCRIPTION,
        apply=service.apply,
        apply_batch=service.apply_batch,
        policy=policy,
        stop=stop,
        metrics=metrics,
    )
