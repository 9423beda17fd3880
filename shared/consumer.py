"""The consumer runner every service uses: which events a service reads (its durable name and
filter subjects), and how they reach its use cases (one at a time, or a fetched batch in one
transaction), on top of ``shared.jetstream``'s ack / nak / dead-letter policy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from shared.events import CloudEvent
from shared.jetstream import ConsumerPolicy, NatsLink

log = structlog.get_logger(__name__)

Apply = Callable[[CloudEvent], object]
ApplyBatch = Callable[[Sequence[CloudEvent]], object]


@dataclass(frozen=True)
class Subscription:
    """A service's durable consumer: its name (replicas sharing it share the work), the event
    types it reads (patterns such as ``rtops.dicom.>``), and how many events one fetch, and so
    one batch transaction, holds."""

    durable: str
    subjects: tuple[str, ...]
    batch: int = 200

    def __post_init__(self) -> None:
        for subject in self.subjects:
            # Dead letters live in the same stream under rtops.deadletter.*: a catch-all
            # filter would feed a service its own (and others') dead letters.
            if subject in (">", "rtops.>") or subject.startswith("rtops.deadletter"):
                raise ValueError(
                    f"{self.durable}: filter {subject!r} would include the dead letters; "
                    "name the event types the service reads, e.g. 'rtops.dicom.>'"
                )
        if not self.subjects:
            raise ValueError(f"{self.durable}: a subscription needs at least one subject")


async def run_consumer(
    link: NatsLink,
    subscription: Subscription,
    *,
    apply: Apply,
    apply_batch: ApplyBatch | None = None,
    policy: ConsumerPolicy | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Feed the subscription's events to the service until ``stop`` (or cancellation).

    ``apply`` and ``apply_batch`` are the service's blocking use cases (they run in a thread);
    each must be idempotent (redeliveries happen) and commit before it returns, since the
    message is acked then. With ``apply_batch`` a fetch is applied in one call; if that raises,
    its events go through ``apply`` one by one, so one bad event never holds up the rest.
    """

    async def one(event: CloudEvent) -> None:
        await asyncio.to_thread(apply, event)

    async def many(events: list[CloudEvent]) -> None:
        assert apply_batch is not None
        await asyncio.to_thread(apply_batch, events)

    await link.consume(
        durable=subscription.durable,
        event_filters=subscription.subjects,
        handler=one,
        batch_handler=many if apply_batch is not None else None,
        policy=policy or ConsumerPolicy(batch=subscription.batch),
        stop=stop,
    )
