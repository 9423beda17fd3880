"""Composition root of the billing service: REST API, the durable consumer, the sweep that
re-evaluates open courses, and (from the kit's runtime) the outbox relay."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from services.billing.api import router
from services.billing.consumer import run_consumer
from services.billing.pages import router as pages_router
from services.billing.reconciliation import Reconciliation
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from services.billing.store import AuditLog, Outbox, ProcessedEvent
from shared.periodic import every
from shared.runtime import Runtime
from shared.tables import KitTables

SERVICE = "billing"
TABLES = KitTables(Outbox, ProcessedEvent, AuditLog)


def build_service(settings: BillingSettings, runtime: Runtime) -> BillingService:
    return BillingService(
        factory=runtime.factory,
        rules=settings.rules(),
        settings=settings.engine_settings(),
        payer=settings.payer(),
        gap_days=settings.billing_course_gap_days,
        on_commit=runtime.relay.wake,
    )


def create_app(
    settings: BillingSettings | None = None,
    *,
    runtime: Runtime | None = None,
    service: BillingService | None = None,
    background: bool = True,
) -> FastAPI:
    """The billing service's app. ``background=False`` serves the REST API only: no NATS
    link, consumer, sweep or relay (what REST tests build)."""
    settings = settings or BillingSettings()
    runtime = runtime or Runtime.create(SERVICE, settings, TABLES)
    service = service or build_service(settings, runtime)
    app = runtime.app(
        title="rtops billing",
        routers=[router, pages_router],
        tasks=(
            lambda: (
                run_consumer(runtime.link, service, metrics=runtime.consumer_metrics),
                runtime.inbox_pruning(),
                every(
                    settings.billing_sweep_interval_s,
                    "billing: re-evaluate open courses",
                    service.reevaluate_open,
                ),
            )
        )
        if background
        else None,
    )
    app.state.billing_service = service
    app.state.reconciliation = Reconciliation(
        factory=runtime.factory, rules=service.rules, payer=service.payer, clock=service.now
    )
    return app


def api_app(
    settings: BillingSettings, factory: sessionmaker[Session], service: BillingService
) -> FastAPI:
    """The REST app over a given database and service, with nothing in the background."""
    runtime = Runtime.create(SERVICE, settings, TABLES, engine=factory.kw["bind"])
    return create_app(settings, runtime=runtime, service=service, background=False)
