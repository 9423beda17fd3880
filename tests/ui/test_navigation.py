"""Pages behind a proxy path (``RTOPS_ROOT_PATH``, one host with a path per service, as in
Kubernetes) and the switcher between the services' pages (``RTOPS_UI_SERVICE_URLS``)."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from services.qa_tracker.app import api_app
from services.qa_tracker.service import QaService
from tests.ui.test_qa_pages import OLGA, Db, token_in, two_physicians

ONE_HOST = {"scp_listener": "/scp", "qa_tracker": "/qa"}


def app_on(qa_db: Db, service: QaService, **extra: object) -> FastAPI:
    settings, factory = qa_db
    two_physicians(service)
    return api_app(settings.model_copy(update=extra), factory, service)


async def test_every_link_and_redirect_carries_the_root_path(qa_db: Db, service: QaService) -> None:
    app = app_on(qa_db, service, ui_service_urls=ONE_HOST)
    # The proxy strips /qa and says so in the ASGI root_path, as uvicorn --root-path does.
    transport = httpx.ASGITransport(app=app, root_path="/qa")
    async with httpx.AsyncClient(transport=transport, base_url="http://rtops.test") as client:
        away = await client.get("/ui/worklist")
        assert away.status_code == 303
        assert away.headers["location"] == "/qa/ui/sign-in?next=%2Fui%2Fworklist"
        form = await client.get("/ui/sign-in")
        assert 'action="/qa/ui/sign-in"' in form.text
        signed = await client.post(
            "/ui/sign-in",
            data={
                "name": OLGA,
                "role": "physician",
                "csrf_token": token_in(form.text),
                "next": "/ui/worklist",
            },
        )
        assert signed.headers["location"] == "/qa/ui/worklist"
        page = await client.get("/ui/worklist")
    links = re.findall(r'(?:href|action|src|hx-post|hx-get)="(/[^"]*)"', page.text)
    assert links, page.text
    outside = [link for link in links if not link.startswith(("/qa/", "/scp/"))]
    assert outside == []
    assert 'href="/qa/ui/worklist" aria-current="page"' in page.text
    assert '<a href="/scp/ui/">DICOM arrivals</a>' in page.text
    assert 'href="/qa/ui/" aria-current="true"' in page.text


async def test_the_switcher_lists_the_configured_services(qa_db: Db, service: QaService) -> None:
    urls = {
        "scp_listener": "https://scp.hospital.example",
        "qa_tracker": "https://qa.hospital.example/",
    }
    app = app_on(qa_db, service, ui_service_urls=urls)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        form = await client.get("/ui/sign-in")
        await client.post(
            "/ui/sign-in",
            data={"name": "Tess", "role": "therapist", "csrf_token": token_in(form.text)},
        )
        page = await client.get("/ui/worklist")
    assert 'href="https://scp.hospital.example/ui/"' in page.text
    assert 'href="https://qa.hospital.example/ui/" aria-current="true"' in page.text


async def test_one_service_alone_shows_no_switcher(qa_db: Db, service: QaService) -> None:
    app = app_on(qa_db, service, ui_service_urls={"qa_tracker": "/"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        form = await client.get("/ui/sign-in")
    assert 'aria-label="Services"' not in form.text
