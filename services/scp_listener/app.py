"""Composition root of the SCP: the DICOM listener and the quiet-series sweep, with an HTTP side
for health, readiness, metrics and the object API; the kit's runtime brings the database,
the NATS link and the outbox relay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from services.scp_listener import scp
from services.scp_listener.api import router
from services.scp_listener.devices import DeviceRegistry
from services.scp_listener.metrics import ScpMetrics
from services.scp_listener.objectstore import ObjectStore
from services.scp_listener.pages import router as pages_router
from services.scp_listener.service import Ingestor
from services.scp_listener.settings import ScpSettings
from services.scp_listener.store import AuditLog, Outbox, ProcessedEvent
from shared.outbox import outbox_depth
from shared.periodic import every
from shared.runtime import Runtime
from shared.tables import KitTables

SERVICE = "scp_listener"
TABLES = KitTables(Outbox, ProcessedEvent, AuditLog)


def create_app(
    settings: ScpSettings | None = None,
    *,
    runtime: Runtime | None = None,
    background: bool = True,
) -> FastAPI:
    """The SCP's app. ``background=False`` serves the HTTP API only: no DICOM listener, NATS
    link, sweep or relay (what REST tests build)."""
    settings = settings or ScpSettings()
    runtime = runtime or Runtime.create(SERVICE, settings, TABLES)
    registry = DeviceRegistry(settings.scp_device_registry)
    metrics = ScpMetrics(runtime.registry)
    metrics.track_outbox(lambda: outbox_depth(runtime.factory, Outbox))
    ingestor = Ingestor(
        factory=runtime.factory,
        store=ObjectStore(settings.object_store()),
        clinic_tz=settings.clinic_timezone,
        on_commit=runtime.relay.wake,
        max_sequence_depth=settings.scp_max_sequence_depth,
    )
    quiet = timedelta(seconds=settings.scp_series_quiet_s)

    def sweep() -> None:
        ingestor.publish_quiet_series(now=datetime.now(UTC), quiet=quiet)

    def start_dicom(app: FastAPI) -> None:
        app.state.dicom_server = scp.start(settings, registry, ingestor, metrics)
        scp.reload_on_sighup(registry)

    app = runtime.app(
        title="rtops DICOM SCP",
        routers=[router, pages_router],
        tasks=(
            lambda: (
                every(settings.scp_sweep_interval_s, "quiet image series sweep", sweep),
                every(
                    settings.scp_device_registry_poll_s,
                    "device registry reload",
                    registry.reload_if_changed,
                ),
            )
        )
        if background
        else None,
        on_start=start_dicom,
        # Stop taking associations first; in-flight C-STOREs finish before the pool closes.
        on_stop=lambda: app.state.dicom_server.shutdown(),
    )
    app.state.ingestor = ingestor
    app.state.device_registry = registry
    app.state.problems = metrics.problems  # the problems page reads what the DICOM side records
    return app
