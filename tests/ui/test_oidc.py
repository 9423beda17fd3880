"""Production sign-in: the OIDC authorization-code flow with PKCE against a real (test) provider
on HTTP, through the QA tracker's pages; who a user is in DICOM from a claim or from settings.

The browser is an httpx client that follows redirects between the app (in-process) and the
provider (uvicorn on loopback), carrying cookies as a browser does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fastapi import FastAPI
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from services.qa_tracker.app import api_app
from services.qa_tracker.service import QaService
from services.qa_tracker.store import AuditLog, ReviewRow
from shared.settings import SettingError, StaffIdentity
from shared.ui import SESSION_COOKIE
from tests.oidc_provider import CLIENT_ID, Provider, RunningProvider
from tests.qa_tracker.test_api import ids
from tests.ui.test_qa_pages import OLGA, Db, token_in, two_physicians

SESSION_KEY = "k" * 48
APP = "http://testserver"


@pytest.fixture(scope="module")
def running() -> Iterator[RunningProvider]:
    running = RunningProvider(Provider())
    yield running
    running.stop()


@pytest.fixture
def provider(running: RunningProvider) -> Provider:
    p = running.provider
    p.users = {
        "olga": {"roles": ["physician"], "name": "Olga Oncologist", "dicom_names": [OLGA]},
        "olga.nomap": {"roles": ["physician"]},
        "olga.mapped": {"roles": ["physician"], "email": "olga@hospital.example"},
        "pat": {"roles": ["physicist"]},
        "nobody": {"roles": []},
    }
    p.auto, p.wrong_nonce, p.access_roles, p.client_secret = "olga", False, None, None
    p.grants.clear()
    p.token_requests.clear()
    return p


def oidc_app(
    qa_db: Db, service: QaService, provider: Provider, *, seed: bool = True, **extra: Any
) -> FastAPI:
    settings, factory = qa_db
    if seed:
        two_physicians(service)
    settings = settings.model_copy(
        update={
            "oidc_issuer": provider.url,
            "oidc_jwks_url": f"{provider.url}/jwks",
            "oidc_client_id": CLIENT_ID,
            "ui_session_key": SESSION_KEY,
            **extra,
        }
    )
    return api_app(settings, factory, service)


@pytest.fixture
def app(qa_db: Db, service: QaService, provider: Provider) -> FastAPI:
    return oidc_app(qa_db, service, provider)


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, follow_redirects=True
    ) as client:
        yield client


async def test_sign_in_with_pkce_then_my_worklist(
    browser: httpx.AsyncClient, provider: Provider, app: FastAPI
) -> None:
    page = await browser.get("/ui/worklist")
    assert page.status_code == 200, page.text
    hops = [str(r.url) for r in page.history]
    authorize = urlparse(next(h for h in hops if "/authorize" in h))
    query = parse_qs(authorize.query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43  # base64url of a SHA-256, RFC 7636 4.2
    assert query["redirect_uri"] == [f"{APP}/ui/auth/callback"]
    assert {"state", "nonce"} <= set(query)
    assert str(page.url) == f"{APP}/ui/worklist"
    # The header shows the provider's display name; identity is the subject.
    assert "Olga Oncologist" in page.text and "(physician)" in page.text
    assert "QA-001" in page.text and "QA-002" not in page.text  # Olga's own, from the claim
    cookie = next(c for c in page.history if SESSION_COOKIE in c.headers.get("set-cookie", ""))
    header = cookie.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=lax" in header
    # The token request carried the verifier and named the public client.
    assert provider.token_requests[-1]["client_id"] == CLIENT_ID
    assert provider.token_requests[-1]["authorization"] == ""


@pytest.mark.parametrize("qualified", [False, True], ids=["sub", "issuer#sub"])
async def test_identity_from_settings_when_no_claim(
    qa_db: Db, service: QaService, provider: Provider, qualified: bool
) -> None:
    provider.auto = "olga.mapped"
    key = f"{provider.url}#sub-olga.mapped" if qualified else "sub-olga.mapped"
    identities = {key: StaffIdentity(dicom_names=[OLGA], npi="1234567893")}
    app = oidc_app(qa_db, service, provider, ui_identities=identities)
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, follow_redirects=True
    ) as client:
        page = await client.get("/ui/worklist")
    assert "QA-001" in page.text and "QA-002" not in page.text


@pytest.mark.parametrize("key", ["olga@hospital.example", "olga.mapped"])
async def test_no_identity_by_email_or_username(
    qa_db: Db, service: QaService, provider: Provider, key: str
) -> None:
    """Issue 15: an e-mail address or username is the user's to change at the provider, so a
    mapping keyed by one maps nobody."""
    provider.auto = "olga.mapped"
    identities = {key: StaffIdentity(dicom_names=[OLGA], npi="1234567893")}
    app = oidc_app(qa_db, service, provider, ui_identities=identities)
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, follow_redirects=True
    ) as client:
        page = await client.get("/ui/worklist")
    assert "maps to no DICOM name" in page.text
    assert "QA-001" not in page.text


async def test_mallory_signed_in_as_olgas_username_is_not_olga(
    qa_db: Db, service: QaService, provider: Provider
) -> None:
    """Issue 15's token through the pages: sub mallory, preferred_username and name Olga's.
    The header shows the name, but the worklist is not Olga's, a review of Olga's fraction is
    refused (the review policy, default "covering"), and every audit row is mallory's."""
    provider.users["mallory"] = {
        "roles": ["physician"],
        "sub": "mallory",
        "preferred_username": OLGA,
        "name": OLGA,
    }
    provider.auto = "mallory"
    identities = {OLGA: StaffIdentity(dicom_names=[OLGA])}  # a key a username could match
    app = oidc_app(qa_db, service, provider, ui_identities=identities)
    fid = ids(qa_db[1])["QA-001", 1]
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, follow_redirects=True
    ) as client:
        page = await client.get("/ui/worklist")
        assert "maps to no DICOM name" in page.text and "QA-001" not in page.text
        answer = await client.post(
            f"/ui/worklist/{fid}/review",
            data={"csrf_token": token_in(page.text), "decision": "approved"},
            headers={"HX-Request": "true"},
        )
    assert answer.status_code == 403, answer.text
    assert "not mapped to a DICOM person name" in answer.text
    with qa_db[1]() as session:
        assert session.scalars(select(ReviewRow)).all() == []
        rows = session.scalars(select(AuditLog)).all()
    assert {r.user for r in rows} == {f"{provider.url}#mallory"}
    assert ("refused", f"/ui/worklist/{fid}/review") in {(r.action, r.resource) for r in rows}


