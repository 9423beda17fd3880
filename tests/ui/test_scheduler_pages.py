"""The scheduler's staff pages over httpx against the real app (``background=False``): the queue
with what blocks each request, a new request through the form, booking the earliest slot and a
proposed one (and a refusal naming each constraint), the week calendar with moving and
cancelling; sign-in, roles, CSRF and audit. "Now" is Monday 30 November 2026, 07:00 New York."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.scheduler.app import SERVICE, TABLES, create_app, load_resources
from services.scheduler.schemas import RequestIn
from services.scheduler.service import SchedulerService
from services.scheduler.settings import DEFAULT_RESOURCES, SchedulerSettings
from services.scheduler.store import AuditLog, BookingRow, RequestRow
from shared.auth import Principal
from shared.runtime import Runtime
from tests.databases import service_database
from tests.events import Clock
from tests.scheduler.conftest import NOW, make_service
from tests.scheduler.test_api import BASE

KEY = "scheduler-pages-test-key-" + "k" * 32
WHO = Principal(user="sam", roles=frozenset({"scheduler"}))


@pytest.fixture
def scheduler(
    base_settings: dict[str, object],
) -> Iterator[tuple[SchedulerSettings, sessionmaker[Session]]]:
    settings = SchedulerSettings(**base_settings, dev_signing_key=KEY)  # type: ignore[arg-type]
    with service_database(settings, SERVICE, TABLES) as factory:
        yield settings, factory


@pytest.fixture
def sched(scheduler: tuple[SchedulerSettings, sessionmaker[Session]]) -> SchedulerService:
    settings, factory = scheduler
    service = make_service(settings, factory, Clock(NOW))
    service.seed(load_resources(DEFAULT_RESOURCES))
    return service


@pytest.fixture
def factory(scheduler: tuple[SchedulerSettings, sessionmaker[Session]]) -> sessionmaker[Session]:
    return scheduler[1]


@pytest.fixture
def app(
    scheduler: tuple[SchedulerSettings, sessionmaker[Session]], sched: SchedulerService
) -> FastAPI:
    settings, factory = scheduler
    runtime = Runtime.create(SERVICE, settings, TABLES, engine=factory.kw["bind"])
    return create_app(settings, runtime=runtime, service=sched, background=False)


def token_in(html: str) -> str:
    return re.findall(r'name="csrf_token" value="([^"]+)"', html)[-1]


async def sign_in(
    client: httpx.AsyncClient, name: str = "Sam Scheduler", role: str = "scheduler"
) -> str:
    form = await client.get("/ui/sign-in")
    answer = await client.post(
        "/ui/sign-in",
        data={"name": name, "role": role, "csrf_token": token_in(form.text), "next": "/ui/"},
    )
    assert answer.status_code == 303, answer.text
    page = await client.get("/ui/queue")
    assert page.status_code == 200, page.text
    return token_in(page.text)


def queue_rows(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<tr data-request="([^"]+)" data-status="([^"]+)"', html)


async def test_sign_in_roles_and_home(client: httpx.AsyncClient) -> None:
    answer = await client.get("/ui/queue")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/sign-in")
    form = await client.get("/ui/sign-in")
    await client.post(
        "/ui/sign-in",
        data={"name": "Bea", "role": "billing", "csrf_token": token_in(form.text), "next": "/ui/"},
    )
    for path in ("/ui/queue", "/ui/calendar"):
        refused = await client.get(path)
        assert refused.status_code == 403 and "scheduler, therapist, admin" in refused.text
    client.cookies.clear()
    await sign_in(client, "Tina Therapist", "therapist")
    home = await client.get("/ui/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/ui/queue"


async def test_queue_shows_what_blocks_and_books_in_one_click(
    client: httpx.AsyncClient, sched: SchedulerService, factory: sessionmaker[Session]
) -> None:
    ready = sched.create_request(RequestIn(**BASE), WHO)
    blocked = sched.create_request(
        RequestIn.model_validate(
            {
                **BASE,
                "patient_id": "SIM-002",
                "site": "prostate",
                "requirements": {"iv_contrast": True},
            }
        ),
        WHO,
    )
    csrf = await sign_in(client)
    page = (await client.get("/ui/queue")).text
    assert sorted(queue_rows(page)) == sorted([(ready.id, "ready"), (blocked.id, "blocked")])
    assert "IV contrast consent not recorded" in page and "no recent eGFR" in page
    assert "Pelvis Phantom" in page  # the DICOM name as people write it

    # Without the CSRF token nothing is booked.
    refused = await client.post(f"/ui/requests/{ready.id}/book", data={})
    assert refused.status_code == 403
    booked = await client.post(f"/ui/requests/{ready.id}/book", data={"csrf_token": csrf})
    assert booked.status_code == 303
    location = booked.headers["location"]
    assert location.startswith("/ui/calendar?room=ctsim1&week=2026-W49&booked=")
    week = await client.get(location)
    booking_id = location.rsplit("=", 1)[1]
    assert f'data-booking="{booking_id}"' in week.text and "just-booked" in week.text
    assert "07:30" in week.text
    # a blocked one is refused with its reasons
    refused = await client.post(f"/ui/requests/{blocked.id}/book", data={"csrf_token": csrf})
    assert refused.status_code == 409
    assert "IV contrast consent not recorded" in refused.text
    with factory() as session:
        audit = session.execute(
            select(AuditLog.action, AuditLog.resource, AuditLog.patient_id)
        ).all()
    assert ("read", "/ui/queue", "SIM-002") in audit
    assert any(a == "write" and r.endswith("/book") and p == "SIM-001" for a, r, p in audit)


async def test_a_proposed_slot_and_its_broken_constraints(
    client: httpx.AsyncClient, sched: SchedulerService
) -> None:
    request = sched.create_request(RequestIn(**BASE), WHO)
    csrf = await sign_in(client)
    refused = await client.post(
        f"/ui/requests/{request.id}/book", data={"csrf_token": csrf, "start": "2026-12-05T09:00"}
    )
    assert refused.status_code == 409
    assert "the clinic is closed that day" in refused.text
    assert "outside the room&#39;s opening hours" in refused.text
    bad = await client.post(
        f"/ui/requests/{request.id}/book", data={"csrf_token": csrf, "start": "soon"}
    )
    assert bad.status_code == 422 and "is not a date and time" in bad.text
    ok = await client.post(
        f"/ui/requests/{request.id}/book", data={"csrf_token": csrf, "start": "2026-12-02T10:00"}
    )
    assert ok.status_code == 303 and "week=2026-W49" in ok.headers["location"]


async def test_new_request_through_the_form(
    client: httpx.AsyncClient, factory: sessionmaker[Session]
) -> None:
    csrf = await sign_in(client)
    answer = await client.post(
        "/ui/requests",
        data={
            "csrf_token": csrf,
            "patient_id": "SIM-010",
            "patient_name": "Phantom^Head",
            "referring_physician": "Referrer^Rita",
            "treating_physician": "Oncologist^Olga",
            "site": "head and neck",
            "urgency": "urgent",
            "immobilization": ["thermoplastic_mask"],
            "four_d_ct": "true",
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/queue"
    with factory() as session:
        (row,) = session.scalars(select(RequestRow)).all()
    assert (
        row.patient_id,
        row.urgency,
        row.requirements["immobilization"],
        row.requirements["four_d_ct"],
    ) == (
        "SIM-010",
        "urgent",
        ["thermoplastic_mask"],
        True,
    )
    # Missing fields: the form comes back with what is wrong; nothing stored.
    answer = await client.post("/ui/requests", data={"csrf_token": csrf, "patient_id": "SIM-011"})
    assert answer.status_code == 422 and "patient_name" in answer.text
    with factory() as session:
        assert len(session.scalars(select(RequestRow)).all()) == 1


async def test_calendar_moves_and_cancels_with_reasons(
    client: httpx.AsyncClient, sched: SchedulerService, factory: sessionmaker[Session]
) -> None:
    request = sched.create_request(RequestIn(**BASE), WHO)
    booking = sched.book(request.id, None, WHO)
    csrf = await sign_in(client)
    week = await client.get("/ui/calendar?room=ctsim1&week=2026-W49")
    assert f'data-booking="{booking.id}"' in week.text
    assert 'data-day="2026-11-30"' in week.text and 'data-day="2026-12-05"' not in week.text
    no_reason = await client.post(
        f"/ui/bookings/{booking.id}/reschedule",
        data={
            "csrf_token": csrf,
            "start": "2026-12-02T10:00",
            "room": "ctsim1",
            "week": "2026-W49",
        },
    )
    assert no_reason.status_code == 422 and "a reason is required" in no_reason.text
    moved = await client.post(
        f"/ui/bookings/{booking.id}/reschedule",
        data={
            "csrf_token": csrf,
            "start": "2026-12-02T10:00",
            "reason": "patient asked",
            "room": "ctsim1",
            "week": "2026-W49",
        },
    )
    assert moved.status_code == 303
    new_id = moved.headers["location"].rsplit("=", 1)[1]
    with factory() as session:
        new = session.get(BookingRow, new_id)
        assert new is not None and new.status == "booked"
    cancelled = await client.post(
        f"/ui/bookings/{new_id}/cancel",
        data={"csrf_token": csrf, "reason": "unwell", "room": "ctsim1", "week": "2026-W49"},
    )
    assert cancelled.status_code == 303
    with factory() as session:
        row = session.get(BookingRow, new_id)
        assert row is not None and (row.status, row.reason) == ("cancelled", "unwell")
    assert (await client.get("/ui/calendar?week=2026-W60")).status_code == 422


async def test_the_patient_timeline_reads_the_scheduler(
    app: FastAPI,
    sched: SchedulerService,
    scheduler: tuple[SchedulerSettings, sessionmaker[Session]],
) -> None:
    from shared.auth import issue_dev_token
    from shared.ui.timeline import scheduler as source

    booked = sched.create_request(RequestIn(**BASE), WHO)
    sched.book(booked.id, None, WHO)
    sched.create_request(
        RequestIn.model_validate({**BASE, "site": "boost", "requirements": {"iv_contrast": True}}),
        WHO,
    )
    token = issue_dev_token(scheduler[0], user="t", roles=["therapist"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://sched",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        entries, more = await source(client, "http://sched", "SIM-001")
    assert more is None
    by_status = {e.status: e for e in entries}
    assert by_status["booked"].title == "Simulation CT: breast"
    assert by_status["booked"].detail == "ctsim1 · tara, tina"
    assert by_status["blocked"].detail == "routine · blocked: iv contrast consent"
