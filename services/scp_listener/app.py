"""Composition root of the SCP: the DICOM listener, the outbox relay and the quiet-series sweep,
with an HTTP side for health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.scp_listener import scp
from services.scp_listener.api import router
from services.scp_listener.devices import load_registry
from services.scp_listener.metrics import ScpMetrics
from services.scp_listener.objectstore import ObjectStore
from services.scp_listener.service import Ingestor
from services.scp_listener.settings import ScpSettings
from services.scp_listener.store import Outbox
from shared.db import make_engine, ping, session_factory
from shared.jetstream import NatsLink
from shared.outbox import OutboxRelay, outbox_depth
from shared.web import create_app as create_service_app

SERVICE = "scp_listener"
log = structlog.get_logger(__name__)


def create_app(settings: ScpSettings | None = None) -> FastAPI:
    settings = settings or ScpSettings()
    devices = load_registry(settings.scp_device_registry)
    engine = make_engine(settings, SERVICE)
    factory = session_factory(engine)
    registry = CollectorRegistry()
    metrics = ScpMetrics(registry)
    metrics.track_outbox(lambda: outbox_depth(factory, Outbox))
    link = NatsLink(settings, name=SERVICE)
    relay = OutboxRelay(factory, Outbox, link.publish)
    ingestor = Ingestor(
        factory=factory,
        store=ObjectStore(settings.object_store()),
        clinic_tz=settings.clinic_timezone,
        on_commit=relay.wake,
    )

    async def sweep() -> None:
        quiet = timedelta(seconds=settings.scp_series_quiet_s)
        while True:
            try:
                await asyncio.to_thread(
                    ingestor.publish_quiet_series, now=datetime.now(UTC), quiet=quiet
                )
            except Exception as exc:
                log.warning("series sweep failed; will retry", error=str(exc))
            await asyncio.sleep(settings.scp_sweep_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = scp.start(settings, devices, ingestor, metrics)
        app.state.dicom_server = server
        tasks = [asyncio.create_task(t) for t in (link.run(), relay.run(), sweep())]
        try:
            yield
        finally:
            server.shutdown()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await link.close()
            engine.dispose()

    async def database() -> None:
        await asyncio.to_thread(ping, engine)

    app = create_service_app(
        title="rtops DICOM SCP",
        settings=settings,
        registry=registry,
        readiness={"database": database, "nats": link.check},
        routers=[router],
        lifespan=lifespan,
    )
    app.state.session_factory = factory
    app.state.ingestor = ingestor
    app.state.relay = relay
    app.state.nats = link
    return app
