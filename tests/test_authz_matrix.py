"""The authorization matrix (issue 15), generated from every service's route table: every API
route x every role, and no token / an expired one / one for another audience / one signed by
another key / one living longer than the signer allows. A route that names no role, and is
not one of the few public ones below, fails here: a new endpoint cannot skip the matrix.

A role the route admits must get past authorization (any status but 401/403: the dummy path
ids and empty bodies then fail validation or find nothing, so nothing is changed); every other
role gets 403, every bad token 401, each as problem+json.

The staff pages (``/ui/...``, session cookie) get the same from the same route table: every
page x each role's session x no session / a tampered cookie / a form without its CSRF token. A
page that takes no session (``pages.user``), and is not a sign-in/out page, fails here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from shared.auth import DEV_ISSUER, DEV_TOKEN_MAX_LIFETIME, dev_signing_key, issue_dev_token
from shared.settings import ROLES, RtopsSettings, SettingError
from tests.service_apps import SERVICES, service_app

PROBLEM = "application/problem+json"
# Answer without a token by design: probes for orchestrators and the API's own description.
PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
PUBLIC |= {"/redoc"}


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    dependant: Any
    in_schema: bool


def admitted_roles(route: ApiRoute) -> frozenset[str] | None:
    """The roles ``require_roles`` admits on ``route``; None when it names none."""

    def walk(dependant: Any) -> frozenset[str] | None:
        roles = getattr(dependant.call, "rtops_roles", None)
        if roles is not None:
            return frozenset(roles)
        for sub in dependant.dependencies:
            found = walk(sub)
            if found is not None:
                return found
        return None

    return walk(route.dependant)


def route_table(app: FastAPI) -> list[ApiRoute]:
    """Every HTTP route as served, included routers flattened (FastAPI 0.16x keeps them as
    branches resolved on first use; earlier versions copy them into ``app.routes``)."""
    out: list[ApiRoute] = []

    def add(route: Any) -> None:
        for method in sorted(set(route.methods or ()) - {"HEAD", "OPTIONS"}):
            out.append(ApiRoute(method, route.path, route.dependant, route.include_in_schema))

    for route in app.routes:
        if isinstance(route, APIRoute):
            add(route)
        elif hasattr(route, "effective_route_contexts"):
            for context in route.effective_route_contexts():
                if getattr(context, "dependant", None) is not None:
                    add(context)
    return out


def api_routes(app: FastAPI) -> list[ApiRoute]:
    """The JSON API routes: staff pages (HTML, sessions, out of the schema) have their own
    tests, and the public probes need no token."""
    return [
        r
        for r in route_table(app)
        if r.path not in PUBLIC and (r.in_schema or r.path.startswith("/v1"))
    ]


def concrete(path: str) -> str:
    """A path with every parameter filled: ``1`` names no row anywhere."""
    import re

    return re.sub(r"\{[^}]+\}", "1", path)


def forged(settings: RtopsSettings, **changes: Any) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": "mallory",
        "iss": DEV_ISSUER,
        "aud": settings.oidc_audience,
        "iat": now,
        "exp": now + timedelta(hours=1),
        "roles": list(ROLES),
        **changes,
    }
    key = changes.pop("key", None) or dev_signing_key(settings)
    claims.pop("key", None)
    return jwt.encode(claims, key, algorithm="HS256")


def bad_tokens(settings: RtopsSettings) -> dict[str, str | None]:
    now = datetime.now(UTC)
    return {
        "none": None,
        "expired": forged(settings, exp=now - timedelta(seconds=5)),
        "wrong audience": forged(settings, aud="some-other-api"),
        "wrong issuer": forged(settings, iss="https://idp.example"),
        "other key": forged(settings, key="k" * 48),
        "100 years": forged(settings, exp=now + timedelta(days=36525)),
        "no iat": forged(settings, iat=None),
        "long subject": forged(settings, sub="m" * 100),
    }


@pytest.mark.parametrize("service", SERVICES)
async def test_authorization_matrix(base_settings: dict[str, object], service: str) -> None:
    with service_app(service, base_settings) as (app, settings):
        routes = api_routes(app)
        assert routes, f"{service} has no API route"
        unguarded = [f"{r.method} {r.path}" for r in routes if admitted_roles(r) is None]
        assert not unguarded, f"{service}: routes that name no role: {unguarded}"
        tokens = {role: issue_dev_token(settings, user="matrix", roles=[role]) for role in ROLES}
        bad = bad_tokens(settings)
        wrong: list[str] = []
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for route in routes:
                method, path = route.method, route.path
                allowed = admitted_roles(route) or frozenset()
                url = concrete(path)
                for name, token in bad.items():
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    response = await client.request(method, url, headers=headers)
                    if response.status_code != 401 or response.headers["content-type"] != PROBLEM:
                        wrong.append(f"{method} {path} {name}: {response.status_code}")
                for role, token in tokens.items():
                    headers = {"Authorization": f"Bearer {token}"}
                    response = await client.request(method, url, headers=headers)
                    status = response.status_code
                    if (role in allowed and status in (401, 403)) or status >= 500:
                        wrong.append(f"{method} {path} {role} (admitted): {status}")
                    if role not in allowed and status != 403:
                        wrong.append(f"{method} {path} {role} (not admitted): {status}")
    assert not wrong, f"{service}:\n" + "\n".join(wrong)


def test_the_dev_signer_refuses_long_lifetimes_and_names(base_settings: dict[str, object]) -> None:
    settings = RtopsSettings(**base_settings)  # type: ignore[arg-type]
    assert issue_dev_token(settings, user="a" * 64, roles=["admin"], ttl=DEV_TOKEN_MAX_LIFETIME)
    with pytest.raises(SettingError, match="at most 36 hours"):
        issue_dev_token(settings, user="olga", roles=["admin"], ttl=timedelta(days=36525))
    with pytest.raises(SettingError, match="1 to 64"):
        issue_dev_token(settings, user="a" * 65, roles=["admin"])


# ---------------------------------------------------------------- staff pages

# Pages that answer without a session by design: signing in and out, the home redirect, the
# static files. Every other route under /ui must take its user from ``pages.user(...)``.
UI_PUBLIC = {
    "/ui/sign-in",
    "/ui/auth/callback",
    "/ui/sign-out",
    "/ui/signed-out",
    "/ui/",
    "/ui/static/{name}",
}
CSRF_FIELD = "csrf_token"


def page_routes(app: FastAPI) -> list[ApiRoute]:
    """The staff pages (session cookie, out of the schema), from the same route table."""
    return [r for r in route_table(app) if r.path.startswith("/ui") and r.path not in UI_PUBLIC]


def _page_dependency(route: ApiRoute, name: str) -> Any | None:
    """The call named ``name`` (``signed_in``, ``with_token``) that ``Pages.user`` put on the
    route, or None."""

    def walk(dependant: Any) -> Any | None:
        if getattr(dependant.call, "__qualname__", "").endswith(f"Pages.user.<locals>.{name}"):
            return dependant.call
        for sub in dependant.dependencies:
            found = walk(sub)
            if found is not None:
                return found
        return None

    return walk(route.dependant)


def page_roles(route: ApiRoute) -> frozenset[str] | None:
    """The roles ``pages.user(*roles)`` admits (every role when it names none); None when the
    route takes no session at all."""
    import inspect

    signed_in = _page_dependency(route, "signed_in")
    if signed_in is None:
        return None
    roles = inspect.getclosurevars(signed_in).nonlocals["roles"]
    return frozenset(roles) if roles else frozenset(ROLES)


def _field(html: str, name: str) -> str:
    import re

    found = re.findall(rf'name="{name}" value="([^"]+)"', html)
    assert found, f"no {name} field in the page"
    return found[-1]


async def signed_in_as(client: httpx.AsyncClient, role: str) -> str:
    """Sign ``client`` in through the development sign-in page; returns the session's CSRF
    token (from the sign-out form)."""
    form = await client.get("/ui/sign-in")
    answer = await client.post(
        "/ui/sign-in",
        data={"name": f"matrix-{role}", "role": role, CSRF_FIELD: _field(form.text, CSRF_FIELD)},
    )
    assert answer.status_code == 303, answer.text
    return _field((await client.get("/ui/sign-out")).text, CSRF_FIELD)


def _to_sign_in(response: httpx.Response) -> bool:
    location = response.headers.get("location", "") or response.headers.get("hx-redirect", "")
    return response.status_code in (200, 303) and "/ui/sign-in" in location


@pytest.mark.parametrize("service", SERVICES)
async def test_staff_pages_authorization_matrix(
    base_settings: dict[str, object], service: str
) -> None:
    """Every page route x each role's session x no session / a tampered cookie / (for forms)
    no CSRF token: no session goes to the sign-in page, a role the page does not admit gets
    the 403 page, an admitted one gets past (any answer but those or a 5xx), and a form
    without the session's CSRF token is a 403."""
    from shared.ui import SESSION_COOKIE

    with service_app(service, base_settings) as (app, _settings):
        routes = page_routes(app)
        assert routes, f"{service} has no staff page"
        unguarded = [f"{r.method} {r.path}" for r in routes if page_roles(r) is None]
        assert not unguarded, f"{service}: pages that take no session: {unguarded}"
        wrong: list[str] = []
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

        opened: list[httpx.AsyncClient] = []

        def client() -> httpx.AsyncClient:
            opened.append(httpx.AsyncClient(transport=transport, base_url="http://test"))
            return opened[-1]

        sessions: dict[str, tuple[httpx.AsyncClient, str]] = {}
        try:
            for role in ROLES:
                browser = client()
                sessions[role] = (browser, await signed_in_as(browser, role))
            anonymous, tampered = client(), client()
            cookie = sessions["admin"][0].cookies[SESSION_COOKIE]
            tampered.cookies.set(
                SESSION_COOKIE, cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")
            )
            for route in routes:
                method, url = route.method, concrete(route.path)
                allowed = page_roles(route) or frozenset()
                form = _page_dependency(route, "with_token") is not None
                for name, who in (("no session", anonymous), ("tampered cookie", tampered)):
                    response = await who.request(method, url)
                    if not _to_sign_in(response):
                        wrong.append(f"{method} {route.path} {name}: {response.status_code}")
                for role, (browser, csrf) in sessions.items():
                    data = {CSRF_FIELD: csrf} if form else None
                    response = await browser.request(method, url, data=data)
                    status = response.status_code
                    if role in allowed and (
                        status == 403 or status >= 500 or _to_sign_in(response)
                    ):
                        wrong.append(f"{method} {route.path} {role} (admitted): {status}")
                    if role not in allowed and status != 403:
                        wrong.append(f"{method} {route.path} {role} (not admitted): {status}")
                    if form and role in allowed:
                        response = await browser.request(method, url, data={})
                        if response.status_code != 403:
                            wrong.append(
                                f"{method} {route.path} {role} without CSRF token: "
                                f"{response.status_code}"
                            )
        finally:
            for browser in opened:
                await browser.aclose()
    assert not wrong, f"{service}:\n" + "\n".join(wrong)
