"""The QA tracker's staff pages over httpx: sign-in, roles, CSRF, the worklist and reviews.

The app is ``api_app`` (no background tasks) on the test's database and clock, Monday
2026-11-23 12:00 New York. Olga's patient QA-001 has fraction 1 (Thursday, overdue), 2 (Friday,
overdue, 7 mm shift: beyond the 5 mm tolerance) and 3 (today, pending); Paul's QA-002 one
fraction today.
"""

from __future__ import annotations

import re
from datetime import datetime
from html import unescape

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.app import api_app
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import AuditLog, Fraction, ReviewRow
from shared.pagination import encode_cursor
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


def next_link(html: str) -> str | None:
    found = re.search(r'<a rel="next" href="([^"]+)"', html)
    return "/ui/worklist" + unescape(found.group(1)) if found else None


def rows_of(first: int, last: int, total: int) -> str:
    return f"{first}\N{EN DASH}{last} of {total}"


def shown(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-fraction="(\d+)"', html)]


@pytest.fixture
def backlog(qa_db: Db, service: QaService) -> dict[int, str]:
    """Three more fractions on top of ``two_physicians``' four: QA-003 treated with QA-002
    (the same due and treatment times: the id breaks the tie), QA-004 with QA-001's second
    (the same due time), QA-005 without a due time (a row from before due times: last).
    Fraction id -> patient id."""
    admit(service, "QA-003", PAUL)
    treat(service, 1, "2026-11-23", "09:00", pid="QA-003")
    admit(service, "QA-004", OLGA)
    treat(service, 1, "2026-11-20", pid="QA-004")
    admit(service, "QA-005", PAUL)
    treat(service, 1, "2026-11-16", pid="QA-005")
    factory = qa_db[1]
    with factory.begin() as session:
        fractions = {f.patient_id: f for f in session.scalars(select(Fraction))}
        fractions["QA-005"].due_at = None
        assert fractions["QA-003"].due_at == fractions["QA-002"].due_at
        assert fractions["QA-003"].treated_at == fractions["QA-002"].treated_at
        assert fractions["QA-004"].due_at == session.get(Fraction, ids(factory)["QA-001", 2]).due_at  # type: ignore[union-attr]
    with factory() as session:
        return {f.id: f.patient_id for f in session.scalars(select(Fraction))}


async def test_the_worklist_pages_on_without_a_gap_or_a_repeat(
    client: httpx.AsyncClient, qa_db: Db, backlog: dict[int, str]
) -> None:
    await sign_in(client)
    whole = await client.get("/ui/worklist?scope=all")
    order = shown(whole.text)
    fraction = ids(qa_db[1])
    assert order == [
        fraction["QA-001", 1],
        *sorted([fraction["QA-001", 2], fraction["QA-004", 1]]),  # one due time: treated, id
        fraction["QA-001", 3],
        *sorted([fraction["QA-002", 1], fraction["QA-003", 1]]),  # one due and treated time
        fraction["QA-005", 1],  # no due time: last
    ]
    assert "7 to review" in whole.text and "3 overdue" in whole.text
    assert next_link(whole.text) is None and "Next page" not in whole.text

    for limit in range(1, 7):  # every page boundary, the ties' included
        url: str | None = f"/ui/worklist?scope=all&limit={limit}"
        pages: list[list[int]] = []
        while url:
            page = await client.get(url)
            assert page.status_code == 200, page.text
            pages.append(shown(page.text))
            assert "7 to review" in page.text and "3 overdue" in page.text  # the total's
            assert 1 <= len(pages[-1]) <= limit
            start = sum(map(len, pages[:-1]))
            assert rows_of(start + 1, start + len(pages[-1]), 7) in page.text
            left = 7 - start - len(pages[-1])
            assert (f"({left} more)" in page.text) == bool(left)
            # The page read is audited with the patients it showed, cursor and all.
            resource = url.removeprefix("http://test")
            read = {r[3] for r in audit_rows(qa_db[1]) if r[0] == "read" and r[2] == resource}
            assert read == {backlog[i] for i in pages[-1]}
            url = next_link(page.text)
            if len(pages) > 1:
                assert 'href="?scope=all&amp;limit=' in page.text  # back to the first page
        assert [i for p in pages for i in p] == order, limit
        assert len(pages) == -(-7 // limit)


async def test_my_worklist_pages_count_mine_only(
    client: httpx.AsyncClient, backlog: dict[int, str]
) -> None:
    await sign_in(client)
    first = await client.get("/ui/worklist?limit=3")
    assert "4 to review" in first.text and "3 overdue" in first.text
    assert rows_of(1, 3, 4) in first.text and "(1 more)" in first.text
    link = next_link(first.text)
    assert link is not None and "scope=mine" in link
    second = await client.get(link)
    assert len(shown(second.text)) == 1 and {backlog[i] for i in shown(second.text)} == {"QA-001"}
    assert rows_of(4, 4, 4) in second.text and next_link(second.text) is None


@pytest.mark.parametrize(
    "cursor",
    [
        "e30=",  # {}
        "not a cursor",
        encode_cursor(["2026-11-23", "x", 1]),  # the shape, not the types
        encode_cursor([datetime(2026, 11, 23), datetime(2026, 11, 23), 1])[:-4],  # cut
    ],
)
async def test_a_tampered_cursor_is_a_422_page(
    client: httpx.AsyncClient, qa_db: Db, cursor: str
) -> None:
    await sign_in(client)
    answer = await client.get("/ui/worklist", params={"cursor": cursor})
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("text/html")
    assert "Not a worklist page" in answer.text and "first page" in answer.text
    assert [r for r in audit_rows(qa_db[1]) if r[2].startswith("/ui/worklist?")] == []


@pytest.mark.parametrize("limit", ["0", "301", "many"])
async def test_a_page_size_beyond_300_is_refused(client: httpx.AsyncClient, limit: str) -> None:
    await sign_in(client)
    answer = await client.get("/ui/worklist", params={"limit": limit})
    assert answer.status_code == 422  # like a scope that is not one


async def test_a_page_after_its_rows_were_reviewed_offers_the_first(
    client: httpx.AsyncClient, qa_db: Db
) -> None:
    csrf = await sign_in(client)
    first = await client.get("/ui/worklist?limit=2")
    link = next_link(first.text)
    assert link is not None
    fraction = ids(qa_db[1])
    for fid in (fraction["QA-001", 2], fraction["QA-001", 3]):  # the first page's and the next
        data = {"csrf_token": csrf, "decision": "approved", "override_reason": "known setup"}
        assert (await client.post(f"/ui/worklist/{fid}/review", data=data)).status_code == 200
    after = await client.get(link)
    assert after.status_code == 200 and shown(after.text) == []
    assert "1 to review" in after.text and "Back to the first page" in after.text


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
