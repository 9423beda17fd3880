"""REST API of the QA tracker, driven with httpx against the real FastAPI app and database.

The app is built like ``services.qa_tracker.app.create_app`` but without its lifespan tasks
(consumer, relay, sweep): events go in through ``QaService.apply`` and "now" is the test's
``Clock``. Due times follow docs/qa_tracker.md with the default policy (America/New_York, US
public holidays, 24 business hours, before the next fraction); 2026-11-26 is Thanksgiving.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.app import api_app
from services.qa_tracker.service import CLOCK_SKEW, QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import AuditLog, Fraction, Outbox, ReviewRow
from shared.auth import issue_dev_token
from shared.events import ReviewDocumented, parse_event
from shared.web import PROBLEM_JSON
from tests.events import (
    NY,
    PLAN_UID,
    Clock,
    at,
    imaged_day,
    imaging_event,
    plan_event,
    record_event,
    registration_event,
)
from tests.qa_tracker.factories import make_service, policy_with

OLGA = "Oncologist^Olga"
PAUL = "Oncologist^Paul"
DOCTOR = "dr.olga"  # the user name in physician tokens: a review's physician
FIELDS = {
    "id",
    "patient_id",
    "plan_uid",
    "fraction_number",
    "treated_at",
    "machine",
    "imaged",
    "review_status",
    "due_at",
    "correction_mm",
    "override_required",
    "override_documented",
    "rejected",
    "physician",
}
COUNTS = (  # the report's columns, in the CSV's order
    "imaged_fractions",
    "reviewed_on_time",
    "reviewed_late",
    "reviewed_backdated",
    "overdue",
    "pending",
    "overrides_required",
    "overrides_documented",
    "compliance_pct",
    "attested_compliance_pct",
)
Db = tuple[QaSettings, sessionmaker[Session]]
Auth = Callable[..., dict[str, str]]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def service(qa_db: Db, clock: Clock) -> QaService:
    """Any physician may review (``reviewers: any``): the tests here are about what a review
    does; who may document one is tested in test_review_identity.py."""
    settings, factory = qa_db
    return make_service(settings, factory, clock, policy_with(reviewers=domain.Reviewers.ANY))


@pytest.fixture
def app(qa_db: Db, service: QaService) -> FastAPI:
    """What ``create_app`` builds, minus the lifespan tasks; the service runs on ``clock``."""
    settings, factory = qa_db
    return api_app(settings, factory, service)


@pytest.fixture
def auth(qa_db: Db) -> Auth:
    settings, _ = qa_db

    def headers(role: str = "physician", user: str = DOCTOR) -> dict[str, str]:
        token = issue_dev_token(settings, user=user, roles=[role])
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def factory(qa_db: Db) -> sessionmaker[Session]:
    return qa_db[1]


def plan_uid(pid: str) -> str:
    """One plan per patient (a plan row belongs to one patient)."""
    return PLAN_UID if pid == "QA-001" else f"{PLAN_UID}.{int(pid.encode().hex(), 16)}"


def admit(service: QaService, pid: str, physician: str | None) -> None:
    """The patient's plan: approved by ``physician``, or unapproved (no physician) for None."""
    assert service.apply(plan_event(plan_uid=plan_uid(pid), pid=pid, physician=physician))


def treat(
    service: QaService,
    fraction: int,
    day: str,
    hhmm: str = "08:00",
    *,
    pid: str = "QA-001",
    machine: str = "TrueBeam1",
    shift_mm: tuple[float, float, float] = (1.0, -2.0, 0.5),
    imaged: bool = True,
) -> None:
    """One fraction; imaged: a CBCT 5 minutes and its match 2 minutes before the beam."""
    start = at(day, hhmm)
    series = f"9.9.{pid}.{day}.{hhmm}"
    events = []
    if imaged:
        events = [
            imaging_event(
                series, day, _hhmm(start - timedelta(minutes=5)), pid=pid, machine=machine
            ),
            registration_event(
                f"8.8.{pid}.{day}.{hhmm}",
                series,
                day,
                _hhmm(start - timedelta(minutes=2)),
                pid=pid,
                shift_mm=shift_mm,
            ),
        ]
    events.append(
        record_event(fraction, day, hhmm, pid=pid, plan_uid=plan_uid(pid), machine=machine)
    )
    for event in events:
        assert service.apply(event)


def _hhmm(moment: datetime) -> str:
    return moment.astimezone(NY).strftime("%H:%M")


def ids(factory: sessionmaker[Session]) -> dict[tuple[str, int | None], int]:
    """(patient id, fraction number) -> fraction id."""
    with factory() as session:
        return {(f.patient_id, f.fraction_number): f.id for f in session.scalars(select(Fraction))}


def outbox(factory: sessionmaker[Session]) -> list[ReviewDocumented]:
    """The review announcements queued (fraction.assessed has tests of its own)."""
    with factory() as session:
        bodies = session.scalars(select(Outbox.body).order_by(Outbox.id)).all()
    events = [parse_event(body) for body in bodies]
    assert {e.type for e in events} <= {"rtops.qa.review.documented", "rtops.qa.fraction.assessed"}
    payloads = [e.data for e in events if e.type == "rtops.qa.review.documented"]
    assert all(isinstance(p, ReviewDocumented) for p in payloads)
    return payloads  # type: ignore[return-value]


def audit(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str | None]]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


def when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


async def post_review(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    fraction_id: int,
    decision: str = "approved",
    reviewed_at: datetime | None = None,
    *,
    clock: Clock | None = None,
    **extra: Any,
) -> httpx.Response:
    """``clock``: record the review when it happened (the clock at ``reviewed_at`` for the
    request), as a physician documenting it at once does; without it, "now" stays."""
    body: dict[str, Any] = {"decision": decision, **extra}
    if reviewed_at is not None:
        body["reviewed_at"] = reviewed_at.isoformat()
    if clock is None or reviewed_at is None:
        return await client.post(f"/v1/fractions/{fraction_id}/reviews", json=body, headers=headers)
    now, clock.now = clock.now, reviewed_at
    try:
        return await client.post(f"/v1/fractions/{fraction_id}/reviews", json=body, headers=headers)
    finally:
        clock.now = now


