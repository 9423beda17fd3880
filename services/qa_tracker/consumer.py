"""Which events the QA tracker reads, and how they reach ``QaService``: every DICOM event
(those it has no use for are acknowledged), a fetched batch per transaction."""

from __future__ import annotations

import asyncio

from services.qa_tracker.service import CONSUMER, QaService
from shared.consumer import Subscription
from shared.consumer import run_consumer as run_subscription
from shared.jetstream import ConsumeObserver, ConsumerPolicy, NatsLink

# Events per fetch and per transaction: a batch rebuilds each of its patients once.
CONSUMER_BATCH = 200
SUBSCRIPTION = Subscription(durable=CONSUMER, subjects=("rtops.dicom.>",), batch=CONSUMER_BATCH)


async def run_consumer(
    link: NatsLink,
    service: QaService,
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
