"""Composition root of the scheduler: REST API and pages, the durable consumer of simulation
CTs, and (from the kit's runtime) the outbox relay."""

from __future__ import annotations

from pathlib import Path

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.scheduler.api import router
from services.scheduler.consumer import run_consumer
from services.scheduler.schemas import Resources
from services.scheduler.service import SchedulerService, SlotConflict
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import AuditLog, Outbox, ProcessedEvent
from shared.calendar import clinic_calendar
from shared.runtime import Runtime
from shared.settings import SettingError
from shared.tables import KitTables
from shared.web import problem

SERVICE = "scheduler"
TABLES = KitTables(Outbox, ProcessedEvent, AuditLog)


def build_service(settings: SchedulerSettings, runtime: Runtime) -> SchedulerService:
    return SchedulerService(
        factory=runtime.factory,
        calendar=clinic_calendar(settings),
        policy=settings.policy(),
        on_commit=runtime.relay.wake,
        batch_time_limit_s=settings.scheduler_batch_time_limit_s,
        batch_workers=settings.scheduler_batch_workers,
    )


def load_resources(path: Path) -> Resources:
    """The seed file, or ``SettingError`` naming what is wrong in it."""
    try:
        return Resources.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise SettingError(f"RTOPS_SCHEDULER_RESOURCES {path}: {exc}") from exc


async def _slot_conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SlotConflict)
    return problem(409, exc.title, str(exc), instance=request.url.path, violations=exc.violations)


def create_app(
    settings: SchedulerSettings | None = None,
    *,
    runtime: Runtime | None = None,
    service: SchedulerService | None = None,
    background: bool = True,
) -> FastAPI:
    """The scheduler's app. ``background=False`` serves the REST API only (REST tests)."""
    from services.scheduler.pages import router as pages_router

    settings = settings or SchedulerSettings()
    runtime = runtime or Runtime.create(SERVICE, settings, TABLES)
    service = service or build_service(settings, runtime)

    def on_start(_app: FastAPI) -> None:
        if settings.scheduler_resources:
            service.seed(load_resources(settings.scheduler_resources))

    app = runtime.app(
        title="rtops scheduler",
        routers=[router, pages_router],
        tasks=(
            lambda: (
                run_consumer(runtime.link, service, metrics=runtime.consumer_metrics),
                runtime.inbox_pruning(),
            )
        )
        if background
        else None,
        on_start=on_start if background else None,
    )
    app.add_exception_handler(SlotConflict, _slot_conflict)
    app.state.scheduler_service = service
    return app
