"""The documents service's staff pages over httpx against the real app (``background=False``):
a patient's plan versions with what changed and the checklist, filing a PDF from the page
(415 / unknown plan shown on the page, nothing kept), the letters with the PDF beside them and
the physician's approval; sign-in, roles, CSRF and audit."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.documents.app import SERVICE, TABLES, api_app
from services.documents.service import DocumentsService
from services.documents.settings import DocumentsSettings
from services.documents.store import AuditLog, DocumentRow, LetterRow, NoteRow
from services.documents.transport import OutboxFolder
from tests.databases import service_database
from tests.documents.conftest import make_pdf, make_service
from tests.documents.events import MONDAY, PID, fraction, plan, uid
from tests.events import Clock, at

KEY = "documents-pages-test-key-" + "k" * 32
Db = tuple[DocumentsSettings, sessionmaker[Session]]


@pytest.fixture
def documents(base_settings: dict[str, object]) -> Iterator[Db]:
    settings = DocumentsSettings(**base_settings, dev_signing_key=KEY)  # type: ignore[arg-type]
    with service_database(settings, SERVICE, TABLES) as factory:
        yield settings, factory


@pytest.fixture
def documents_service(documents: Db, tmp_path: object) -> DocumentsService:
    """DOC-001: version 1 (unapproved) treated on Monday, version 2 derived from it with fewer
    fractions: a draft letter, a flag."""
    _, factory = documents
    service = make_service(
        factory,
        Clock(at("2026-03-20", "12:00")),
        OutboxFolder(tmp_path / "letters"),  # type: ignore[operator]
    )
    service.apply_batch(
        [
            plan(1, approved=False),
            fraction(1, MONDAY),
            plan(
                2,
                fractions=25,
                dose_gy=62.5,
                refs=((1, "PREDECESSOR"),),
                received=at("2026-03-03", "17:00"),
            ),
        ]
    )
    return service


@pytest.fixture
def app(documents: Db, documents_service: DocumentsService) -> FastAPI:
    settings, factory = documents
    return api_app(settings, factory, documents_service)


def token_in(html: str) -> str:
    return re.findall(r'name="csrf_token" value="([^"]+)"', html)[-1]


async def sign_in(client: httpx.AsyncClient, name: str, role: str) -> str:
    form = await client.get("/ui/sign-in")
    answer = await client.post(
        "/ui/sign-in",
        data={"name": name, "role": role, "csrf_token": token_in(form.text), "next": "/ui/"},
    )
    assert answer.status_code == 303, answer.text
    return token_in((await client.get("/ui/plans")).text)


def count(factory: sessionmaker[Session], model: type) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


async def test_not_signed_in_redirects_and_billing_is_refused(client: httpx.AsyncClient) -> None:
    for path in ("/ui/plans", "/ui/letters"):
        answer = await client.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/ui/sign-in?next=")
    await sign_in(client, "Bea Billing", "billing")
    assert (await client.get("/ui/plans")).status_code == 403


async def test_plan_versions_show_what_changed_the_checklist_and_flags(
    client: httpx.AsyncClient, documents: Db
) -> None:
    await sign_in(client, "Pat Physicist", "physicist")
    page = await client.get("/ui/plans", params={"patient": PID})
    assert page.status_code == 200
    html = page.text
    assert "Version 1: PROST" in html and "Version 2: PROST" in html
    assert "fractions: 28 -&gt; 25" in html
    assert "treated while not approved" in html
    assert "✗ Written directive (prescription)" in html
    assert f'action="/ui/plans/{uid(1)}/documents"' in html
    _, factory = documents
    with factory() as session:
        audited = session.scalars(select(AuditLog.patient_id).where(AuditLog.action == "read"))
        assert PID in set(audited)


async def test_filing_from_the_page(client: httpx.AsyncClient, documents: Db) -> None:
    _, factory = documents
    csrf = await sign_in(client, "Pat Physicist", "physicist")
    url = f"/ui/plans/{uid(2)}/documents"
    fields = {
        "csrf_token": csrf,
        "patient": PID,
        "doc_type": "physics_plan_qa",
        "signed_by": "Physicist^Pat",
        "signed_at": "2026-03-04T09:30",
    }
    not_pdf = await client.post(
        url, data=fields, files={"file": ("qa.pdf", b"hello", "text/plain")}
    )
    assert not_pdf.status_code == 415 and "is not a PDF" in not_pdf.text
    unknown = await client.post(
        f"/ui/plans/{uid(99)}/documents",
        data=fields,
        files={"file": ("qa.pdf", make_pdf(), "application/pdf")},
    )
    assert unknown.status_code == 422 and "unknown plan_uid" in unknown.text
    no_csrf = await client.post(
        url,
        data={**fields, "csrf_token": "x"},
        files={"file": ("qa.pdf", make_pdf(), "application/pdf")},
    )
    assert no_csrf.status_code == 403
    assert count(factory, DocumentRow) == 0
    filed = await client.post(
        url, data=fields, files={"file": ("qa.txt", make_pdf("qa"), "text/plain")}
    )
    assert filed.status_code == 303
    assert filed.headers["location"].startswith(f"/ui/plans?patient={PID}&filed=")
    page = await client.get(filed.headers["location"])
    assert "Document filed" in page.text and "✓ Physics plan QA report" in page.text
    [doc_id] = re.findall(r'href="/ui/documents/([0-9a-f-]{36})"', page.text)
    pdf = await client.get(f"/ui/documents/{doc_id}")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")


async def test_a_physician_approves_a_letter_beside_its_pdf(
    client: httpx.AsyncClient, documents: Db
) -> None:
    _, factory = documents
    csrf = await sign_in(client, "Olga Oncologist", "physician")
    page = await client.get("/ui/letters")
    assert page.status_code == 200
    [letter_id] = re.findall(r'src="/ui/letters/([0-9a-f-]{36})/pdf"', page.text)
    assert "Dr. Rita Referrer" in page.text and "Approve and send" in page.text
    pdf = await client.get(f"/ui/letters/{letter_id}/pdf")
    assert pdf.content.startswith(b"%PDF")
    approved = await client.post(f"/ui/letters/{letter_id}/approve", data={"csrf_token": csrf})
    assert approved.status_code == 303
    after = await client.get(approved.headers["location"])
    assert "sent" in after.text and "(outbox)" in after.text
    with factory() as session:
        assert session.scalar(select(LetterRow.status)) == "sent"
    again = await client.post(f"/ui/letters/{letter_id}/approve", data={"csrf_token": csrf})
    assert again.status_code == 409


async def test_a_physicist_sees_letters_but_cannot_approve(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client, "Pat Physicist", "physicist")
    page = await client.get("/ui/letters")
    assert "A physician approves the letter." in page.text
    [letter_id] = re.findall(r'src="/ui/letters/([0-9a-f-]{36})/pdf"', page.text)
    answer = await client.post(f"/ui/letters/{letter_id}/approve", data={"csrf_token": csrf})
    assert answer.status_code == 403


# ---------------------------------------------------------------- the patient timeline

QA, DOCUMENTS = "http://qa.test", "http://documents.test"


@pytest.fixture
async def qa_with_documents(
    qa_db: Any, service: Any, app: FastAPI
) -> AsyncIterator[httpx.AsyncClient]:
    """The QA tracker's pages (the timeline's host) asking the documents API in-process."""
    from services.qa_tracker.app import api_app as qa_api_app

    settings, factory = qa_db
    urls = {"qa_tracker": QA, "documents": DOCUMENTS}
    settings = settings.model_copy(update={"dev_signing_key": KEY, "ui_service_urls": urls})
    qa = qa_api_app(settings, factory, service)
    qa.state.http_mounts = {
        QA: httpx.ASGITransport(app=qa),
        DOCUMENTS: httpx.ASGITransport(app=app),
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=qa), base_url="http://testserver"
    ) as client:
        yield client


async def test_the_patient_timeline_shows_plan_versions_and_the_letter(
    qa_with_documents: httpx.AsyncClient,
) -> None:
    client = qa_with_documents
    form = await client.get("/ui/sign-in")
    await client.post(
        "/ui/sign-in",
        data={"name": "Olga Oncologist", "role": "physician", "csrf_token": token_in(form.text)},
    )
    html = (await client.get(f"/ui/patients/{PID}")).text
    assert re.search(r"<strong>Documents</strong>:\s*3 entries", html)
    assert "Plan version 1: PROST" in html and "Plan version 2: PROST" in html
    assert "flagged: documents incomplete, unapproved" in html
    assert "Letter to the referring provider" in html
    assert f'href="{DOCUMENTS}/ui/plans?patient={PID}"' in html


async def test_a_physician_signs_the_weeks_management_note_on_the_page(
    client: httpx.AsyncClient, documents: Db
) -> None:
    csrf = await sign_in(client, "Oncologist^Olga", "physician")
    page = await client.get("/ui/plans", params={"patient": PID})
    assert "2026-W10: missing management note, physics check" in page.text
    [action] = re.findall(r'action="(/ui/courses/[^"]+/notes)"', page.text)
    [sign_form] = re.findall(r'<form class="upload sign-note".*?</form>', page.text, re.S)
    assert '<option value="management_note">' in sign_form
    assert '<option value="physics_check">' not in sign_form  # the physicist's
    form = {
        "csrf_token": csrf,
        "patient": PID,
        "week": "2026-W10",
        "kind": "management_note",
        "text": "seen, tolerating well",
    }
    bad_week = await client.post(action, data={**form, "week": "W10"})
    assert bad_week.status_code == 422 and "not an ISO week" in bad_week.text
    not_theirs = await client.post(action, data={**form, "kind": "physics_check"})
    assert not_theirs.status_code == 403 and "signed by a physicist" in not_theirs.text
    signed = await client.post(action, data=form)
    assert signed.status_code == 303
    after = await client.get(signed.headers["location"])
    assert "Signed: management note for 2026-W10." in after.text
    assert "2026-W10: missing physics check" in after.text
    _, factory = documents
    with factory() as session:
        [note] = session.scalars(select(NoteRow)).all()
    assert (note.author, note.recorded_by, note.text) == (
        "Oncologist^Olga",
        "Oncologist^Olga",
        "seen, tolerating well",
    )


async def test_behind_a_proxy_path_every_link_carries_it(
    documents: Db, documents_service: DocumentsService
) -> None:
    settings, factory = documents
    urls = {"documents": "/documents", "scp_listener": "/scp"}
    app = api_app(settings.model_copy(update={"ui_service_urls": urls}), factory, documents_service)
    transport = httpx.ASGITransport(app=app, root_path="/documents")
    async with httpx.AsyncClient(transport=transport, base_url="http://rtops.test") as client:
        form = await client.get("/ui/sign-in")
        await client.post(
            "/ui/sign-in",
            data={"name": "Olga", "role": "physician", "csrf_token": token_in(form.text)},
        )
        pages = [
            (await client.get("/ui/plans", params={"patient": PID})).text,
            (await client.get("/ui/letters")).text,
        ]
        csrf = token_in(pages[1])
        [letter_id] = re.findall(r'src="/documents/ui/letters/([0-9a-f-]{36})/pdf"', pages[1])
        approved = await client.post(f"/ui/letters/{letter_id}/approve", data={"csrf_token": csrf})
    assert approved.headers["location"].startswith("/documents/ui/letters?")
    for html in pages:
        links = re.findall(r'(?:href|action|src)="(/[^"]*)"', html)
        assert links
        assert [link for link in links if not link.startswith(("/documents/", "/scp/"))] == []
