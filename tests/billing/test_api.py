"""REST API of the billing service, driven with httpx against the real FastAPI app and
database. The app is ``create_app`` without its lifespan tasks (consumer, relay, sweep): events
go in through ``BillingService.apply_batch`` and "now" is the test's ``Clock``."""

from __future__ import annotations

import base64
import csv
import io
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.billing.service import BillingService
from services.billing.store import AuditLog, ChargeRow, CourseClosure
from shared.web import PROBLEM_JSON
from tests.billing.conftest import Auth
from tests.billing.events import (
    MONDAY,
    PID,
    assessed_event,
    billing_plan_event,
    note_event,
    treatment,
    weekdays,
)
from tests.events import PLAN_UID

COURSE = f"course:{PLAN_UID}"
CHARGE_FIELDS = {
    "id",
    "patient_id",
    "course_id",
    "cpt",
    "modifiers",
    "units",
    "service_date",
    "period_start",
    "period_end",
    "status",
    "hold_reason",
    "evidence",
    "rule",
    "citation",
    "rules_version",
    "exported",
    "exported_at",
}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def audit(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str | None]]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


def six_fractions(service: BillingService, *, pid: str = PID, plan_uid: str = PLAN_UID) -> None:
    service.apply_batch(
        [
            billing_plan_event(plan_uid=plan_uid, pid=pid, fractions=6),
            *treatment(6, pid=pid, plan_uid=plan_uid),
            *[
                assessed_event(i + 1, d, pid=pid, plan_uid=plan_uid)
                for i, d in enumerate(weekdays(6))
            ],
            note_event(MONDAY, pid=pid, course_id=f"course:{plan_uid}"),
        ]
    )


async def all_charges(
    client: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": "7", **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/charges", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


# ---------------------------------------------------------------- GET /v1/charges


async def test_charges_have_exactly_the_documented_fields(
    client: httpx.AsyncClient, service: BillingService, auth: Auth
) -> None:
    six_fractions(service)
    response = await client.get("/v1/charges", params={"patient_id": PID}, headers=auth())
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "next_cursor"}
    items = body["items"]
    assert items and all(set(i) == CHARGE_FIELDS for i in items)
    management = [i for i in items if i["cpt"] == "77427"]
    assert [(m["units"], m["status"], m["hold_reason"]) for m in management] == [(1, "ready", None)]
    assert management[0]["course_id"] == COURSE
    assert management[0]["evidence"] and "CMS" in management[0]["citation"]
    guidance = [i for i in items if i["cpt"] == "77387"]
    assert len(guidance) == 6 and all(g["modifiers"] == ["26"] for g in guidance)
    dates = [i["service_date"] for i in items]
    assert dates == sorted(dates, reverse=True)  # newest first


async def test_the_cursor_pages_through_every_charge_once(
    client: httpx.AsyncClient, service: BillingService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    six_fractions(service)
    items = await all_charges(client, auth())
    with factory() as session:
        ids = set(session.scalars(select(ChargeRow.id)))
    assert len(items) == len(ids) > 7
    assert {i["id"] for i in items} == ids


async def test_charges_filter_by_patient_date_of_service_and_status(
    client: httpx.AsyncClient, service: BillingService, auth: Auth
) -> None:
    six_fractions(service)
    six_fractions(service, pid="BILL-002", plan_uid=f"{PLAN_UID}.2")
    service.apply(assessed_event(2, weekdays(2)[-1], revision=2, status="reviewed_late"))
    first = await all_charges(client, auth(), patient_id=PID)
    assert {i["patient_id"] for i in first} == {PID}
    # from/to: dates in the clinic's zone, "to" exclusive at midnight.
    week = await all_charges(client, auth(), **{"from": "2026-03-03", "to": "2026-03-05"})
    assert {i["service_date"] for i in week} == {"2026-03-03", "2026-03-04"}
    held = await all_charges(client, auth(), status="hold")
    assert [(h["patient_id"], h["cpt"], h["hold_reason"]) for h in held] == [
        (PID, "77387", "review_withdrawn")
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"status": "void"}, "status"),
        ({"from": "yesterday"}, "from"),
        ({"patient": PID}, "patient"),  # a misspelt filter must not list everyone
    ],
)
async def test_an_invalid_query_is_a_problem_with_errors(
    client: httpx.AsyncClient, auth: Auth, params: dict[str, str], field: str
) -> None:
    body = problem(await client.get("/v1/charges", params=params, headers=auth()), 422)
    assert ["query", field] in [e["loc"] for e in body["errors"]]


@pytest.mark.parametrize(
    "cursor",
    ["nope", base64.urlsafe_b64encode(b'["yesterday","x"]').decode()],
)
async def test_a_cursor_this_api_did_not_return_is_422(
    client: httpx.AsyncClient, auth: Auth, cursor: str
) -> None:
    body = problem(await client.get("/v1/charges", params={"cursor": cursor}, headers=auth()), 422)
    assert "cursor" in body["detail"]


# ---------------------------------------------------------------- roles and audit

