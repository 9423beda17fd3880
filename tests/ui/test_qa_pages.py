"""The QA tracker's staff pages over httpx: sign-in, roles, CSRF, the worklist and reviews.

The app is ``api_app`` (no background tasks) on the test's database and clock, Monday
2026-11-23 12:00 New York. Olga's patient QA-001 has fraction 1 (Thursday, overdue), 2 (Friday,
overdue, 7 mm shift: beyond the 5 mm tolerance) and 3 (today, pending); Paul's QA-002 one
fraction today.
"""

from __future__ import annotations

import re

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.app import api_app
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import AuditLog, Fraction, ReviewRow
from shared.ui import SESSION_COOKIE
from tests.qa_tracker.test_api import admit, ids, treat

OLGA = "Oncologist^Olga"
PAUL = "Oncologist^Paul"
Db = tuple[QaSettings, sessionmaker[Session]]


def two_physicians(service: QaService) -> None:
    """Olga's patient with three fractions (the second beyond tolerance), Paul's with one."""
    admit(service, "QA-001", OLGA)
    admit(service, "QA-002", PAUL)
    treat(service, 1, "2026-11-19")
    treat(service, 2, "2026-11-20", shift_mm=(7.0, 0.0, 0.5))
    treat(service, 3, "2026-11-23")
    treat(service, 1, "2026-11-23", "09:00", pid="QA-002")


@pytest.fixture
def app(qa_db: Db, service: QaService) -> FastAPI:
    settings, factory = qa_db
    two_physicians(service)
    return api_app(settings, factory, service)


def token_in(html: str) -> str:
    """The page's own form's token (the last one: the header's sign-out form comes first)."""
    found = re.findall(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found[-1]


async def sign_in(client: httpx.AsyncClient, name: str = OLGA, role: str = "physician") -> str:
    """Signs in through the form; returns the session's CSRF token (from the next page)."""
    form = await client.get("/ui/sign-in")
    assert form.status_code == 200
    answer = await client.post(
        "/ui/sign-in",
        data={"name": name, "role": role, "csrf_token": token_in(form.text), "next": "/ui/"},
    )
    assert answer.status_code == 303, answer.text
    page = await client.get("/ui/sign-out")
    return token_in(page.text)


def audit_rows(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str | None]]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


async def test_not_signed_in_redirects_to_sign_in(client: httpx.AsyncClient) -> None:
    answer = await client.get("/ui/worklist?scope=all")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/sign-in?next=%2Fui%2Fworklist%3Fscope%3Dall"
    client.cookies.set(SESSION_COOKIE, "eyJ1IjoieCJ9.x.y")
    forged = await client.get("/ui/worklist")
    assert forged.status_code == 303


