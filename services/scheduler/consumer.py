"""What the scheduler reads: image series from the SCP (simulation CTs complete bookings), a
fetched batch per transaction."""

from __future__ import annotations

import asyncio

from services.scheduler.service import CONSUMER, SchedulerService
from shared.consumer import Subscription
from shared.consumer import run_consumer as run_subscription
from shared.events import ImagingAcquired
from shared.jetstream import ConsumeObserver, ConsumerPolicy, NatsLink

SUBSCRIPTION = Subscription(durable=CONSUMER, subjects=(ImagingAcquired.type,), batch=100)


async def run_consumer(
    link: NatsLink,
    service: SchedulerService,
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