ENDPOINTS = [
    ("GET", "/v1/charges"),
    ("GET", "/v1/charges/export.csv"),
    ("GET", "/v1/courses"),
    ("GET", f"/v1/courses/{COURSE}"),
    ("POST", f"/v1/courses/{COURSE}/close"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("role", ["billing", "admin"])
async def test_billing_and_admin_are_allowed(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    method: str,
    path: str,
    role: str,
) -> None:
    six_fractions(service)
    response = await client.request(method, path, headers=auth(role))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("role", ["physician", "therapist"])
async def test_clinical_roles_are_forbidden_and_leave_no_trace(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
    method: str,
    path: str,
    role: str,
) -> None:
    six_fractions(service)
    body = problem(await client.request(method, path, headers=auth(role)), 403)
    assert role in body["detail"]
    assert audit(factory) == []
    with factory() as session:
        assert not session.scalars(select(ChargeRow).where(ChargeRow.exported)).all()
        assert not session.scalars(select(CourseClosure)).all()


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_needs_a_token(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    problem(await client.request(method, path), 401)


async def test_every_read_is_audited_with_its_patients(
    client: httpx.AsyncClient, service: BillingService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    six_fractions(service)
    six_fractions(service, pid="BILL-002", plan_uid=f"{PLAN_UID}.2")
    assert (await client.get("/v1/charges", headers=auth(user="bea"))).status_code == 200
    assert sorted(audit(factory)) == [
        ("read", "bea", "/v1/charges", PID),
        ("read", "bea", "/v1/charges", "BILL-002"),
    ]
    await client.get("/v1/courses", params={"patient_id": "BILL-002"}, headers=auth("admin", "al"))
    assert audit(factory)[2:] == [("read", "al", "/v1/courses?patient_id=BILL-002", "BILL-002")]
    await client.get(f"/v1/courses/{COURSE}", headers=auth(user="bea"))
    assert audit(factory)[3:] == [("read", "bea", f"/v1/courses/{COURSE}", PID)]
    # A listing that finds nobody still leaves one row.
    await client.get("/v1/charges", params={"patient_id": "NOBODY"}, headers=auth(user="bea"))
    assert audit(factory)[4:] == [("read", "bea", "/v1/charges?patient_id=NOBODY", None)]
    # Refused requests leave no trace.
    before = audit(factory)
    problem(await client.get("/v1/courses/course:none", headers=auth()), 404)
    assert audit(factory) == before


# ---------------------------------------------------------------- export


async def test_export_hands_out_ready_charges_once_as_csv(
    client: httpx.AsyncClient, service: BillingService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    six_fractions(service)
    service.apply(assessed_event(2, weekdays(2)[-1], revision=2, status="reviewed_late"))
    response = await client.get("/v1/charges/export.csv", headers=auth())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    with factory() as session:
        ready = set(session.scalars(select(ChargeRow.id).where(ChargeRow.status == "ready")))
        held = set(session.scalars(select(ChargeRow.id).where(ChargeRow.status == "hold")))
    assert {r["charge_id"] for r in rows} == ready and held
    assert not {r["charge_id"] for r in rows} & held
    guidance = next(r for r in rows if r["cpt"] == "77387")
    assert (guidance["modifiers"], guidance["units"], guidance["patient_id"]) == ("26", "1", PID)
    dates = [date.fromisoformat(r["service_date"]) for r in rows]
    assert dates == sorted(dates)
    assert [a[0] for a in audit(factory)] == ["export"]
    again = await client.get("/v1/charges/export.csv", headers=auth())
    assert again.text.strip().splitlines() == [again.text.strip()]  # the header only
    listed = await all_charges(client, auth())
    assert all(i["exported"] == (i["id"] in ready) for i in listed)


# ---------------------------------------------------------------- courses


async def test_courses_list_fractions_delivered_and_status(
    client: httpx.AsyncClient, service: BillingService, auth: Auth
) -> None:
    service.apply_batch([billing_plan_event(fractions=28), *treatment(8)])
    response = await client.get("/v1/courses", params={"patient_id": PID}, headers=auth())
    (course,) = response.json()["items"]
    assert course["id"] == COURSE and course["plan_uids"] == [PLAN_UID]
    assert (course["status"], course["fractions_delivered"]) == ("open", 8)
    assert (course["first_session"], course["last_session"]) == ("2026-03-02", "2026-03-11")
    assert course["closures"] == []


async def test_closing_a_course_earns_the_remainder(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
) -> None:
    service.apply_batch(
        [
            billing_plan_event(fractions=28),
            *treatment(8),
            note_event(MONDAY),
            note_event(date(2026, 3, 9)),
        ]
    )
    assert len(await all_charges(client, auth(), status="ready")) > 0
    before = [c for c in await all_charges(client, auth()) if c["cpt"] == "77427"]
    assert len(before) == 1
    response = await client.post(
        f"/v1/courses/{COURSE}/close",
        json={"closed_on": "2026-03-12", "reason": "patient declined further treatment"},
        headers=auth(user="bea"),
    )
    assert response.status_code == 200, response.text
    course = response.json()
    assert course["status"] == "closed"
    assert course["closures"][-1]["reason"] == "staff"
    assert course["closures"][-1]["on"] == "2026-03-12"
    after = [c for c in await all_charges(client, auth()) if c["cpt"] == "77427"]
    assert len(after) == 2  # CMS Pub 100-04 Ch. 13 s. 70: 8 fractions, 2 units at the end
    assert ("write", "bea", f"/v1/courses/{COURSE}/close", PID) in audit(factory)
    with factory() as session:
        closure = session.scalars(select(CourseClosure)).one()
        assert (closure.closed_by, closure.reason) == ("bea", "patient declined further treatment")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"closed_on": "2026-04-01"}, 422),  # in the future
        ({"closed_on": "2026-02-01"}, 422),  # before the first session
        ({"closed_on": "soon"}, 422),
    ],
)
async def test_a_closure_that_cannot_be_is_refused(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
    body: dict[str, str],
    status: int,
) -> None:
    service.apply_batch([billing_plan_event(fractions=28), *treatment(3)])
    problem(await client.post(f"/v1/courses/{COURSE}/close", json=body, headers=auth()), status)
    with factory() as session:
        assert not session.scalars(select(CourseClosure)).all()


async def test_closing_an_unknown_course_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    body = problem(await client.post("/v1/courses/course:nope/close", headers=auth()), 404)
    assert "course:nope" in body["detail"]
