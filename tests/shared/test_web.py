"""The service app factory (shared/web.py), bearer-token auth (shared/auth.py) and the audit log
(shared/audit.py), through a tiny app of the tests' own."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from shared.audit import AuditMixin, record_access
from shared.auth import Principal, dev_signing_key, issue_dev_token, require_roles
from shared.db import new_metadata
from shared.errors import NotFound
from shared.settings import RtopsSettings
from shared.web import PROBLEM_JSON, ReadinessCheck, create_app
from tests.databases import scratch_database

ISSUER = "https://idp.example.org/realms/rtops"
KID = "test-key-1"
ORDER = {"patient_id": "RT-0001", "dose_gy": 60.0, "fractions": 30}


class Prescription(BaseModel):
    patient_id: str = Field(min_length=1)
    dose_gy: float = Field(gt=0)
    fractions: int = Field(gt=0)


def orders_router() -> APIRouter:
    router = APIRouter()

    @router.post("/prescriptions")
    async def prescribe(
        body: Prescription,
        principal: Annotated[Principal, require_roles("physician")],
    ) -> dict[str, Any]:
        return {
            "by": principal.user,
            "roles": sorted(principal.roles),
            "patient_id": body.patient_id,
            "per_fraction_gy": body.dose_gy / body.fractions,
        }

    @router.get("/patients/{patient_id}")
    async def patient(patient_id: str) -> dict[str, str]:
        raise NotFound(f"no patient {patient_id}; check the ID in the OIS")

    return router


async def passing() -> None:
    return None


async def broker_down() -> None:
    raise ConnectionError("not connected to NATS")


def make_app(
    settings: RtopsSettings, readiness: dict[str, ReadinessCheck] | None = None
) -> FastAPI:
    return create_app(
        title="test",
        settings=settings,
        registry=CollectorRegistry(),
        readiness=readiness if readiness is not None else {"database": passing},
        routers=[orders_router()],
    )


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rtops.test")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


@pytest.fixture
def settings(base_settings: dict[str, Any]) -> RtopsSettings:
    return RtopsSettings(**base_settings)


@pytest.fixture
async def client(settings: RtopsSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(settings)) as c:
        yield c


# ---------------------------------------------------------------- operations endpoints


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_when_every_check_passes(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok"}}


async def test_readyz_names_the_failing_check(settings: RtopsSettings) -> None:
    app = make_app(settings, {"database": passing, "nats": broker_down})
    async with client_for(app) as c:
        response = await c.get("/readyz")
    body = assert_problem(response, 503)
    assert body["checks"] == {"database": "ok", "nats": "fail"}
    assert body["detail"] == "nats: not connected to NATS"


async def test_metrics_count_requests_by_route(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    await client.get("/healthz")
    await client.get("/patients/RT-9")

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    # Labelled by route template, not by path: patient IDs must not leak into metrics.
    assert 'route="/patients/{patient_id}",status="404"} 1.0' in text
    assert "RT-9" not in text
    assert "http_request_seconds_bucket" in text


async def test_apps_do_not_share_a_registry(settings: RtopsSettings) -> None:
    # Two apps in one process (as in these tests) must not collide in prometheus' registry.
    async with client_for(make_app(settings)) as a, client_for(make_app(settings)) as b:
        await a.get("/healthz")
        text = (await b.get("/metrics")).text
    assert 'route="/healthz"' not in text


# ---------------------------------------------------------------- errors and auth


async def test_not_found_is_a_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/patients/RT-404"), 404)
    assert body["title"] == "Not found"
    assert body["detail"] == "no patient RT-404; check the ID in the OIS"
    assert body["instance"] == "/patients/RT-404"


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404)


async def test_no_token_is_401_with_challenge(client: httpx.AsyncClient) -> None:
    response = await client.post("/prescriptions", json=ORDER)
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in body["detail"]


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-jwt", "Bearer ", "Basic dXNlcjpwYXNz"],
    ids=["garbage", "empty", "basic"],
)
async def test_bad_token_is_401(client: httpx.AsyncClient, header: str) -> None:
    response = await client.post("/prescriptions", json=ORDER, headers={"Authorization": header})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_token_signed_with_another_key_is_401(
    client: httpx.AsyncClient, settings: RtopsSettings
) -> None:
    other = settings.model_copy(update={"dev_signing_key": "another-installation-" + "k" * 32})
    token = issue_dev_token(other, user="mallory", roles=["physician"])
    body = assert_problem(
        await client.post("/prescriptions", json=ORDER, headers=bearer(token)), 401
    )
    assert "Signature verification failed" in body["detail"]


async def test_expired_token_is_401(client: httpx.AsyncClient, settings: RtopsSettings) -> None:
    token = issue_dev_token(settings, user="drwho", roles=["physician"], ttl=timedelta(seconds=-1))
    body = assert_problem(
        await client.post("/prescriptions", json=ORDER, headers=bearer(token)), 401
    )
    assert "expired" in body["detail"]


async def test_wrong_role_is_403(client: httpx.AsyncClient, settings: RtopsSettings) -> None:
    token = issue_dev_token(settings, user="rtt1", roles=["therapist", "physicist"])
    body = assert_problem(
        await client.post("/prescriptions", json=ORDER, headers=bearer(token)), 403
    )
    assert "physician" in body["detail"]
    assert "rtt1" in body["detail"]


async def test_right_role_is_200(client: httpx.AsyncClient, settings: RtopsSettings) -> None:
    token = issue_dev_token(settings, user="drwho", roles=["physician", "admin"])
    response = await client.post("/prescriptions", json=ORDER, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "by": "drwho",
        "roles": ["admin", "physician"],
        "patient_id": "RT-0001",
        "per_fraction_gy": 2.0,
    }


async def test_invalid_body_is_422_with_errors(
    client: httpx.AsyncClient, settings: RtopsSettings
) -> None:
    token = issue_dev_token(settings, user="drwho", roles=["physician"])
    response = await client.post(
        "/prescriptions",
        headers=bearer(token),
        json={"patient_id": "", "dose_gy": 60, "fractions": "many"},
    )
    body = assert_problem(response, 422)
    fields = {tuple(e["loc"]): e["type"] for e in body["errors"]}
    assert fields == {
        ("body", "patient_id"): "string_too_short",
        ("body", "fractions"): "int_parsing",
    }
    assert all(e["msg"] for e in body["errors"])


def test_issue_dev_token_refuses_unknown_roles(settings: RtopsSettings) -> None:
    with pytest.raises(ValueError, match=r"unknown role\(s\) \['surgeon'\]"):
        issue_dev_token(settings, user="x", roles=["physician", "surgeon"])
    assert not (settings.var_dir / "jwt.key").exists()  # refused before touching the key


async def test_dev_signing_key_is_private_and_reused(settings: RtopsSettings) -> None:
    key_file = settings.var_dir / "jwt.key"
    assert not key_file.exists()

    token = issue_dev_token(settings, user="drwho", roles=["physician"])

    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    assert len(key) >= 32
    assert dev_signing_key(settings) == key
    issue_dev_token(settings, user="other", roles=["therapist"])
    assert key_file.read_text() == key
    # A fresh app (a restarted service) still accepts the earlier token.
    async with client_for(make_app(settings)) as c:
        response = await c.post("/prescriptions", json=ORDER, headers=bearer(token))
    assert response.status_code == 200


async def test_dev_token_honours_a_nested_roles_claim(settings: RtopsSettings) -> None:
    nested = settings.model_copy(update={"roles_claim": "realm_access.roles"})
    token = issue_dev_token(nested, user="drwho", roles=["physician"])
    async with client_for(make_app(nested)) as c:
        response = await c.post("/prescriptions", json=ORDER, headers=bearer(token))
    assert response.status_code == 200, response.text


def test_configured_dev_signing_key_writes_no_file(settings: RtopsSettings) -> None:
    key = "from-the-environment-" + "k" * 32
    configured = settings.model_copy(update={"dev_signing_key": key})
    token = issue_dev_token(configured, user="drwho", roles=["physician"])
    assert (
        jwt.decode(token, key, algorithms=["HS256"], audience=configured.oidc_audience)["sub"]
        == "drwho"
    )
    assert not (settings.var_dir / "jwt.key").exists()


# ---------------------------------------------------------------- OIDC


class Idp:
    """A stand-in identity provider: an RSA key, and its JWKS served over real HTTP."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = json.dumps({"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})
        self.requests = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests += 1
                body = idp.jwks.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/protocol/openid-connect/certs"

    def token(self, *, key: rsa.RSAPrivateKey | None = None, **overrides: Any) -> str:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": "rtops",
            "sub": "f3c1-uuid",
            "preferred_username": "drwho",
            "iat": now,
            "exp": now + timedelta(minutes=5),
            "realm_access": {"roles": ["physician", "offline_access"]},
        }
        claims.update(overrides)
        return jwt.encode(
            {k: v for k, v in claims.items() if v is not None},
            key or self.key,
            algorithm="RS256",
            headers={"kid": KID},
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    server = Idp()
    yield server
    server.stop()


@pytest.fixture
async def oidc_client(settings: RtopsSettings, idp: Idp) -> AsyncIterator[httpx.AsyncClient]:
    oidc = settings.model_copy(
        update={
            "oidc_jwks_url": idp.jwks_url,
            "oidc_issuer": ISSUER,
            "oidc_audience": "rtops",
            "roles_claim": "realm_access.roles",
        }
    )
    async with client_for(make_app(oidc)) as c:
        yield c


async def test_oidc_token_with_right_issuer_and_audience(
    oidc_client: httpx.AsyncClient, idp: Idp
) -> None:
    before = idp.requests
    response = await oidc_client.post("/prescriptions", json=ORDER, headers=bearer(idp.token()))
    assert response.status_code == 200, response.text
    # The subject qualified by the issuer is the user (issue 15: preferred_username is the
    # user's to change, so it is never the identity); roles come from the nested claim,
    # unknown ones dropped.
    assert response.json()["by"] == f"{ISSUER.rstrip('/')}#f3c1-uuid"
    assert response.json()["roles"] == ["physician"]
    assert idp.requests > before  # each app fetched the key from the JWKS endpoint


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "another-app"}, "Audience doesn't match"),
        ({"iss": "https://evil.example.org/"}, "Invalid issuer"),
        ({"exp": datetime.now(UTC) - timedelta(minutes=1)}, "expired"),
        ({"exp": None}, 'Token is missing the "exp" claim'),
    ],
    ids=["audience", "issuer", "expired", "no-exp"],
)
async def test_oidc_token_with_wrong_claims_is_401(
    oidc_client: httpx.AsyncClient, idp: Idp, overrides: dict[str, Any], reason: str
) -> None:
    response = await oidc_client.post(
        "/prescriptions", json=ORDER, headers=bearer(idp.token(**overrides))
    )
    body = assert_problem(response, 401)
    assert reason in body["detail"]


