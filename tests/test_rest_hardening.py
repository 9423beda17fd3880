"""Issue 15, REST: inputs a hostile client sends that used to answer 500 ``text/plain``. Each
is now a problem+json 4xx, on every service that takes the parameter, and changes nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from shared.auth import issue_dev_token
from shared.settings import ROLES
from tests.service_apps import SERVICES, service_app
from tests.test_authz_matrix import api_routes, concrete

PROBLEM = "application/problem+json"
# Services with a ``from``/``to`` time range: (service, path, role allowed to read it).
RANGED = [
    ("scp_listener", "/v1/objects", "admin"),
    ("qa_tracker", "/v1/fractions", "admin"),
    ("billing", "/v1/charges", "admin"),
]
# Keyset-paged listings whose cursor carries an integer id or a time.
PAGED = [
    ("scp_listener", "/v1/objects"),
    ("qa_tracker", "/v1/fractions"),
    ("billing", "/v1/charges"),
]


async def _get(
    base: dict[str, object], service: str, path: str, params: dict[str, str], role: str = "admin"
) -> httpx.Response:
    with service_app(service, base) as (app, settings):
        token = issue_dev_token(settings, user="probe", roles=[role])
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(
                path, params=params, headers={"Authorization": f"Bearer {token}"}
            )


def _problem(response: httpx.Response, status: int = 422) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize(("service", "path", "role"), RANGED)
@pytest.mark.parametrize(
    "params",
    [
        # a naive time at the very start of the calendar: clinic time is before year 1 in UTC
        {"from": "0001-01-01T00:00:00"},
        {"to": "0001-01-01T00:00:00"},
        {"from": "9999-12-31T23:59:59"},
        {"from": "0001-01-01T00:00:00+14:00"},
        {"to": "0001-01-01T00:00:00+14:00"},
        {"from": "9999-12-31T23:59:59-12:00"},
        {"from": "0001-01-01"},
        {"to": "9999-12-31"},
    ],
    ids=repr,
)
async def test_calendar_edges_are_422(
    base_settings: dict[str, object], service: str, path: str, role: str, params: dict[str, str]
) -> None:
    body = _problem(await _get(base_settings, service, path, params, role))
    assert body["errors"][0]["loc"][0] == "query"  # type: ignore[index]


@pytest.mark.parametrize(("service", "path"), PAGED)
@pytest.mark.parametrize("value", [2**31, 2**63, -(2**63) - 1, 10**400, 1e308, "x" * 10])
async def test_overflowing_cursor_is_422(
    base_settings: dict[str, object], service: str, path: str, value: object
) -> None:
    raw = json.dumps([value]) if not isinstance(value, int) or value < 10**300 else f"[{value}]"
    cursor = base64.urlsafe_b64encode(raw.encode()).decode()
    _problem(await _get(base_settings, service, path, {"cursor": cursor}))
    # and a cursor of the right shape but an overflowing value in every position
    cursor = base64.urlsafe_b64encode(f'[{{"t":"9999-12-31T23:59:59-12:00"}},{2**64}]'.encode())
    _problem(await _get(base_settings, service, path, {"cursor": cursor.decode()}))


@pytest.mark.parametrize(
    "fraction_id", [str(2**31), str(2**63), str(-(2**63) - 1), str(10**30), "0"]
)
async def test_fraction_id_out_of_range_is_4xx(
    base_settings: dict[str, object], fraction_id: str
) -> None:
    response = await _get(base_settings, "qa_tracker", f"/v1/fractions/{fraction_id}", {})
    _problem(response, 422)


@pytest.mark.parametrize("week", ["9999-W52", "9999-W53", "0001-W01", "0000-W01", "2026-W54"])
async def test_week_at_calendar_edge_is_422(base_settings: dict[str, object], week: str) -> None:
    response = await _get(base_settings, "qa_tracker", "/v1/compliance/weekly", {"week": week})
    _problem(response)


async def test_unexpected_error_is_problem_json(base_settings: dict[str, object]) -> None:
    """Whatever slips past validation is still a problem+json 500, never text/plain."""
    with service_app("qa_tracker", base_settings) as (app, _settings):

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("probe")

        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/boom")
    body = _problem(response, 500)
    assert "probe" not in json.dumps(body)  # no internals leak to the caller


# ---------------------------------------------------------------- lengths at the edge

LONG = "1." + "2" * 98  # a 100-character UID (or Patient ID): over every VR UI/LO limit of 64
IDENTIFIERS = ("uid", "patient_id")


def _identifier_params(dependant: Any) -> list[tuple[str, str]]:
    """(``path``/``query``, name) of every DICOM identifier a route takes in its URL."""
    found = [("path", p.alias) for p in dependant.path_params]
    found += [("query", p.alias) for p in dependant.query_params]
    for sub in dependant.dependencies:
        found += _identifier_params(sub)
    return [(where, n) for where, n in found if any(i in n.lower() for i in IDENTIFIERS)]


@pytest.mark.parametrize("service", SERVICES)
async def test_long_identifiers_in_urls_are_422(
    base_settings: dict[str, object], service: str
) -> None:
    """Every route of every service, from its route table: a 100-character UID or Patient ID
    in the path or query is a 422 before anything reads or writes with it."""
    probed, wrong = 0, []
    with service_app(service, base_settings) as (app, settings):
        token = issue_dev_token(settings, user="probe", roles=list(ROLES))
        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for route in api_routes(app):
                for where, name in _identifier_params(route.dependant):
                    path = (
                        route.path.replace(f"{{{name}}}", LONG) if where == "path" else route.path
                    )
                    params = {name: LONG} if where == "query" else {}
                    response = await client.request(
                        route.method, concrete(path), params=params, headers=headers
                    )
                    probed += 1
                    problem = response.headers.get("content-type") == PROBLEM
                    if response.status_code != 422 or not problem:
                        wrong.append(f"{route.method} {route.path} {name}: {response.status_code}")
    assert not wrong, "\n".join(wrong)
    assert probed, f"{service} takes no identifier in a URL: drop it from this probe"


@pytest.mark.parametrize(
    ("service", "path", "body"),
    [
        ("scheduler", "/v1/simulation-requests", {"patient_id": LONG}),
        ("documents", "/v1/courses/regroup", {"plan_uids": [LONG], "reason": "probe"}),
        (
            "documents",
            "/v1/notes",
            {"patient_id": LONG, "course_id": "C1", "week": "2026-W48", "kind": "physics_check"},
        ),
    ],
)
async def test_long_identifiers_in_bodies_are_422(
    base_settings: dict[str, object], service: str, path: str, body: dict[str, Any]
) -> None:
    with service_app(service, base_settings) as (app, settings):
        token = issue_dev_token(settings, user="probe", roles=list(ROLES))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post(
                path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
    errors = _problem(response)["errors"]
    assert any(str(LONG) not in str(e["loc"]) and e["type"] == "string_too_long" for e in errors)
