"""Composition root of the documents service: REST API, the durable consumer, the letter
transmission sweep, and (from the kit's runtime) the outbox relay."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import Gauge
from sqlalchemy.orm import Session, sessionmaker

from services.documents.api import router
from services.documents.service import DocumentsService, FetchPdf
from services.documents.settings import DocumentsSettings
from services.documents.store import AuditLog, Outbox, ProcessedEvent
from shared.auth import issue_dev_token
from shared.calendar import clinic_calendar
from shared.errors import NotFound, TransientError
from shared.events.dicom import DocumentReceived
from shared.periodic import every
from shared.runtime import Runtime
from shared.tables import KitTables

SERVICE = "documents"
TABLES = KitTables(Outbox, ProcessedEvent, AuditLog)


def scp_fetcher(settings: DocumentsSettings) -> FetchPdf:
    """Reads an Encapsulated PDF's document from the SCP's API
    (``GET /v1/objects/{uid}/content?format=pdf``) with a token of this service's own."""

    def fetch(doc: DocumentReceived) -> bytes:
        if settings.documents_scp_token_file is not None:
            token = settings.documents_scp_token_file.read_text().strip()
        else:
            token = issue_dev_token(settings, user="documents-service", roles=["admin"])
        url = f"{settings.scp_url()}/v1/objects/{doc.object.sop_instance_uid}/content"
        try:
            response = httpx.get(
                url,
                params={"format": "pdf", "revision": doc.object.revision},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30.0,
            )
        except httpx.HTTPError as exc:
            raise TransientError(f"the SCP is not reachable at {url}: {exc}") from exc
        if response.status_code == 404:
            raise NotFound(f"the SCP has no document {doc.object.sop_instance_uid}")
        if response.status_code >= 400:
            raise TransientError(f"the SCP answered {response.status_code} for {url}")
        return response.content

    return fetch


def build_service(settings: DocumentsSettings, runtime: Runtime) -> DocumentsService:
    return DocumentsService(
        factory=runtime.factory,
        policy=settings.checklist_policy(),
        renderer=settings.renderer(),
        transport=settings.transport(),
        fetch_pdf=scp_fetcher(settings),
        zone=clinic_calendar(settings).zone,
        gap_days=settings.documents_course_gap_days,
        department_contact=settings.documents_department_contact,
        retry_max_s=settings.documents_retry_max_s,
        on_commit=runtime.relay.wake,
    )


def create_app(
    settings: DocumentsSettings | None = None,
    *,
    runtime: Runtime | None = None,
    service: DocumentsService | None = None,
    background: bool = True,
) -> FastAPI:
    """The documents service's app. ``background=False`` serves the REST API only: no NATS
    link, consumer, sweep or relay (what REST tests build)."""
    from services.documents.consumer import run_consumer
    from services.documents.pages import router as pages_router

    settings = settings or DocumentsSettings()
    runtime = runtime or Runtime.create(SERVICE, settings, TABLES)
    service = service or build_service(settings, runtime)

    def failing() -> float:
        try:
            return float(service.failing_letters())
        except Exception:  # database away: the scrape still answers, /readyz says why
            return float("nan")

    Gauge(
        "rtops_documents_letters_failing",
        "approved letters whose last transmission failed (retried until sent)",
        registry=runtime.registry,
    ).set_function(failing)

    app = runtime.app(
        title="rtops documents",
        routers=[router, pages_router],
        tasks=(
            lambda: (
                run_consumer(runtime.link, service, metrics=runtime.consumer_metrics),
                runtime.inbox_pruning(),
                every(
                    settings.documents_send_interval_s,
                    "documents: send approved letters",
                    service.send_due,
                ),
            )
        )
        if background
        else None,
    )
    app.state.documents_service = service
    app.state.max_upload_bytes = int(settings.documents_max_upload_mb * 1024 * 1024)
    return app


def api_app(
    settings: DocumentsSettings, factory: sessionmaker[Session], service: DocumentsService
) -> FastAPI:
    """The REST app over a given database and service, with nothing in the background."""
    runtime = Runtime.create(SERVICE, settings, TABLES, engine=factory.kw["bind"])
    return create_app(settings, runtime=runtime, service=service, background=False)
