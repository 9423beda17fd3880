"""The patient timeline: the QA tracker's page asks the QA tracker's and the SCP's REST APIs
(both real apps, in-process, on their own databases) with the signed-in user's token; each
API decides what that user may see, a service that is down is said to be down.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from services.qa_tracker.app import api_app
from services.qa_tracker.domain import Decision
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.store import AuditLog as QaAudit
from services.qa_tracker.store import Fraction
from services.scp_listener import sop
from services.scp_listener.store import AuditLog as ScpAudit
from shared.auth import Principal
from tests import dicom_factories as f
from tests.qa_tracker.test_api import admit, treat
from tests.support import scp_rest_app, scp_settings
from tests.ui.test_qa_pages import OLGA, Db, token_in
from tests.ui.test_scp_pages import OTHER, ingest

PID = f.PatientSpec().patient_id
KEY = "timeline-test-key-" + "k" * 32  # one signing key for both services, as under make run
QA, SCP = "http://qa.test", "http://scp.test"


@pytest.fixture
def scp_app(base_settings: dict[str, object], tmp_path: Path) -> Iterator[FastAPI]:
    settings = scp_settings(base_settings, dev_signing_key=KEY)
    with scp_rest_app(settings) as app:
        linac = app.state.device_registry.devices["TRUEBEAM1"].as_source()
        for i in (1, 2):
            record = f.treatment_record(plan_uid="1.2.3", fraction_number=i)
            ingest(app, f.write(record, tmp_path / f"{i}.dcm"), sop.RT_BEAMS_RECORD, linac)
        pdf = f.write(f.encapsulated_pdf(patient=OTHER), tmp_path / "pdf.dcm")
        ingest(app, pdf, sop.ENCAPSULATED_PDF, linac)
        yield app


def qa_app(qa_db: Db, service: QaService, scp: FastAPI | None, urls: dict[str, str]) -> FastAPI:
    settings, factory = qa_db
    settings = settings.model_copy(update={"dev_signing_key": KEY, "ui_service_urls": urls})
    app = api_app(settings, factory, service)
    mounts: dict[str, httpx.AsyncBaseTransport] = {QA: httpx.ASGITransport(app=app)}
    if scp is not None:
        mounts[SCP] = httpx.ASGITransport(app=scp)
    app.state.http_mounts = mounts
    return app


@pytest.fixture
def seeded(service: QaService) -> QaService:
    admit(service, PID, OLGA)
    treat(service, 1, "2026-11-20", pid=PID)
    treat(service, 2, "2026-11-23", "09:00", pid=PID)
    return service


@pytest.fixture
async def browser(
    qa_db: Db, seeded: QaService, scp_app: FastAPI
) -> AsyncIterator[httpx.AsyncClient]:
    app = qa_app(qa_db, seeded, scp_app, {"scp_listener": SCP, "qa_tracker": QA})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, name: str, role: str) -> None:
    form = await client.get("/ui/sign-in")
    answer = await client.post(
        "/ui/sign-in", data={"name": name, "role": role, "csrf_token": token_in(form.text)}
    )
    assert answer.status_code == 303, answer.text


async def test_a_therapist_sees_what_each_service_knows(
    browser: httpx.AsyncClient, qa_db: Db, scp_app: FastAPI
) -> None:
    await sign_in(browser, "Tess Therapist", "therapist")
    page = await browser.get(f"/ui/patients/{PID}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "<strong>IGRT review</strong>:" in html and "<strong>DICOM arrivals</strong>:" in html
    assert html.count("Fraction 1 treated") == 1 and html.count("Fraction 2 treated") == 1
    assert "CBCT for fraction 2" in html  # the imaging, from the fraction's detail
    assert "Received RT Beams Treatment Record" in html  # the SCP's objects
    assert re.search(r"<strong>IGRT review</strong>:\s*4 entries", html)
    assert re.search(r"<strong>DICOM arrivals</strong>:\s*2 entries", html)
    assert "Encapsulated PDF" not in html  # another patient's
    assert f'href="{QA}/ui/fractions/' in html
    # Newest first: Monday's fraction before Friday's.
    assert html.index("Fraction 2 treated") < html.index("Fraction 1 treated")
    # The page read is audited here, each API read there, under the same user.
    _, factory = qa_db
    with factory() as session:
        reads = session.execute(select(QaAudit.user, QaAudit.resource, QaAudit.patient_id)).all()
    assert ("Tess Therapist", f"/ui/patients/{PID}", PID) in reads
    assert any(r.startswith("/v1/fractions?patient_id=") for _, r, _ in reads)
    with scp_app.state.session_factory() as session:
        scp_reads = session.execute(select(ScpAudit.user, ScpAudit.resource)).all()
    assert ("Tess Therapist", f"/v1/objects?patient_id={PID}&limit=500") in scp_reads


async def test_a_physician_sees_reviews_and_not_the_device_index(
    browser: httpx.AsyncClient, seeded: QaService, qa_db: Db
) -> None:
    _, factory = qa_db
    with factory() as session:
        first = session.scalars(select(Fraction.id).order_by(Fraction.treated_at)).first()
    assert first is not None
    seeded.add_review(
        first,
        NewReview(Decision.APPROVED, "looks good", None, None),
        principal=Principal(OLGA, frozenset({"physician"})),
        resource="test",
    )
    await sign_in(browser, OLGA, "physician")
    page = await browser.get(f"/ui/patients/{PID}")
    html = page.text
    assert "Fraction 1 approved" in html and "looks good" in html
    assert re.search(r"DICOM arrivals</strong>:\s*not visible to your role", html)
    assert "RT Beams Treatment Record" not in html


async def test_a_service_that_is_down_is_named_and_the_rest_shows(
    qa_db: Db, seeded: QaService
) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    app = qa_app(qa_db, seeded, None, {"scp_listener": "http://127.0.0.1:9", "qa_tracker": QA})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        await sign_in(client, "Tess Therapist", "therapist")
        page = await client.get(f"/ui/patients/{PID}")
    assert page.status_code == 200
    assert re.search(r"DICOM arrivals</strong>:\s*unavailable: not reachable", page.text)
    assert "Fraction 2 treated" in page.text


async def test_finding_a_patient_and_unknown_ones(browser: httpx.AsyncClient) -> None:
    away = await browser.get(f"/ui/patients/{PID}")
    assert away.status_code == 303 and "/ui/sign-in" in away.headers["location"]
    await sign_in(browser, "Bill", "billing")
    form = await browser.get("/ui/patients")
    assert form.status_code == 200 and 'name="patient_id"' in form.text
    found = await browser.get("/ui/patients", params={"patient_id": f" {PID} "})
    assert found.status_code == 303 and found.headers["location"] == f"/ui/patients/{PID}"
    # Billing may read neither API yet: both sections say so, nothing else shows.
    page = await browser.get(f"/ui/patients/{PID}")
    assert page.text.count("not visible to your role") == 2
    nobody = await browser.get("/ui/patients/NOBODY-1")
    assert nobody.status_code == 200
    assert "No service knows anything about NOBODY-1" in nobody.text


async def test_the_worklist_links_to_the_timeline(browser: httpx.AsyncClient) -> None:
    await sign_in(browser, OLGA, "physician")
    page = await browser.get("/ui/worklist")
    assert f'href="/ui/patients/{PID}"' in page.text
    assert 'href="/ui/patients"' in page.text  # in the navigation
