"""The authorization matrix (issue 15), generated from every service's route table: every API
route x every role, and no token / an expired one / one for another audience / one signed by
another key / one living longer than the signer allows. A route that names no role, and is
not one of the few public ones below, fails here: a new endpoint cannot skip the matrix.

A role the route admits must get past authorization (any status but 401/403: the dummy path
ids and empty bodies then fail validation or find nothing, so nothing is changed); every other
role gets 403, every bad token 401, each as problem+json."""

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
