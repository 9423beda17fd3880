"""Issue 15, REST: inputs a hostile client sends that used to answer 500 ``text/plain``. Each
is now a problem+json 4xx, on every service that takes the parameter, and changes nothing."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from shared.auth import issue_dev_token
from tests.service_apps import service_app

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
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**400, 1e308, "x" * 10])
async def test_overflowing_cursor_is_422(
    base_settings: dict[str, object], service: str, path: str, value: object
) -> None:
    raw = json.dumps([value]) if not isinstance(value, int) or value < 10**300 else f"[{value}]"
    cursor = base64.urlsafe_b64encode(raw.encode()).decode()
    _problem(await _get(base_settings, service, path, {"cursor": cursor}))
    # and a cursor of the right shape but an overflowing value in every position
    cursor = base64.urlsafe_b64encode(f'[{{"t":"9999-12-31T23:59:59-12:00"}},{2**64}]'.encode())
    _problem(await _get(base_settings, service, path, {"cursor": cursor.decode()}))


@pytest.mark.parametrize("fraction_id", [str(2**63), str(-(2**63) - 1), str(10**30)])
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
