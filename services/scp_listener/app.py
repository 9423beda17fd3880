"""Composition root of the SCP: the DICOM listener, the outbox relay and the quiet-series sweep,
with an HTTP side for health, readiness and metrics."""

from __future__ import annotations

import asyncio
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
from shared.db import make_engine, session_factory
from shared.jetstream import NatsLink
from shared.outbox import OutboxRelay, outbox_depth
from shared.web import background_lifespan, readiness_checks
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

    def start_dicom(app: FastAPI) -> None:
        app.state.dicom_server = scp.start(settings, devices, ingestor, metrics)

    app = create_service_app(
        title="rtops DICOM SCP",
        settings=settings,
        registry=registry,
        readiness=readiness_checks(engine, link),
        routers=[router],
        lifespan=background_lifespan(
            link=link,
            engine=engine,
            tasks=lambda: (relay.run(), sweep()),
            on_start=start_dicom,
            # Stop taking associations first; in-flight C-STOREs finish before the pool closes.
            on_stop=lambda: app.state.dicom_server.shutdown(),
        ),
    )
    app.state.session_factory = factory
    app.state.ingestor = ingestor
    app.state.relay = relay
    app.state.nats = link
    return app
