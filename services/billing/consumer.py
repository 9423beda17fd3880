"""Which events billing reads, and how they reach ``BillingService``: plans, treatment records
(RT Beams, RT Ion Beams and RT Brachy share one event type) and summaries from the SCP, the QA
tracker's fraction states, completed simulations, and the documents service's regroupings and
signed notes; a fetched batch per transaction."""

from __future__ import annotations

import asyncio

from services.billing.intake import EVENT_TYPES
from services.billing.service import CONSUMER, BillingService
from shared.consumer import Subscription
from shared.consumer import run_consumer as run_subscription
from shared.jetstream import ConsumeObserver, ConsumerPolicy, NatsLink

# Events per fetch and per transaction: a batch evaluates each of its patients once, so under a
# backlog (a restart, an outage) a larger fetch evaluates a patient once for several of its
# events: 1,000 took a third less CPU than 200 over the benchmark's replay (bench/README.md).
# In steady traffic a fetch returns what has arrived, a few events. A batch of 1,000 applies in
# about a second, far inside the consumer's ack wait (60 s), and within the pull consumer's
# default of 1,000 unacknowledged messages.
CONSUMER_BATCH = 1000
SUBSCRIPTION = Subscription(durable=CONSUMER, subjects=EVENT_TYPES, batch=CONSUMER_BATCH)


async def run_consumer(
    link: NatsLink,
    service: BillingService,
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
