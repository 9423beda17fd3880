"""Every service's REST app built in-process (no background tasks, no DICOM), for the probes that
run the same checks across all of them: hardening, schemathesis, the authorization matrix.
A new service is added here once and every such probe covers it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from shared.settings import RtopsSettings
from tests.events import Clock, at

SERVICES = ("scp_listener", "qa_tracker", "scheduler", "documents", "billing")


@contextmanager
def service_app(name: str, base: dict[str, object]) -> Iterator[tuple[FastAPI, RtopsSettings]]:
    """``name``'s REST app on a migrated database of its own (dropped afterwards)."""
    clock = Clock(at("2026-11-30", "07:00"))
    if name == "scp_listener":
        from tests.support import scp_rest_app, scp_settings

        settings: Any = scp_settings(base)
        with scp_rest_app(settings) as app:
            yield app, settings
        return
    if name == "qa_tracker":
        from services.qa_tracker.app import api_app as qa_app
        from tests.qa_tracker.factories import make_service as qa_service
        from tests.qa_tracker.factories import qa_database

        with qa_database(base) as (settings, factory):
            yield qa_app(settings, factory, qa_service(settings, factory, clock)), settings
        return
    if name == "scheduler":
        from services.scheduler.app import SERVICE, TABLES, create_app, load_resources
        from services.scheduler.service import SchedulerService
        from services.scheduler.settings import DEFAULT_RESOURCES, SchedulerSettings
        from shared.calendar import clinic_calendar
        from shared.runtime import Runtime
        from tests.databases import service_database

        settings = SchedulerSettings(**base)
        with service_database(settings, SERVICE, TABLES) as factory:
            # the batch solver gets one second: probes send many requests, not hard ones
            service = SchedulerService(
                factory=factory,
                calendar=clinic_calendar(settings),
                policy=settings.policy(),
                clock=clock,
                batch_time_limit_s=1.0,
                batch_workers=1,
            )
            service.seed(load_resources(DEFAULT_RESOURCES))
            runtime = Runtime.create(SERVICE, settings, TABLES, engine=factory.kw["bind"])
            yield create_app(settings, runtime=runtime, service=service, background=False), settings
        return
    if name == "documents":
        from services.documents.app import SERVICE as DOCS
        from services.documents.app import TABLES as DOC_TABLES
        from services.documents.app import api_app as doc_app
        from services.documents.settings import DocumentsSettings
        from services.documents.transport import OutboxFolder
        from tests.databases import service_database as docs_database
        from tests.documents.conftest import make_service as documents_service

        settings = DocumentsSettings(**base)
        outbox = Path(str(base["var_dir"])) / "letters"
        with docs_database(settings, DOCS, DOC_TABLES) as factory:
            service = documents_service(factory, clock, OutboxFolder(outbox))
            yield doc_app(settings, factory, service), settings
        return
    if name == "billing":
        from services.billing.app import api_app as billing_app
        from tests.billing.conftest import billing_database
        from tests.billing.conftest import make_service as billing_service

        with billing_database(base) as (settings, factory):
            yield (
                billing_app(settings, factory, billing_service(settings, factory, clock)),
                settings,
            )
        return
    raise ValueError(f"no such service {name!r}; add it to tests/service_apps.py")