async def test_sign_in_sets_a_signed_httponly_lax_cookie(client: httpx.AsyncClient) -> None:
    form = await client.get("/ui/sign-in?next=/ui/worklist")
    assert form.headers["content-type"].startswith("text/html")
    answer = await client.post(
        "/ui/sign-in",
        data={
            "name": OLGA,
            "role": "physician",
            "csrf_token": token_in(form.text),
            "next": "/ui/worklist",
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/worklist"
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    page = await client.get("/ui/worklist")
    assert page.status_code == 200 and "Olga Oncologist" in page.text

    # An open redirect is not followed: only paths on this site.
    form = await client.get("/ui/sign-in")
    away = await client.post(
        "/ui/sign-in",
        data={
            "name": OLGA,
            "role": "physician",
            "csrf_token": token_in(form.text),
            "next": "//evil.example/x",
        },
    )
    assert away.status_code == 303, away.text
    assert away.headers["location"] == "/ui/"


async def test_sign_in_without_its_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    await client.get("/ui/sign-in")
    answer = await client.post(
        "/ui/sign-in", data={"name": OLGA, "role": "physician", "csrf_token": "forged"}
    )
    assert answer.status_code == 403
    assert answer.headers["content-type"].startswith("text/html")
    assert SESSION_COOKIE not in answer.cookies


async def test_a_role_without_access_gets_a_403_page(client: httpx.AsyncClient) -> None:
    await sign_in(client, "Biller^Bob", "billing")
    answer = await client.get("/ui/worklist")
    assert answer.status_code == 403
    assert answer.headers["content-type"].startswith("text/html")
    assert "physician" in answer.text and "billing" in answer.text


async def test_my_worklist_overdue_first_with_tolerances_and_audited(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    await sign_in(client)
    page = await client.get("/ui/worklist")
    assert page.status_code == 200
    fraction = ids(qa_db[1])
    order = [int(i) for i in re.findall(r'data-fraction="(\d+)"', page.text)]
    assert order == [fraction["QA-001", 1], fraction["QA-001", 2], fraction["QA-001", 3]]
    body = page.text.split("<tbody>")[1]
    assert body.count('class="status overdue"') == 2 and "2 overdue" in page.text
    assert "tolerance ±5 mm" in page.text and "tolerance ±3°" in page.text
    assert '<span class="over" title="x">x +7.0</span>' in page.text
    assert "override reason (required)" in page.text
    assert "Phantom" in page.text and "Paul" not in body

    everyone = await client.get("/ui/worklist?scope=all")
    assert f'data-fraction="{fraction["QA-002", 1]}"' in everyone.text

    reads = [r for r in audit_rows(qa_db[1]) if r[0] == "read"]
    assert ("read", OLGA, "/ui/worklist", "QA-001") in reads
    assert ("read", OLGA, "/ui/worklist?scope=all", "QA-002") in reads


async def test_the_display_name_finds_the_same_worklist(client: httpx.AsyncClient) -> None:
    await sign_in(client, "Olga Oncologist")
    page = await client.get("/ui/worklist")
    assert page.text.count("data-key-row") == 3


async def test_approve_from_the_worklist(client: httpx.AsyncClient, qa_db: Db) -> None:
    csrf = await sign_in(client)
    fid = ids(qa_db[1])["QA-001", 1]
    answer = await client.post(
        f"/ui/worklist/{fid}/review",
        data={"csrf_token": csrf, "decision": "approved", "comment": "fine"},
        headers={"HX-Request": "true"},
    )
    assert answer.status_code == 200, answer.text
    assert 'class="status approved"' in answer.text and "hx-post" not in answer.text
    with qa_db[1]() as session:
        review = session.scalars(select(ReviewRow).where(ReviewRow.fraction_id == fid)).one()
        assert (review.decision, review.physician, review.comment) == ("approved", OLGA, "fine")
        assert session.get(Fraction, fid).review_status == "reviewed_late"  # type: ignore[union-attr]
    assert ("write", OLGA, f"/ui/worklist/{fid}/review", "QA-001") in audit_rows(qa_db[1])


async def test_a_review_without_the_csrf_token_is_refused(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    await sign_in(client)
    fid = ids(qa_db[1])["QA-001", 1]
    for token in (None, "forged"):
        data = {"decision": "approved", **({"csrf_token": token} if token else {})}
        answer = await client.post(f"/ui/worklist/{fid}/review", data=data)
        assert answer.status_code == 403
        assert answer.headers["content-type"].startswith("text/html")
    with qa_db[1]() as session:
        assert session.scalars(select(ReviewRow)).all() == []


async def test_only_physicians_review(client: httpx.AsyncClient, qa_db: Db) -> None:
    csrf = await sign_in(client, "Physicist^Pia", "physicist")
    page = await client.get("/ui/worklist")
    assert page.status_code == 200 and "hx-post" not in page.text
    fid = ids(qa_db[1])["QA-001", 1]
    answer = await client.post(
        f"/ui/worklist/{fid}/review", data={"csrf_token": csrf, "decision": "approved"}
    )
    assert answer.status_code == 403


async def test_a_shift_beyond_tolerance_demands_an_override_reason(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    csrf = await sign_in(client)
    fid = ids(qa_db[1])["QA-001", 2]
    refused = await client.post(
        f"/ui/worklist/{fid}/review",
        data={"csrf_token": csrf, "decision": "approved", "override_reason": "  "},
    )
    assert refused.status_code == 422 and "override reason" in refused.text
    saved = await client.post(
        f"/ui/worklist/{fid}/review",
        data={"csrf_token": csrf, "decision": "approved", "override_reason": "known setup"},
    )
    assert saved.status_code == 200
    with qa_db[1]() as session:
        fraction = session.get(Fraction, fid)
        assert fraction is not None and fraction.override_documented


async def test_sign_out_clears_the_session(client: httpx.AsyncClient) -> None:
    csrf = await sign_in(client)
    answer = await client.post("/ui/sign-out", data={"csrf_token": csrf})
    assert answer.status_code == 303
    assert (await client.get("/ui/worklist")).status_code == 303


async def test_static_files_are_served(client: httpx.AsyncClient) -> None:
    htmx = await client.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200 and "javascript" in htmx.headers["content-type"]
    assert (await client.get("/ui/static/README.md")).status_code == 404


async def test_dev_sign_in_is_refused_when_an_oidc_issuer_is_set(
    qa_db: Db, service: QaService
) -> None:
    settings, factory = qa_db
    oidc = settings.model_copy(update={"oidc_issuer": "https://idp.example"})
    app = api_app(oidc, factory, service)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        answer = await client.get("/ui/sign-in")
        assert answer.status_code == 501 and "RTOPS_OIDC_ISSUER" in answer.text
        post = await client.post("/ui/sign-in", data={"name": OLGA, "role": "physician"})
        assert post.status_code == 501
