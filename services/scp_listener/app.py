"""Composition root of the SCP: the DICOM listener and the quiet-series sweep, with an HTTP side
for health, readiness, metrics and the object API; the kit's runtime brings the database,
the NATS link and the outbox relay. With ``processes`` > 1 this process also starts and
watches the other SCP processes (processes.py), and gives each of them their share of the
connections it accepts on its DICOM port(s)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from fastapi import FastAPI

from services.scp_listener import reconcile, scp, tls
from services.scp_listener.api import router
from services.scp_listener.content_locks import shared_locks
from services.scp_listener.devices import DeviceRegistry
from services.scp_listener.metrics import ScpMetrics
from services.scp_listener.objectstore import ObjectStore
from services.scp_listener.pages import router as pages_router
from services.scp_listener.processes import (
    Balancer,
    WorkerInbox,
    WorkerPool,
    wait_for_associations,
)
from services.scp_listener.service import LOCK_STRIPES, Ingestor
from services.scp_listener.settings import ScpSettings
from services.scp_listener.store import AuditLog, Outbox, ProcessedEvent
from shared.outbox import outbox_depth
from shared.periodic import every
from shared.runtime import Runtime
from shared.tables import KitTables

log = structlog.get_logger(__name__)

SERVICE = "scp_listener"
TABLES = KitTables(Outbox, ProcessedEvent, AuditLog)


def create_app(
    settings: ScpSettings | None = None,
    *,
    runtime: Runtime | None = None,
    background: bool = True,
    processes: int = 1,
    cpus: Sequence[int] = (),
) -> FastAPI:
    """The SCP's app. ``background=False`` serves the HTTP API only: no DICOM listener, NATS
    link, sweep or relay (what REST tests build). ``processes``: SCP processes serving the
    DICOM port(s), this one included (``python -m services.scp_listener`` passes
    ``RTOPS_SCP_PROCESSES``); set ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is
    imported for /metrics to count every process's stores. ``cpus``: each process's CPU, this
    one's (already pinned) first; empty: not pinned (cpu_pinning.py)."""
    settings = settings or ScpSettings()
    # Checked now, so a bad certificate or key is one line and exit status 2 at start.
    ssl_context = tls.server_context(settings)
    runtime = runtime or Runtime.create(SERVICE, settings, TABLES)
    registry = DeviceRegistry(settings.scp_device_registry)
    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics = ScpMetrics(
        runtime.registry,
        summed_from=Path(multiprocess_dir) if multiprocess_dir and processes > 1 else None,
    )
    metrics.track_outbox(lambda: outbox_depth(runtime.factory, Outbox))
    ingestor = Ingestor(
        factory=runtime.factory,
        image_engine=runtime.relaxed_engine,
        store=ObjectStore(settings.object_store()),
        clinic_tz=settings.clinic_timezone,
        on_commit=runtime.relay.wake,
        max_sequence_depth=settings.scp_max_sequence_depth,
        # Several processes may store the same bytes at once: their stripes are shared.
        locks=shared_locks(settings.object_store(), LOCK_STRIPES) if processes > 1 else None,
    )
    quiet = timedelta(seconds=settings.scp_series_quiet_s)

    def sweep() -> None:
        # Here only, in the parent: workers publish at release, where the conditional claim
        # in Ingestor._publish_series lets one publication win.
        ingestor.publish_quiet_series(now=datetime.now(UTC), quiet=quiet)

    def start_dicom(app: FastAPI) -> None:
        # Start-up reconciliation (docs/scp_durability.md): once, in this parent process,
        # before any DICOM port opens; its periodic rounds then run here too and cover the
        # workers' objects (one object store; the content locks are shared by the processes).
        reconcile.run_at_start(settings, ingestor)
        # With several processes this one accepts every connection and gives each to the
        # least busy process (processes.py).
        balancer = Balancer() if processes > 1 else None
        listeners = scp.listen(
            settings,
            registry,
            ingestor,
            metrics,
            tls_port=settings.scp_tls_port,
            ssl_context=ssl_context,
            dispatch=balancer.dispatch if balancer else None,
            on_connection_end=(lambda: balancer.ended(0)) if balancer else None,
        )
        app.state.dicom_server = listeners.plain
        app.state.dicom_listeners = listeners
        app.state.scp_balancer = balancer
        pool: WorkerPool | None = None
        if balancer is not None:
            inbox = WorkerInbox(runtime.relay.wake, metrics.problems, balancer)
            inbox.attach(asyncio.get_running_loop())
            pool = WorkerPool(
                settings,
                processes - 1,
                tls=listeners.tls is not None,
                inbox=inbox,
                balancer=balancer,
                cpus=cpus[1:],
            )
            pool.start()
        if cpus:
            # process i on cpus[i]; more processes than CPUs share them in turn
            log.info("SCP processes pinned to CPUs", cpus=list(cpus))
        app.state.scp_workers = pool
        scp.reload_on_sighup(registry, also=pool.forward if pool else None)

    def stop_dicom() -> None:
        # Stop taking associations first; in-flight C-STOREs finish before the pool closes.
        listeners = app.state.dicom_listeners
        listeners.shutdown()
        if app.state.scp_workers is not None:
            app.state.scp_workers.stop()
        wait_for_associations(listeners)
        reconcile.stop_confirming(ingestor)

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
        on_stop=stop_dicom,
    )
    app.state.ingestor = ingestor
    app.state.device_registry = registry
    app.state.problems = metrics.problems  # the problems page reads what the DICOM side records
    return app
