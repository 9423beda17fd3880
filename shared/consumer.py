"""The consumer runner every service uses: which events a service reads (its durable name and
filter subjects), and how they reach its use cases (one at a time, or a fetched batch in one
transaction), on top of ``shared.jetstream``'s ack / nak / dead-letter policy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.events import CloudEvent
from shared.jetstream import ConsumeObserver, ConsumerPolicy, NatsLink

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


class ConsumerMetrics:
    """Prometheus metrics of a service's consumers (one set per registry): events by outcome
    and event type, batch time, and the backlog not yet delivered."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "rtops_consumer_events",
            "events settled by a consumer: applied, retried (nak) or dead_lettered",
            ["durable", "subject", "outcome"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "rtops_consumer_batch_seconds",
            "time to apply one fetched batch in one transaction",
            ["durable"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.batch_size = Histogram(
            "rtops_consumer_batch_events",
            "events per applied batch",
            ["durable"],
            registry=registry,
            buckets=(1, 5, 20, 50, 100, 200, 500),
        )
        self.lag_gauge = Gauge(
            "rtops_consumer_lag",
            "events in the stream not yet delivered to the consumer (its backlog)",
            ["durable"],
            registry=registry,
        )

    def settled(self, durable: str, subject: str, outcome: str) -> None:
        self.events.labels(durable, subject, outcome).inc()

    def batch(self, durable: str, size: int, seconds: float) -> None:
        self.batch_seconds.labels(durable).observe(seconds)
        self.batch_size.labels(durable).observe(size)

    def lag(self, durable: str, pending: int) -> None:
        self.lag_gauge.labels(durable).set(pending)


async def run_consumer(
    link: NatsLink,
    subscription: Subscription,
    *,
    apply: Apply,
    apply_batch: ApplyBatch | None = None,
    policy: ConsumerPolicy | None = None,
    stop: asyncio.Event | None = None,
    metrics: ConsumeObserver | None = None,
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
        observer=metrics,
    )