async def test_oidc_token_signed_by_another_key_is_401(
    oidc_client: httpx.AsyncClient, idp: Idp
) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = await oidc_client.post(
        "/prescriptions", json=ORDER, headers=bearer(idp.token(key=forger))
    )
    assert_problem(response, 401)


async def test_oidc_mode_rejects_dev_tokens(
    oidc_client: httpx.AsyncClient, settings: RtopsSettings
) -> None:
    # An HS256 token from the embedded setup must not pass once an issuer is configured.
    token = issue_dev_token(settings, user="drwho", roles=["physician"])
    assert_problem(await oidc_client.post("/prescriptions", json=ORDER, headers=bearer(token)), 401)


async def test_oidc_roles_are_read_from_the_configured_claim(
    oidc_client: httpx.AsyncClient, idp: Idp
) -> None:
    # Roles at the top level are not the configured claim and must not count.
    token = idp.token(roles=["physician"], realm_access={"roles": ["therapist"]})
    body = assert_problem(
        await oidc_client.post("/prescriptions", json=ORDER, headers=bearer(token)), 403
    )
    assert "drwho has therapist" in body["detail"]
    no_roles = idp.token(realm_access=None)
    body = assert_problem(
        await oidc_client.post("/prescriptions", json=ORDER, headers=bearer(no_roles)), 403
    )
    assert "has none" in body["detail"]