async def test_a_user_with_no_dicom_name_is_told(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    provider.auto = "olga.nomap"
    page = await browser.get("/ui/worklist")
    assert page.status_code == 200
    assert "maps to no DICOM name" in page.text
    assert "QA-001" not in page.text


async def test_roles_are_those_the_api_grants(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    """The ID token says physician, the access token (what the APIs verify) physicist: the
    pages follow the API, so the review form is not offered."""
    provider.access_roles = ["physicist"]
    page = await browser.get("/ui/worklist?scope=all")
    assert "(physicist)" in page.text
    assert 'name="decision"' not in page.text


async def test_no_rtops_role_gets_no_session(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    provider.auto = "nobody"
    page = await browser.get("/ui/worklist")
    assert page.status_code == 403
    assert "holds no rtops role" in page.text
    assert SESSION_COOKIE not in browser.cookies


async def test_a_wrong_nonce_is_refused(browser: httpx.AsyncClient, provider: Provider) -> None:
    provider.wrong_nonce = True
    page = await browser.get("/ui/worklist")
    assert page.status_code == 401
    assert "nonce" in page.text
    assert SESSION_COOKIE not in browser.cookies


async def test_a_callback_this_browser_did_not_start(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    page = await browser.get("/ui/auth/callback?code=abc&state=xyz")
    assert page.status_code == 400
    assert "Start again" in page.text


async def test_a_state_mismatch_is_refused(browser: httpx.AsyncClient, provider: Provider) -> None:
    provider.auto = None  # stop at the provider's form: the pending sign-in is in the cookie
    form = await browser.get("/ui/worklist")
    assert "Hospital sign-in" in form.text
    callback = await browser.get("/ui/auth/callback?code=abc&state=forged")
    assert callback.status_code == 400
    assert "state" in callback.text
    assert SESSION_COOKIE not in browser.cookies


async def test_a_code_is_good_once(browser: httpx.AsyncClient, provider: Provider) -> None:
    async with httpx.AsyncClient(follow_redirects=False) as raw:
        provider.auto = "olga"
        start = await browser.get("/ui/sign-in", follow_redirects=False)
        pending = browser.cookies.get("rtops_signin")
        authorize = await raw.get(start.headers["location"])
        callback = authorize.headers["location"]
    first = await browser.get(callback)
    assert first.status_code == 200
    browser.cookies.clear()
    browser.cookies.set("rtops_signin", str(pending))
    again = await browser.get(callback)
    assert again.status_code == 401
    assert "refused the code" in again.text


async def test_development_sign_in_is_refused(browser: httpx.AsyncClient) -> None:
    form = await browser.post("/ui/sign-in", data={"name": OLGA, "role": "admin"})
    assert form.status_code == 501
    # A cookie made the development way, even with the right key, is not a session here.
    forged = URLSafeTimedSerializer(SESSION_KEY, salt="rtops.ui.session").dumps(
        {"u": "mallory", "r": ["admin"], "c": "x", "o": "dev"}
    )
    browser.cookies.set(SESSION_COOKIE, forged)
    page = await browser.get("/ui/worklist", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/ui/sign-in")


async def test_sign_out_ends_the_provider_session_too(
    browser: httpx.AsyncClient, provider: Provider, app: FastAPI
) -> None:
    page = await browser.get("/ui/worklist")
    out = await browser.post("/ui/sign-out", data={"csrf_token": token_in(page.text)})
    hops = [str(r.url) for r in out.history]
    assert any(h.startswith(f"{provider.url}/logout?client_id={CLIENT_ID}") for h in hops)
    assert str(out.url) == f"{APP}/ui/signed-out"
    assert "Signed out" in out.text
    assert SESSION_COOKIE not in browser.cookies
    with app.state.session_factory() as session:
        users = set(session.scalars(select(AuditLog.user)))
    # The worklist read, audited under the provider's subject, qualified by the issuer.
    assert users == {f"{provider.url}#sub-olga"}


async def test_a_confidential_client_authenticates(
    qa_db: Db, service: QaService, provider: Provider
) -> None:
    provider.client_secret = "s3cret"
    app = oidc_app(qa_db, service, provider, oidc_client_secret="s3cret")
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, follow_redirects=True
    ) as client:
        page = await client.get("/ui/worklist")
    assert page.status_code == 200
    assert provider.token_requests[-1]["authorization"].startswith("Basic ")


def test_oidc_sign_in_needs_a_session_key(
    qa_db: Db, service: QaService, provider: Provider
) -> None:
    with pytest.raises(SettingError, match="RTOPS_UI_SESSION_KEY"):
        oidc_app(qa_db, service, provider, seed=False, ui_session_key=None)
    with pytest.raises(SettingError, match="at least 32"):
        oidc_app(qa_db, service, provider, seed=False, ui_session_key="short")


async def test_the_timeline_forwards_the_providers_token(
    qa_db: Db, service: QaService, provider: Provider
) -> None:
    """The timeline asks the QA API with the access token the provider gave; once it has
    expired (here: dropped), the page signs in again at the provider rather than guess."""
    app = oidc_app(qa_db, service, provider, ui_service_urls={"qa_tracker": APP})
    app.state.http_mounts = {APP: httpx.ASGITransport(app=app)}
    async with httpx.AsyncClient(
        base_url=APP, mounts={APP: httpx.ASGITransport(app=app)}, follow_redirects=True
    ) as client:
        page = await client.get("/ui/patients/QA-001")
        assert page.status_code == 200, page.text
        assert "Fraction 3 treated" in page.text
        signed_in = len(provider.token_requests)
        client.cookies.delete("rtops_api_token")
        again = await client.get("/ui/patients/QA-001")
        assert "Fraction 3 treated" in again.text
        assert len(provider.token_requests) == signed_in + 1
    with app.state.session_factory() as session:
        readers = set(session.scalars(select(AuditLog.user).where(AuditLog.resource.like("/v1/%"))))
    # The API read the provider's subject from the forwarded token.
    assert readers == {f"{provider.url}#sub-olga"}


async def test_a_session_from_before_issue_15_signs_in_again(
    browser: httpx.AsyncClient, provider: Provider
) -> None:
    """An OIDC session cookie without the issuer held the provider's username as its user:
    it is no session now (the provider signs the user in again, as its subject)."""
    old = URLSafeTimedSerializer(SESSION_KEY, salt="rtops.ui.session").dumps(
        {"u": "olga", "r": ["physician"], "c": "x", "n": [OLGA], "o": "oidc"}
    )
    browser.cookies.set(SESSION_COOKIE, old)
    page = await browser.get("/ui/worklist", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/ui/sign-in")
