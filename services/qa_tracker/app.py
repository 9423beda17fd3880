"""Composition root of the QA tracker: REST API, the durable consumer, the overdue sweep and
the outbox relay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.api import router
from services.qa_tracker.consumer import run_consumer
from services.qa_tracker.policy import load_policy
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Outbox
from shared.db import make_engine, session_factory
from shared.jetstream import NatsLink
from shared.outbox import OutboxRelay, outbox_info
from shared.web import ReadinessCheck, background_lifespan, readiness_checks
from shared.web import create_app as create_service_app

SERVICE = "qa_tracker"
log = structlog.get_logger(__name__)


def create_app(settings: QaSettings | None = None) -> FastAPI:
    settings = settings or QaSettings()
    policy = load_policy(
        settings.qa_policy, zone=settings.clinic_timezone, calendar=settings.clinic_calendar
    )
    engine = make_engine(settings, SERVICE)
    factory = session_factory(engine, **outbox_info(Outbox, SERVICE))
    link = NatsLink(settings, name=SERVICE)
    relay = OutboxRelay(factory, Outbox, link.publish)
    service = QaService(
        factory=factory,
        policy=policy,
        imaging_devices=settings.qa_imaging_devices,
        digest_hour=settings.qa_digest_hour,
        on_commit=relay.wake,
    )

    async def sweep() -> None:
        while True:
            try:
                await asyncio.to_thread(service.publish_overdue)
                await asyncio.to_thread(service.publish_digests)
            except Exception as exc:
                log.warning("overdue sweep failed; will retry", error=str(exc))
            await asyncio.sleep(settings.qa_sweep_interval_s)

    return api_app(
        settings,
        factory,
        service,
        readiness=readiness_checks(engine, link),
        lifespan=background_lifespan(
            link=link,
            engine=engine,
            tasks=lambda: (relay.run(), sweep(), run_consumer(link, service)),
        ),
    )


def api_app(
    settings: QaSettings,
    factory: sessionmaker[Session],
    service: QaService,
    *,
    readiness: dict[str, ReadinessCheck] | None = None,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    """The REST app over a given service; without a lifespan (tests, the benchmark) it runs
    no consumer, sweep or relay."""
    app = create_service_app(
        title="rtops QA tracker",
        settings=settings,
        registry=CollectorRegistry(),
        readiness=readiness or {},
        routers=[router],
        lifespan=lifespan,
    )
    app.state.session_factory = factory
    app.state.qa_service = service
    return app
