"""The documents service under test: its database (SQLite, or PostgreSQL with
``RTOPS_DATABASE_URL``), a service with a settable clock, an outbox-folder transport and a
fake SCP that serves Encapsulated PDFs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fpdf import FPDF
from sqlalchemy.orm import Session, sessionmaker

from services.documents.app import SERVICE, TABLES, api_app
from services.documents.domain import ChecklistPolicy
from services.documents.letters import LetterRenderer
from services.documents.service import DocumentsService
from services.documents.settings import DocumentsSettings
from services.documents.transport import OutboxFolder, Transport
from shared.auth import issue_dev_token
from shared.events.dicom import DocumentReceived
from tests.databases import service_database
from tests.events import Clock, at

Db = tuple[DocumentsSettings, sessionmaker[Session]]
Auth = Callable[..., dict[str, str]]


def make_pdf(text: str = "report") -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text=text)
    return bytes(pdf.output())


@pytest.fixture
def documents_db(base_settings: dict[str, object]) -> Iterator[Db]:
    settings = DocumentsSettings(**base_settings)  # type: ignore[arg-type]
    with service_database(settings, SERVICE, TABLES) as factory:
        yield settings, factory


@pytest.fixture
def factory(documents_db: Db) -> sessionmaker[Session]:
    return documents_db[1]


@pytest.fixture
def clock() -> Clock:
    return Clock(at("2026-03-20", "12:00"))


@pytest.fixture
def scp_pdfs() -> dict[str, bytes]:
    """What the fake SCP serves, by SOP Instance UID."""
    return {}


def make_service(
    factory: sessionmaker[Session],
    clock: Clock,
    transport: Transport,
    scp_pdfs: dict[str, bytes] | None = None,
) -> DocumentsService:
    def fetch(doc: DocumentReceived) -> bytes:
        return (scp_pdfs or {})[doc.object.sop_instance_uid]

    return DocumentsService(
        factory=factory,
        policy=ChecklistPolicy(),
        renderer=LetterRenderer(department_name="Radiation Oncology, Test Hospital"),
        transport=transport,
        fetch_pdf=fetch,
        department_contact="555-0100",
        clock=clock,
    )


@pytest.fixture
def outbox_dir(tmp_path: Path) -> Path:
    return tmp_path / "letters"


@pytest.fixture
def service(
    factory: sessionmaker[Session], clock: Clock, outbox_dir: Path, scp_pdfs: dict[str, bytes]
) -> DocumentsService:
    return make_service(factory, clock, OutboxFolder(outbox_dir), scp_pdfs)


@pytest.fixture
def app(documents_db: Db, service: DocumentsService) -> FastAPI:
    settings, factory = documents_db
    settings.documents_max_upload_mb = 0.25
    return api_app(settings, factory, service)


@pytest.fixture
def auth(documents_db: Db) -> Auth:
    settings, _ = documents_db

    def headers(role: str = "physicist", user: str = "pat") -> dict[str, str]:
        token = issue_dev_token(settings, user=user, roles=[role])
        return {"Authorization": f"Bearer {token}"}

    return headers
