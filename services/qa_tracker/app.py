"""Composition root of the QA tracker: REST API, the durable consumer, the overdue and digest
sweep, and (from the kit's runtime) the outbox relay."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import Gauge
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.api import router
from services.qa_tracker.consumer import run_consumer
from services.qa_tracker.pages import router as pages_router
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import AuditLog, Outbox, ProcessedEvent
from shared.periodic import every
from shared.runtime import Runtime
from shared.tables import KitTables

SERVICE = "qa_tracker"
TABLES = KitTables(Outbox, ProcessedEvent, AuditLog)


def create_app(
    settings: QaSettings | None = None,
    *,
    runtime: Runtime | None = None,
    service: QaService | None = None,
    background: bool = True,
) -> FastAPI:
    """The QA tracker's app. ``background=False`` serves the REST API only: no NATS link,
    consumer, sweep or relay (what REST tests and the benchmark build)."""
    settings = settings or QaSettings()
    runtime = runtime or Runtime.create(SERVICE, settings, TABLES)
    service = service or QaService(
        factory=runtime.factory,
        policy=settings.review_policy(),
        imaging_devices=settings.qa_imaging_devices,
        digest_hour=settings.qa_digest_hour,
        on_commit=runtime.relay.wake,
    )

    def overdue_now() -> float:
        try:
            return float(service.overdue_count())
        except Exception:  # database away: the scrape still answers, /readyz says why
            return float("nan")

    Gauge(
        "rtops_qa_overdue_reviews",
        "imaged fractions whose review is past its due time, undocumented",
        registry=runtime.registry,
    ).set_function(overdue_now)

    def sweep() -> None:
        service.publish_overdue()
        service.publish_digests()

    app = runtime.app(
        title="rtops QA tracker",
        routers=[router, pages_router],
        tasks=(
            lambda: (
                run_consumer(runtime.link, service, metrics=runtime.consumer_metrics),
                runtime.inbox_pruning(),
                every(settings.qa_sweep_interval_s, "qa overdue and digest sweep", sweep),
            )
        )
        if background
        else None,
    )
    app.state.qa_service = service
    return app


def api_app(settings: QaSettings, factory: sessionmaker[Session], service: QaService) -> FastAPI:
    """The REST app over a given database and service, with nothing in the background."""
    runtime = Runtime.create(SERVICE, settings, TABLES, engine=factory.kw["bind"])
    return create_app(settings, runtime=runtime, service=service, background=False)