# ---------------------------------------------------------------- audit


class AuditBase(DeclarativeBase):
    metadata = new_metadata()


class AuditLog(AuditMixin, AuditBase):
    pass


@pytest.fixture
def audit_db(settings: RtopsSettings) -> Iterator[sessionmaker[Session]]:
    with scratch_database(settings, "audittest", AuditBase.metadata) as factory:
        yield factory


def audit_rows(factory: sessionmaker[Session]) -> list[AuditLog]:
    with factory() as session:
        return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))


PHYSICIAN = Principal(user="drwho", roles=frozenset({"physician", "admin"}))


def test_record_access_writes_one_row_per_distinct_patient(audit_db: sessionmaker[Session]) -> None:
    before = datetime.now(UTC)
    with audit_db.begin() as session:
        record_access(
            session,
            AuditLog,
            PHYSICIAN,
            action="read",
            resource="/courses?site=main",
            patient_ids=["RT-2", "RT-1", "RT-2", None, ""],
        )

    rows = audit_rows(audit_db)
    assert [r.patient_id for r in rows] == ["RT-1", "RT-2"]
    for row in rows:
        assert (row.user, row.roles, row.action, row.resource) == (
            "drwho",
            "admin,physician",
            "read",
            "/courses?site=main",
        )
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)  # SQLite drops the zone
        assert at >= before - timedelta(seconds=1)


def test_record_access_without_patients_leaves_one_row(audit_db: sessionmaker[Session]) -> None:
    therapist = Principal(user="rtt1", roles=frozenset({"therapist"}))
    with audit_db.begin() as session:
        record_access(
            session, AuditLog, therapist, action="list", resource="/schedule", patient_ids=[]
        )
        record_access(
            session,
            AuditLog,
            therapist,
            action="write",
            resource="x" * 600,
            patient_ids=iter([None]),
        )

    rows = audit_rows(audit_db)
    assert [(r.user, r.roles, r.action, r.patient_id) for r in rows] == [
        ("rtt1", "therapist", "list", None),
        ("rtt1", "therapist", "write", None),
    ]
    assert len(rows[1].resource) == 500


def test_audit_rows_are_part_of_the_callers_transaction(audit_db: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), audit_db.begin() as session:
        record_access(
            session, AuditLog, PHYSICIAN, action="write", resource="/plans/1", patient_ids=["RT-1"]
        )
        raise RuntimeError("the change itself failed")
    assert audit_rows(audit_db) == []