async def fraction(client: httpx.AsyncClient, auth: Auth, fraction_id: int) -> dict[str, Any]:
    response = await client.get(f"/v1/fractions/{fraction_id}", headers=auth("therapist"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listing(client: httpx.AsyncClient, auth: Auth, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/fractions", params=params, headers=auth("therapist"))
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# ---------------------------------------------------------------- GET /v1/fractions


async def test_a_listed_fraction_has_exactly_the_documented_fields(
    client: httpx.AsyncClient, service: QaService, auth: Auth, clock: Clock
) -> None:
    admit(service, "QA-001", OLGA)
    treat(service, 1, "2026-11-23", "08:00")
    clock.now = at("2026-11-23", "12:00")

    [item] = await listing(client, auth)

    assert set(item) == FIELDS
    assert item["patient_id"] == "QA-001"
    assert item["plan_uid"] == PLAN_UID
    assert item["fraction_number"] == 1
    assert when(item["treated_at"]) == at("2026-11-23", "08:00")
    assert item["machine"] == "TrueBeam1"
    assert item["imaged"] is True
    assert item["review_status"] == "pending"
    # Monday 08:00 + 24 business hours; no next fraction.
    assert when(item["due_at"]) == at("2026-11-24", "08:00")
    assert item["correction_mm"] == 2.0  # largest of (1.0, -2.0, 0.5)
    assert item["override_required"] is False
    assert item["override_documented"] is False
    assert item["rejected"] is False
    assert item["physician"] == OLGA


async def test_a_fraction_without_imaging_is_not_imaged(
    client: httpx.AsyncClient, service: QaService, auth: Auth
) -> None:
    admit(service, "QA-001", OLGA)
    treat(service, 1, "2026-11-23", imaged=False)

    [item] = await listing(client, auth)

    assert item["imaged"] is False
    assert item["review_status"] == "not_imaged"
    assert item["due_at"] is None
    assert item["correction_mm"] is None
    assert [i["id"] for i in await listing(client, auth, status="not_imaged")] == [item["id"]]
    assert await listing(client, auth, status="pending") == []


async def test_filters_by_patient_machine_and_treatment_time(
    client: httpx.AsyncClient, service: QaService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    for n, day in enumerate(("2026-11-23", "2026-11-24", "2026-11-25"), start=1):
        treat(service, n, day, pid="QA-001")
    treat(service, 1, "2026-11-24", "09:00", pid="QA-002", machine="TrueBeam2")
    fid = ids(factory)

    def got(items: list[dict[str, Any]]) -> list[int]:
        return [i["id"] for i in items]

    newest_first = [fid["QA-001", 3], fid["QA-002", 1], fid["QA-001", 2], fid["QA-001", 1]]
    assert got(await listing(client, auth)) == newest_first
    assert got(await listing(client, auth, patient_id="QA-001")) == [
        fid["QA-001", 3],
        fid["QA-001", 2],
        fid["QA-001", 1],
    ]
    assert got(await listing(client, auth, patient_id="QA-404")) == []
    assert got(await listing(client, auth, machine="TrueBeam2")) == [fid["QA-002", 1]]
    assert got(await listing(client, auth, machine="TrueBeam1")) == [
        fid["QA-001", 3],
        fid["QA-001", 2],
        fid["QA-001", 1],
    ]
    # from is inclusive, to exclusive; offsets are honoured (13:00Z is 08:00 in New York).
    tuesday = {"from": "2026-11-24T13:00:00Z", "to": "2026-11-24T09:00:00-05:00"}
    assert got(await listing(client, auth, **tuesday)) == [fid["QA-001", 2]]
    window = {"from": "2026-11-24T00:00:00-05:00", "to": "2026-11-25T08:00:00-05:00"}
    assert got(await listing(client, auth, **window)) == [fid["QA-002", 1], fid["QA-001", 2]]
    assert got(await listing(client, auth, machine="TrueBeam1", **window)) == [fid["QA-001", 2]]
    assert got(await listing(client, auth, **{"from": "2026-11-25T08:00:00-05:00"})) == [
        fid["QA-001", 3]
    ]


async def test_status_filter_decides_overdue_with_the_clock(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    # QA-001: Mon, Tue, Wed 08:00. Wed's review is due Fri 08:00 (Thanksgiving is closed).
    for n, day in enumerate(("2026-11-23", "2026-11-24", "2026-11-25"), start=1):
        treat(service, n, day, pid="QA-001")
    # QA-002: Wed 16:00, due Fri 16:00 (24 wall-clock hours would have said Thu 16:00).
    treat(service, 1, "2026-11-25", "16:00", pid="QA-002")
    treat(service, 1, "2026-11-24", "10:00", pid="QA-003", imaged=False)
    fid = ids(factory)
    clock.now = at("2026-11-27", "12:00")
    physician = auth("physician")
    on_time = await post_review(
        client, physician, fid["QA-001", 1], reviewed_at=at("2026-11-23", "15:00"), clock=clock
    )
    late = await post_review(
        client, physician, fid["QA-001", 2], reviewed_at=at("2026-11-25", "09:00"), clock=clock
    )
    assert (on_time.status_code, late.status_code) == (201, 201)

    expected = {
        "reviewed_on_time": [fid["QA-001", 1]],
        "reviewed_late": [fid["QA-001", 2]],
        "overdue": [fid["QA-001", 3]],
        "pending": [fid["QA-002", 1]],
        "not_imaged": [fid["QA-003", 1]],
    }
    for status, wanted in expected.items():
        items = await listing(client, auth, status=status)
        assert [i["id"] for i in items] == wanted, status
        assert {i["review_status"] for i in items} == {status}

    clock.now = at("2026-11-27", "16:00")  # exactly at the due time: not yet overdue
    assert [i["id"] for i in await listing(client, auth, status="pending")] == [fid["QA-002", 1]]
    clock.now = at("2026-11-27", "16:00") + timedelta(seconds=1)
    assert await listing(client, auth, status="pending") == []
    assert [i["id"] for i in await listing(client, auth, status="overdue")] == [
        fid["QA-002", 1],
        fid["QA-001", 3],
    ]
    [item] = await listing(client, auth, patient_id="QA-002")
    assert item["review_status"] == "overdue"


async def test_cursor_paging_returns_every_fraction_exactly_once(
    client: httpx.AsyncClient, service: QaService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    for n, day in enumerate(("2026-11-23", "2026-11-24", "2026-11-25"), start=1):
        treat(service, n, day, "08:00", pid="QA-001")
        # Same start as QA-001: ties are broken by id, across page boundaries too.
        treat(service, n, day, "08:00", pid="QA-002", machine="TrueBeam2")
    treat(service, 1, "2026-11-23", "11:00", pid="QA-003", imaged=False)
    with factory() as session:
        everything = sorted(
            ((f.treated_at, f.id) for f in session.scalars(select(Fraction))), reverse=True
        )
    assert len(everything) == 7

    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = await client.get("/v1/fractions", params=params, headers=auth("admin"))
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert 1 <= len(page["items"]) <= 2
        seen += [i["id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
        assert pages < 10, "paging does not end"

    assert pages == 4
    assert seen == [fid for _, fid in everything]  # newest first, each once
    assert len(set(seen)) == 7

    # A filter applies to every page.
    first = await client.get(
        "/v1/fractions", params={"limit": 2, "machine": "TrueBeam2"}, headers=auth("admin")
    )
    rest = await client.get(
        "/v1/fractions",
        params={"limit": 2, "machine": "TrueBeam2", "cursor": first.json()["next_cursor"]},
        headers=auth("admin"),
    )
    assert rest.json()["next_cursor"] is None
    by_machine = [i["id"] for i in first.json()["items"] + rest.json()["items"]]
    fid = ids(factory)
    assert by_machine == [fid["QA-002", 3], fid["QA-002", 2], fid["QA-002", 1]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "OVERDUE"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"patient": "QA-001"}, "patient"),  # a misspelt filter must not list everyone
        ({"to": "2026-13-01T00:00:00Z"}, "to"),
    ],
)
async def test_invalid_query_is_a_problem_with_errors(
    client: httpx.AsyncClient, auth: Auth, params: dict[str, str], field: str
) -> None:
    response = await client.get("/v1/fractions", params=params, headers=auth())
    body = problem(response, 422)
    assert body["errors"]
    assert ["query", field] in [e["loc"] for e in body["errors"]]


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        _b64("2026-11-23T13:00:00+00:00"),  # no id
        _b64("2026-11-23T13:00:00+00:00|seven"),
        _b64("yesterday|7"),
        _b64("2026-11-23T13:00:00|7"),  # no offset: not one this API returns
        _b64("2026-11-23T13:00:00+00:00|99999999999999999999"),  # no such id column value
        _b64("0001-01-01T00:00:00+14:00|7"),  # before year 1 in UTC
    ],
)
async def test_a_cursor_this_api_did_not_return_is_422(
    client: httpx.AsyncClient, service: QaService, auth: Auth, cursor: str
) -> None:
    treat(service, 1, "2026-11-23")
    response = await client.get("/v1/fractions", params={"cursor": cursor}, headers=auth())
    body = problem(response, 422)
    assert "cursor" in body["detail"]


ENDPOINTS = [
    ("GET", "/v1/fractions"),
    ("GET", "/v1/fractions/1"),
    ("POST", "/v1/fractions/1/reviews"),
    ("GET", "/v1/flags"),
    ("GET", "/v1/compliance/weekly?week=2026-W48"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_endpoint_needs_a_token(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path, json={"decision": "approved"})
    problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    forged = {"Authorization": "Bearer not.a.token"}
    problem(await client.request(method, path, json={"decision": "approved"}, headers=forged), 401)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("role", ["billing", "scheduler"])
async def test_roles_without_clinical_access_are_forbidden(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    factory: sessionmaker[Session],
    method: str,
    path: str,
    role: str,
) -> None:
    treat(service, 1, "2026-11-23")
    [fid] = ids(factory).values()
    response = await client.request(
        method, path.replace("/1", f"/{fid}"), json={"decision": "approved"}, headers=auth(role)
    )
    body = problem(response, 403)
    assert role in body["detail"]
    assert audit(factory) == []
    assert outbox(factory) == []


@pytest.mark.parametrize("role", ["physician", "therapist", "physicist", "dosimetrist", "admin"])
async def test_clinical_roles_read(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    factory: sessionmaker[Session],
    role: str,
) -> None:
    treat(service, 1, "2026-11-23")
    [fid] = ids(factory).values()
    for path in ("/v1/fractions", f"/v1/fractions/{fid}", "/v1/flags"):
        response = await client.get(path, headers=auth(role))
        assert response.status_code == 200, (path, response.text)
    weekly = await client.get("/v1/compliance/weekly?week=2026-W48", headers=auth(role))
    assert weekly.json()["imaged_fractions"] == 1


# ---------------------------------------------------------------- GET /v1/fractions/{id}


async def test_detail_includes_imaging_registrations_and_reviews(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    assert service.apply(plan_event())
    for event in imaged_day(1, "2026-11-23") + imaged_day(2, "2026-11-24"):
        assert service.apply(event)
    fid = ids(factory)
    clock.now = at("2026-11-23", "12:00")
    posted = await post_review(client, auth(), fid["QA-001", 1], comment="fine")
    assert posted.status_code == 201

    body = await fraction(client, auth, fid["QA-001", 1])

    assert set(body) > FIELDS
    assert body["id"] == fid["QA-001", 1]
    assert body["review_status"] == "reviewed_on_time"
    assert when(body["next_fraction_at"]) == at("2026-11-24", "08:00")
    assert when(body["due_at"]) == at("2026-11-24", "08:00")
    assert body["partial"] is False
    assert body["therapist_override"] is False
    [imaging] = body["imaging"]
    assert imaging["series_uid"] == "9.9.QA-001.2026-11-23.08:00"
    assert imaging["classification"] == "cbct"
    assert imaging["instance_count"] == 88
    assert imaging["machine"] == "TrueBeam1"
    assert when(imaging["acquired_at"]) == at("2026-11-23", "07:55")
    [registration] = body["registrations"]
    assert registration["sop_uid"] == "8.8.QA-001.2026-11-23.08:00"
    assert registration["kind"] == "rigid"
    assert registration["creator"] == "Therapist^Tina"
    assert registration["translation_mm"] == [1.0, -2.0, 0.5]
    assert registration["rotation_deg"] == [0.0, 0.0, 0.5]
    assert when(registration["content_at"]) == at("2026-11-23", "07:58")
    [review] = body["reviews"]
    assert review["id"] == posted.json()["id"]
    assert review["decision"] == "approved"
    assert review["comment"] == "fine"
    assert review["override_reason"] is None
    assert review["physician"] == DOCTOR
    assert review["source"] == "api"
    assert when(review["reviewed_at"]) == at("2026-11-23", "12:00")

    other = await fraction(client, auth, fid["QA-001", 2])
    assert [i["series_uid"] for i in other["imaging"]] == ["9.9.QA-001.2026-11-24.08:00"]
    assert other["reviews"] == []
    assert other["next_fraction_at"] is None


async def test_unknown_fraction_is_404(client: httpx.AsyncClient, auth: Auth) -> None:
    body = problem(await client.get("/v1/fractions/4711", headers=auth()), 404)
    assert "4711" in body["detail"]
    assert body["instance"] == "/v1/fractions/4711"
    problem(await client.get("/v1/fractions/abc", headers=auth()), 422)


# ---------------------------------------------------------------- POST /v1/fractions/{id}/reviews


@pytest.mark.parametrize(
    ("after_due", "status", "on_time"),
    [(timedelta(0), "reviewed_on_time", True), (timedelta(seconds=1), "reviewed_late", False)],
)
async def test_review_is_on_time_until_the_due_second(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
    after_due: timedelta,
    status: str,
    on_time: bool,
) -> None:
    # Wednesday 10:00, the last fraction: 14 h on Wednesday, none on Thanksgiving, 10 h on
    # Friday -> due Friday 10:00 New York (15:00Z).
    admit(service, "QA-001", OLGA)
    treat(service, 25, "2026-11-25", "10:00")
    [fid] = ids(factory).values()
    due = at("2026-11-27", "10:00")
    clock.now = at("2026-11-30", "09:00")
    before = await fraction(client, auth, fid)
    assert when(before["due_at"]) == due
    assert before["review_status"] == "overdue"

    response = await post_review(client, auth(), fid, reviewed_at=due + after_due, clock=clock)

    assert response.status_code == 201, response.text
    review = response.json()
    assert review["decision"] == "approved"
    assert review["physician"] == DOCTOR
    assert review["source"] == "api"
    assert when(review["reviewed_at"]) == due + after_due
    after = await fraction(client, auth, fid)
    assert after["review_status"] == status
    assert [r["id"] for r in after["reviews"]] == [review["id"]]
    [event] = outbox(factory)
    assert event.review_id == review["id"]
    assert event.on_time is on_time
    assert event.due_at == due
    assert event.reviewed_at == due + after_due
    assert event.fraction_number == 25
    assert event.physician == DOCTOR
    assert event.decision == "approved"
    assert event.patient.id == "QA-001"
    assert event.origin == "api"


async def test_reviewed_at_defaults_to_the_clocks_now(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    treat(service, 1, "2026-11-23", "08:00")
    [fid] = ids(factory).values()
    clock.now = at("2026-11-24", "07:30")  # due 08:00

    response = await post_review(client, auth(), fid)

    assert response.status_code == 201, response.text
    assert when(response.json()["reviewed_at"]) == clock.now
    with factory() as session:
        [stored] = session.scalars(select(ReviewRow)).all()
        assert stored.reviewed_at == clock.now
        assert stored.recorded_at == clock.now
    assert (await fraction(client, auth, fid))["review_status"] == "reviewed_on_time"
    [event] = outbox(factory)
    assert event.on_time is True
    assert event.reviewed_at == clock.now


async def test_a_review_in_the_future_or_before_treatment_is_refused(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    treat(service, 1, "2026-11-23", "08:00")
    [fid] = ids(factory).values()
    clock.now = at("2026-11-23", "12:00")
    treated = at("2026-11-23", "08:00")

    ahead = CLOCK_SKEW + timedelta(seconds=1)
    future = await post_review(client, auth(), fid, reviewed_at=clock.now + ahead)
    assert "future" in problem(future, 422)["detail"]
    early = await post_review(client, auth(), fid, reviewed_at=treated - timedelta(seconds=1))
    assert "before the fraction was treated" in problem(early, 422)["detail"]
    naive = await client.post(
        f"/v1/fractions/{fid}/reviews",
        json={"decision": "approved", "reviewed_at": "2026-11-23T09:00:00"},
        headers=auth(),
    )
    assert ["body", "reviewed_at"] in [e["loc"] for e in problem(naive, 422)["errors"]]
    assert outbox(factory) == []
    assert (await fraction(client, auth, fid))["reviews"] == []

    # The limits themselves are allowed: at the treatment start (recorded then), exactly now,
    # and a clock running fast by up to CLOCK_SKEW, taken as now.
    started = await post_review(client, auth(), fid, reviewed_at=treated, clock=clock)
    assert started.status_code == 201
    assert (await post_review(client, auth(), fid, reviewed_at=clock.now)).status_code == 201
    fast = await post_review(client, auth(), fid, reviewed_at=clock.now + CLOCK_SKEW)
    assert fast.status_code == 201, fast.text
    assert when(fast.json()["reviewed_at"]) == when(fast.json()["recorded_at"]) == clock.now
    assert len(outbox(factory)) == 3


@pytest.mark.parametrize("role", ["therapist", "physicist", "admin", "dosimetrist"])
async def test_only_physicians_review(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    factory: sessionmaker[Session],
    role: str,
) -> None:
    treat(service, 1, "2026-11-23")
    [fid] = ids(factory).values()

    body = problem(await post_review(client, auth(role, user="tina"), fid), 403)

    assert "physician" in body["detail"]
    assert outbox(factory) == []
    assert (await fraction(client, auth, fid))["review_status"] == "pending"


async def test_review_of_an_unknown_fraction_is_404(
    client: httpx.AsyncClient, service: QaService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    treat(service, 1, "2026-11-23")
    body = problem(await post_review(client, auth(), 4711), 404)
    assert "4711" in body["detail"]
    assert outbox(factory) == []


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{}", "decision"),
        (b'{"comment": "fine"}', "decision"),
        (b'{"decision": "maybe"}', "decision"),
        (b'{"decision": null}', "decision"),
        (b'{"decision": "approved", "comment": "' + b"x" * 4001 + b'"}', "comment"),
        (b'{"decision": "approved", "override_reason": "' + b"x" * 4001 + b'"}', "override_reason"),
        (b'{"decision": "approved", "reviewed_at": "soon"}', "reviewed_at"),
        (b"decision=approved", None),
        (b'{"decision": "approved"', None),
        (b"", None),
    ],
)
async def test_malformed_review_bodies_are_422(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    factory: sessionmaker[Session],
    content: bytes,
    field: str | None,
) -> None:
    treat(service, 1, "2026-11-23")
    [fid] = ids(factory).values()
    headers = {**auth(), "Content-Type": "application/json"}

    response = await client.post(f"/v1/fractions/{fid}/reviews", content=content, headers=headers)

    body = problem(response, 422)
    assert body["errors"]
    if field is not None:
        assert ["body", field] in [e["loc"] for e in body["errors"]]
    assert outbox(factory) == []


async def test_a_comment_of_4000_characters_is_accepted(
    client: httpx.AsyncClient, service: QaService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    treat(service, 1, "2026-11-23")
    [fid] = ids(factory).values()
    response = await post_review(client, auth(), fid, comment="x" * 4000)
    assert response.status_code == 201, response.text
    assert response.json()["comment"] == "x" * 4000


async def test_a_rejection_stays_flagged_until_an_approval_follows(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    admit(service, "QA-001", OLGA)
    treat(service, 1, "2026-11-23", "08:00")
    [fid] = ids(factory).values()
    clock.now = at("2026-11-23", "12:00")

    rejected = await post_review(client, auth(), fid, "rejected", comment="re-image")
    assert rejected.status_code == 201
    body = await fraction(client, auth, fid)
    assert body["rejected"] is True
    assert body["review_status"] == "reviewed_on_time"  # a rejection is a documented review
    flags = (await client.get("/v1/flags", headers=auth())).json()["physicians"]
    assert [(g["physician"], [f["kind"] for f in g["flags"]]) for g in flags] == [
        (OLGA, ["rejected_without_follow_up"])
    ]

    clock.now = at("2026-11-23", "13:00")
    again = await post_review(client, auth(user="dr.paul"), fid, "rejected")
    assert again.status_code == 201
    assert (await fraction(client, auth, fid))["rejected"] is True

    clock.now = at("2026-11-24", "09:00")  # after the due time: the first review decides
    approved = await post_review(client, auth(user="dr.paul"), fid, "approved")
    assert approved.status_code == 201
    body = await fraction(client, auth, fid)
    assert body["rejected"] is False
    assert body["review_status"] == "reviewed_on_time"
    assert [r["decision"] for r in body["reviews"]] == ["rejected", "rejected", "approved"]
    assert (await client.get("/v1/flags", headers=auth())).json()["physicians"] == []
    events = outbox(factory)
    assert [(e.decision, e.on_time) for e in events] == [
        ("rejected", True),
        ("rejected", True),
        ("approved", False),
    ]
    assert [e.review_id for e in events] == [r["id"] for r in body["reviews"]]


async def test_override_reason_documents_a_correction_beyond_tolerance(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    assert service.apply(plan_event())
    for event in imaged_day(1, "2026-11-23", shift_mm=(7.0, 0, 0)):
        assert service.apply(event)
    [fid] = ids(factory).values()
    clock.now = at("2026-11-23", "12:00")
    body = await fraction(client, auth, fid)
    assert body["correction_mm"] == 7.0
    assert (body["override_required"], body["override_documented"]) == (True, False)

    plain = await post_review(client, auth(), fid)
    assert plain.status_code == 201
    assert (await fraction(client, auth, fid))["override_documented"] is False
    blank = await post_review(client, auth(), fid, override_reason="   ")
    assert blank.status_code == 201
    assert (await fraction(client, auth, fid))["override_documented"] is False

    reason = "7 mm lateral: patient rotated, re-set up and re-imaged"
    documented = await post_review(client, auth(), fid, override_reason=reason)

    assert documented.status_code == 201
    assert documented.json()["override_reason"] == reason
    body = await fraction(client, auth, fid)
    assert (body["override_required"], body["override_documented"]) == (True, True)
    assert body["review_status"] == "reviewed_on_time"
    events = outbox(factory)
    assert len(events) == 3
    assert all(e.override_required for e in events)
    assert [e.override_reason for e in events] == [None, "   ", reason]
    assert (await client.get("/v1/flags", headers=auth())).json()["physicians"] == []


async def test_each_review_writes_one_event(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    treat(service, 1, "2026-11-23", "08:00")
    treat(service, 2, "2026-11-24", "08:00")
    fid = ids(factory)
    clock.now = at("2026-11-25", "12:00")
    responses = []
    for key, reviewed_at in (
        (("QA-001", 1), at("2026-11-24", "07:59")),  # due Tue 08:00 (the next fraction)
        (("QA-001", 2), at("2026-11-25", "08:01")),  # due Wed 08:00
        (("QA-001", 1), at("2026-11-25", "09:00")),  # a second review of fraction 1
    ):
        response = await post_review(client, auth(), fid[key], reviewed_at=reviewed_at, clock=clock)
        assert response.status_code == 201, response.text
        responses.append(response.json())
        assert len(outbox(factory)) == len(responses)

    events = outbox(factory)
    assert [e.review_id for e in events] == [r["id"] for r in responses]
    assert [e.on_time for e in events] == [True, False, False]
    assert [e.fraction_number for e in events] == [1, 2, 1]
    # The status is the first review's: fraction 1 stays on time.
    assert (await fraction(client, auth, fid["QA-001", 1]))["review_status"] == "reviewed_on_time"
    assert (await fraction(client, auth, fid["QA-001", 2]))["review_status"] == "reviewed_late"


async def test_reads_and_writes_are_audited_with_the_patient(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    treat(service, 1, "2026-11-23", "08:00", pid="QA-001")
    treat(service, 1, "2026-11-23", "09:00", pid="QA-002")
    fid = ids(factory)
    first, second = fid["QA-001", 1], fid["QA-002", 1]
    clock.now = at("2026-11-23", "12:00")

    assert (await client.get("/v1/fractions", headers=auth("therapist", "tina"))).status_code == 200
    listed = audit(factory)
    assert sorted(listed) == [
        ("read", "tina", "/v1/fractions", "QA-001"),
        ("read", "tina", "/v1/fractions", "QA-002"),
    ]
    filtered = await client.get(
        "/v1/fractions", params={"patient_id": "QA-002"}, headers=auth("therapist", "tina")
    )
    assert filtered.status_code == 200
    assert audit(factory)[2:] == [("read", "tina", "/v1/fractions?patient_id=QA-002", "QA-002")]
    assert (
        await client.get(f"/v1/fractions/{second}", headers=auth("admin", "al"))
    ).status_code == 200
    assert audit(factory)[3:] == [("read", "al", f"/v1/fractions/{second}", "QA-002")]

    assert (await post_review(client, auth(), first)).status_code == 201
    assert audit(factory)[4:] == [("write", DOCTOR, f"/v1/fractions/{first}/reviews", "QA-001")]
    with factory() as session:
        write = session.scalars(select(AuditLog).where(AuditLog.action == "write")).one()
        assert write.roles == "physician"

    assert (await client.get("/v1/flags", headers=auth())).status_code == 200
    weekly = await client.get("/v1/compliance/weekly?week=2026-W48", headers=auth())
    assert weekly.status_code == 200
    assert [row[0] for row in audit(factory)[5:]] == ["read", "read"]
    assert audit(factory)[-1] == ("read", DOCTOR, "/v1/compliance/weekly?week=2026-W48", None)

    # Refused requests leave no trace of patient data.
    before = audit(factory)
    problem(await client.get("/v1/fractions/4711", headers=auth()), 404)
    problem(await post_review(client, auth("therapist"), first), 403)
    assert audit(factory) == before


# ---------------------------------------------------------------- GET /v1/flags


async def test_flags_group_open_problems_by_physician(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> None:
    admit(service, "QA-001", OLGA)
    treat(service, 1, "2026-11-23", "08:00", shift_mm=(0.0, 7.0, 0.0))  # overdue + override
    treat(service, 2, "2026-11-24", "08:00")  # reviewed on time: no flag
    treat(service, 3, "2026-11-25", "08:00", shift_mm=(7.0, 0.0, 0.0))  # reviewed, no reason
    admit(service, "QA-002", PAUL)
    treat(service, 1, "2026-11-25", "09:00", pid="QA-002")  # rejected
    admit(service, "QA-003", PAUL)
    treat(service, 1, "2026-11-25", "16:00", pid="QA-003")  # pending until Fri 16:00
    admit(service, "QA-004", None)
    treat(service, 1, "2026-11-24", "10:00", pid="QA-004", machine="TrueBeam2")  # overdue
    treat(service, 1, "2026-11-24", "11:00", pid="QA-005", imaged=False)  # not imaged
    fid = ids(factory)
    clock.now = at("2026-11-27", "12:00")
    for key, decision, reviewed_at in (
        (("QA-001", 2), "approved", at("2026-11-24", "12:00")),
        (("QA-001", 3), "approved", at("2026-11-25", "12:00")),
        (("QA-002", 1), "rejected", at("2026-11-25", "12:00")),
    ):
        response = await post_review(
            client, auth(), fid[key], decision, reviewed_at=reviewed_at, clock=clock
        )
        assert response.status_code == 201, response.text

    response = await client.get("/v1/flags", headers=auth("therapist"))

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "open"

    def flag(kind: str, key: tuple[str, int], machine: str = "TrueBeam1") -> dict[str, Any]:
        return {
            "kind": kind,
            "fraction_id": fid[key],
            "patient_id": key[0],
            "patient_name": "Phantom^Pelvis",  # the worklist names the patient
            "fraction_number": key[1],
            "machine": machine,
            "link": f"/v1/fractions/{fid[key]}",
        }

    got = [
        {
            "physician": group["physician"],
            "flags": [
                {k: v for k, v in f.items() if k not in ("treated_at", "due_at")}
                for f in group["flags"]
            ],
        }
        for group in body["physicians"]
    ]
    assert got == [
        {
            "physician": OLGA,
            "flags": [
                flag("overdue_review", ("QA-001", 1)),
                flag("override_not_documented", ("QA-001", 1)),
                flag("override_not_documented", ("QA-001", 3)),
            ],
        },
        {"physician": PAUL, "flags": [flag("rejected_without_follow_up", ("QA-002", 1))]},
        {"physician": "unassigned", "flags": [flag("overdue_review", ("QA-004", 1), "TrueBeam2")]},
    ]
    overdue = body["physicians"][0]["flags"][0]
    assert when(overdue["treated_at"]) == at("2026-11-23", "08:00")
    assert when(overdue["due_at"]) == at("2026-11-24", "08:00")
    unassigned = body["physicians"][2]["flags"][0]
    assert when(unassigned["due_at"]) == at("2026-11-25", "10:00")
    for group in body["physicians"]:
        for f in group["flags"]:
            link = await client.get(f["link"], headers=auth())
            assert link.status_code == 200
            assert link.json()["id"] == f["fraction_id"]

    # Past QA-003's due time it joins Paul's list; documenting the override clears QA-001/3.
    clock.now = at("2026-11-27", "16:00") + timedelta(seconds=1)
    fixed = await post_review(client, auth(), fid["QA-001", 3], override_reason="accepted")
    assert fixed.status_code == 201
    body = (await client.get("/v1/flags", headers=auth())).json()
    kinds = {
        g["physician"]: [(f["kind"], f["fraction_id"]) for f in g["flags"]]
        for g in body["physicians"]
    }
    assert kinds == {
        OLGA: [
            ("overdue_review", fid["QA-001", 1]),
            ("override_not_documented", fid["QA-001", 1]),
        ],
        PAUL: [
            ("rejected_without_follow_up", fid["QA-002", 1]),
            ("overdue_review", fid["QA-003", 1]),
        ],
        "unassigned": [("overdue_review", fid["QA-004", 1])],
    }


async def test_nothing_to_flag(
    client: httpx.AsyncClient, service: QaService, auth: Auth, clock: Clock
) -> None:
    treat(service, 1, "2026-11-23", "08:00")
    clock.now = at("2026-11-23", "12:00")
    response = await client.get("/v1/flags", headers=auth())
    assert response.json() == {"status": "open", "physicians": []}
    problem(await client.get("/v1/flags", params={"status": "closed"}, headers=auth()), 422)


# ---------------------------------------------------------------- GET /v1/compliance/weekly


def tally(*values: float | None, backdated: int = 0) -> dict[str, float | None]:
    """imaged, on time, late, overdue, pending, overrides required, documented, compliance %;
    ``backdated`` apart (the attested % follows from it)."""
    named = ("imaged_fractions", "reviewed_on_time", "reviewed_late", "overdue", "pending")
    named += ("overrides_required", "overrides_documented", "compliance_pct")
    base = dict(zip(named, values, strict=True))
    imaged, on_time = int(base["imaged_fractions"] or 0), int(base["reviewed_on_time"] or 0)
    attested = round(100.0 * (on_time + backdated) / imaged, 1) if imaged else None
    return {**base, "reviewed_backdated": backdated, "attested_compliance_pct": attested}


TB1 = tally(5, 2, 1, 1, 1, 1, 0, 40.0)
TB2 = tally(2, 1, 0, 1, 0, 1, 1, 50.0)
PAUL_TALLY = tally(1, 1, 0, 0, 0, 1, 1, 100.0)
UNASSIGNED = tally(1, 0, 0, 1, 0, 0, 0, 0.0)


@pytest.fixture
async def week(
    client: httpx.AsyncClient,
    service: QaService,
    auth: Auth,
    clock: Clock,
    factory: sessionmaker[Session],
) -> dict[tuple[str, int | None], int]:
    """ISO week 2026-W48 (Mon 2026-11-23 to Mon 2026-11-30, New York), seen on Monday
    2026-11-30 07:00:

    - QA-001 (Olga, TrueBeam1), Mon-Fri 08:00; each review is due at the next fraction:
      1 reviewed on time, 2 on time (one minute early), 3 late (one second after Thanksgiving
      08:00), 4 (Thanksgiving) overdue since Fri 08:00, 5 pending until Mon 08:00 with a 7 mm
      correction and no override documented.
    - QA-002 (Paul, TrueBeam2), Wed 10:00 with a 6 mm correction: due Fri 10:00 (Thanksgiving
      is closed), reviewed Fri 09:59 with an override reason: on time, documented.
    - QA-003 (Paul, TrueBeam2), Tue 09:00 without imaging: not counted.
    - QA-004 (no approved plan, TrueBeam2), Sun 23:30 (Mon 04:30Z, still W48 in New York):
      due at its next fraction, Mon 00:30, overdue; that next fraction is in W49.
    """
    admit(service, "QA-001", OLGA)
    for n, day in enumerate(
        ("2026-11-23", "2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"), start=1
    ):
        treat(service, n, day, "08:00", shift_mm=(7.0, 0.0, 0.0) if n == 5 else (1.0, -2.0, 0.5))
    admit(service, "QA-002", PAUL)
    treat(service, 1, "2026-11-25", "10:00", pid="QA-002", machine="TrueBeam2", shift_mm=(0, 6, 0))
    admit(service, "QA-003", PAUL)
    treat(service, 1, "2026-11-24", "09:00", pid="QA-003", machine="TrueBeam2", imaged=False)
    admit(service, "QA-004", None)
    treat(service, 1, "2026-11-29", "23:30", pid="QA-004", machine="TrueBeam2")
    treat(service, 2, "2026-11-30", "00:30", pid="QA-004", machine="TrueBeam2")
    fid = ids(factory)
    clock.now = at("2026-11-30", "07:00")
    for key, reviewed_at, extra in (
        (("QA-001", 1), at("2026-11-23", "15:00"), {}),
        (("QA-001", 2), at("2026-11-25", "07:59"), {}),
        (("QA-001", 3), at("2026-11-26", "08:00") + timedelta(seconds=1), {}),
        (("QA-002", 1), at("2026-11-27", "09:59"), {"override_reason": "rotated; re-imaged"}),
    ):
        response = await post_review(
            client, auth(), fid[key], reviewed_at=reviewed_at, clock=clock, **extra
        )
        assert response.status_code == 201, response.text
    return fid


async def test_weekly_compliance_counts(
    client: httpx.AsyncClient,
    auth: Auth,
    week: dict[tuple[str, int | None], int],
) -> None:
    response = await client.get(
        "/v1/compliance/weekly", params={"week": "2026-W48"}, headers=auth("physicist")
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "week": "2026-W48",
        "from": "2026-11-23T00:00:00-05:00",
        "to": "2026-11-30T00:00:00-05:00",
        **tally(7, 3, 1, 2, 1, 2, 1, 42.9),  # 3 of 7 on time
        "by_machine": {"TrueBeam1": TB1, "TrueBeam2": TB2},
        "by_physician": {OLGA: TB1, PAUL: PAUL_TALLY, "unassigned": UNASSIGNED},
    }


async def test_weekly_due_times_behind_the_counts(
    client: httpx.AsyncClient, auth: Auth, week: dict[tuple[str, int | None], int]
) -> None:
    expected = {
        ("QA-001", 1): (at("2026-11-24", "08:00"), "reviewed_on_time"),
        ("QA-001", 2): (at("2026-11-25", "08:00"), "reviewed_on_time"),
        ("QA-001", 3): (at("2026-11-26", "08:00"), "reviewed_late"),
        ("QA-001", 4): (at("2026-11-27", "08:00"), "overdue"),
        ("QA-001", 5): (at("2026-11-30", "08:00"), "pending"),
        ("QA-002", 1): (at("2026-11-27", "10:00"), "reviewed_on_time"),
        ("QA-003", 1): (None, "not_imaged"),
        ("QA-004", 1): (at("2026-11-30", "00:30"), "overdue"),
        ("QA-004", 2): (at("2026-12-01", "00:30"), "pending"),
    }
    for key, (due, status) in expected.items():
        body = await fraction(client, auth, week[key])
        assert (when(body["due_at"]), body["review_status"]) == (due, status), key


async def test_weekly_compliance_follows_the_clock(
    client: httpx.AsyncClient,
    auth: Auth,
    clock: Clock,
    week: dict[tuple[str, int | None], int],
) -> None:
    clock.now = at("2026-11-30", "08:00") + timedelta(seconds=1)  # QA-001/5 is now overdue
    body = (await client.get("/v1/compliance/weekly?week=2026-W48", headers=auth())).json()
    assert {k: body[k] for k in COUNTS} == tally(7, 3, 1, 3, 0, 2, 1, 42.9)
    assert body["by_machine"]["TrueBeam1"] == tally(5, 2, 1, 2, 0, 1, 0, 40.0)


@pytest.mark.parametrize(
    ("params", "total", "by_machine", "by_physician"),
    [
        (
            {"machine": "TrueBeam2"},
            TB2,
            {"TrueBeam2": TB2},
            {PAUL: PAUL_TALLY, "unassigned": UNASSIGNED},
        ),
        ({"machine": "TrueBeam1"}, TB1, {"TrueBeam1": TB1}, {OLGA: TB1}),
        ({"physician": PAUL}, PAUL_TALLY, {"TrueBeam2": PAUL_TALLY}, {PAUL: PAUL_TALLY}),
        ({"physician": OLGA, "machine": "TrueBeam1"}, TB1, {"TrueBeam1": TB1}, {OLGA: TB1}),
        ({"physician": OLGA, "machine": "TrueBeam2"}, tally(0, 0, 0, 0, 0, 0, 0, None), {}, {}),
    ],
)
async def test_weekly_compliance_filters(
    client: httpx.AsyncClient,
    auth: Auth,
    week: dict[tuple[str, int | None], int],
    params: dict[str, str],
    total: dict[str, float | None],
    by_machine: dict[str, Any],
    by_physician: dict[str, Any],
) -> None:
    response = await client.get(
        "/v1/compliance/weekly", params={"week": "2026-W48", **params}, headers=auth()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in COUNTS} == total
    assert body["by_machine"] == by_machine
    assert body["by_physician"] == by_physician


async def test_a_physician_with_only_unimaged_fractions_has_no_compliance_figure(
    client: httpx.AsyncClient, service: QaService, auth: Auth
) -> None:
    admit(service, "QA-003", PAUL)
    treat(service, 1, "2026-11-24", "09:00", pid="QA-003", imaged=False)
    body = (await client.get("/v1/compliance/weekly?week=2026-W48", headers=auth())).json()
    assert body["by_physician"] == {PAUL: tally(0, 0, 0, 0, 0, 0, 0, None)}
    assert body["compliance_pct"] is None
    other = (await client.get("/v1/compliance/weekly?week=2026-W47", headers=auth())).json()
    assert other["by_machine"] == {}


async def test_weekly_compliance_as_csv(
    client: httpx.AsyncClient, auth: Auth, week: dict[tuple[str, int | None], int]
) -> None:
    url = "/v1/compliance/weekly?week=2026-W48"
    as_json = (await client.get(url, headers=auth())).json()
    response = await client.get(url, headers={**auth(), "Accept": "text/csv"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "2026-W48.csv" in response.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["week", "group", "name", *COUNTS]
    assert rows[1] == [
        *("2026-W48", "total", "", "7", "3", "1", "0", "2", "1", "2", "1", "42.9", "42.9")
    ]
    assert [float(v) for v in rows[1][3:]] == [as_json[k] for k in COUNTS]
    groups = {(r[1], r[2]): r[3:] for r in rows[2:]}
    assert set(groups) == {
        ("machine", "TrueBeam1"),
        ("machine", "TrueBeam2"),
        ("physician", OLGA),
        ("physician", PAUL),
        ("physician", "unassigned"),
    }
    for (group, name), values in groups.items():
        tallied = as_json[f"by_{group}"][name]
        assert [float(v) for v in values] == [tallied[k] for k in COUNTS], (group, name)
    assert all(r[0] == "2026-W48" for r in rows[1:])


async def test_weekly_compliance_as_a_printable_page(
    client: httpx.AsyncClient, auth: Auth, week: dict[tuple[str, int | None], int]
) -> None:
    response = await client.get(
        "/v1/compliance/weekly?week=2026-W48",
        headers={**auth(), "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert page.startswith("<!doctype html>")
    assert "2026-W48" in page
    assert "<svg" in page
    assert "</svg>" in page
    assert "2026-11-23 to 2026-11-30" in page
    assert "<strong>42.9%</strong> of 7 imaged fractions" in page
    assert "TrueBeam1" in page
    assert "TrueBeam2" in page
    assert "Oncologist^Olga" in page


@pytest.mark.parametrize("week", ["2026-48", "2026-W4", "W48-2026", "2026-W48x"])
async def test_a_malformed_week_is_a_problem_with_errors(
    client: httpx.AsyncClient, auth: Auth, week: str
) -> None:
    response = await client.get("/v1/compliance/weekly", params={"week": week}, headers=auth())
    body = problem(response, 422)
    assert ["query", "week"] in [e["loc"] for e in body["errors"]]


@pytest.mark.parametrize("week", ["2026-W99", "2026-W00", "2025-W53"])
async def test_a_week_that_does_not_exist_is_422(
    client: httpx.AsyncClient, auth: Auth, week: str
) -> None:
    response = await client.get("/v1/compliance/weekly", params={"week": week}, headers=auth())
    body = problem(response, 422)
    assert week in body["detail"]


async def test_the_week_is_required(client: httpx.AsyncClient, auth: Auth) -> None:
    body = problem(await client.get("/v1/compliance/weekly", headers=auth()), 422)
    assert ["query", "week"] in [e["loc"] for e in body["errors"]]


async def test_iso_week_53_exists_in_2026(client: httpx.AsyncClient, auth: Auth) -> None:
    response = await client.get("/v1/compliance/weekly?week=2026-W53", headers=auth())
    assert response.status_code == 200, response.text
    assert response.json()["from"] == "2026-12-28T00:00:00-05:00"
    assert response.json()["imaged_fractions"] == 0
