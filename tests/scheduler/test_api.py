"""REST API of the scheduler, with httpx against the real app and database (seeded with the
development resources: room ctsim1, therapists tara/tina/tom, urologist uro1 on Tuesday
mornings and Thursday afternoons). "Now" is Monday 30 November 2026, 07:00 New York."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from icalendar import Calendar
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.scheduler.store import AuditLog, BookingRow, RequestRow, ReservationRow
from shared.web import PROBLEM_JSON
from tests.events import Clock, at
from tests.scheduler.conftest import Auth

BASE = {
    "patient_id": "SIM-001",
    "patient_name": "Phantom^Pelvis",
    "referring_physician": "Referrer^Rita",
    "treating_physician": "Oncologist^Olga",
    "site": "breast",
    "urgency": "routine",
}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def create(client: httpx.AsyncClient, auth: Auth, **fields: Any) -> dict[str, Any]:
    body = {**BASE, **fields}
    r = await client.post("/v1/simulation-requests", json=body, headers=auth())
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def book(
    client: httpx.AsyncClient, auth: Auth, rid: str, status: int = 201, **body: Any
) -> dict[str, Any]:
    r = await client.post(f"/v1/simulation-requests/{rid}/book", json=body, headers=auth())
    assert r.status_code == status, r.text
    return r.json()  # type: ignore[no-any-return]


def violations(body: dict[str, Any]) -> list[str]:
    return [v["constraint"] for v in body["violations"]]


def count(factory: sessionmaker[Session], model: Any) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


async def test_create_get_and_book_the_earliest_slot(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    created = await create(client, auth)
    assert (created["status"], created["blocking"], created["booking"]) == ("ready", [], None)
    assert (created["duration_minutes"], created["complexity"]) == (30, "simple")
    got = await client.get(f"/v1/simulation-requests/{created['id']}", headers=auth())
    assert got.json()["id"] == created["id"]

    booked = await book(client, auth, created["id"])
    sim = booked["booking"]["simulation"]
    assert booked["status"] == "booked"
    assert datetime.fromisoformat(sim["start"]) == at("2026-11-30", "07:30")
    assert datetime.fromisoformat(sim["end"]) == at("2026-11-30", "08:00")
    assert (sim["room"], sim["therapists"]) == ("ctsim1", ["tara", "tina"])
    assert booked["booking"]["procedure"] is None

    # Booking twice is refused and changes nothing.
    again = problem(
        await book(client, auth, created["id"], status=409)
        and await client.post(
            f"/v1/simulation-requests/{created['id']}/book", json={}, headers=auth()
        ),
        409,
    )
    assert "booked already" in again["detail"]
    assert count(factory, BookingRow) == 1
    with factory() as session:
        audit = session.execute(select(AuditLog.action, AuditLog.patient_id)).all()
    assert ("write", "SIM-001") in audit and ("read", "SIM-001") in audit


async def test_spaceoar_books_the_urologist_a_week_before(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    created = await create(client, auth, site="prostate", requirements={"spaceoar": True})
    booked = await book(client, auth, created["id"])
    procedure = booked["booking"]["procedure"]
    assert procedure["proceduralist"] == "uro1"
    assert datetime.fromisoformat(procedure["start"]) == at("2026-12-01", "08:00")
    # prostate: implant_gap_days 7 (settings) -> Tuesday 8 December, when Tom's shift starts
    # (Tara works Mondays, Wednesdays and Fridays)
    start = datetime.fromisoformat(booked["booking"]["simulation"]["start"])
    assert start == at("2026-12-08", "08:30")


async def test_contrast_blocks_until_consent_and_a_recent_egfr(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    created = await create(client, auth, site="prostate", requirements={"iv_contrast": True})
    rid = created["id"]
    assert (created["status"], created["blocking"]) == ("blocked", ["iv_contrast_consent", "egfr"])
    refused = problem(
        await client.post(f"/v1/simulation-requests/{rid}/book", json={}, headers=auth()), 409
    )
    assert violations(refused) == ["iv_contrast_consent", "egfr"]

    r = await client.post(
        f"/v1/simulation-requests/{rid}/consents",
        json={"kind": "iv_contrast", "signed_at": "2026-11-27T10:00:00-05:00"},
        headers=auth(),
    )
    assert r.status_code == 201 and r.json()["blocking"] == ["egfr"]
    r = await client.post(
        f"/v1/simulation-requests/{rid}/labs",
        json={"kind": "egfr", "value": 25, "measured_at": "2026-11-28T09:00:00"},
        headers=auth(),
    )
    assert r.json()["blocking"] == ["egfr_low"]
    r = await client.post(
        f"/v1/simulation-requests/{rid}/labs",
        json={"kind": "egfr", "value": 62, "measured_at": "2026-11-29T09:00:00"},
        headers=auth(),
    )
    assert (r.json()["status"], r.json()["blocking"]) == ("ready", [])
    booked = await book(client, auth, rid)
    assert booked["booking"]["simulation"]["room"] == "ctsim1"
    assert booked["duration_minutes"] == 45  # contrast lengthens the slot


async def test_device_stock_reserved_released_and_blocking(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    r = await client.put(
        "/v1/device-types/breast_board",
        json={"id": "breast_board", "name": "breast board", "stock": 1},
        headers=auth(),
    )
    assert r.status_code == 200
    first = await create(client, auth, requirements={"immobilization": ["breast_board"]})
    second = await create(
        client, auth, patient_id="SIM-002", requirements={"immobilization": ["breast_board"]}
    )
    assert first["blocking"] == [] and second["blocking"] == []
    booked = await book(client, auth, first["id"])
    assert booked["booking"]["devices"] == ["breast_board"]
    assert violations(
        problem(
            await client.post(
                f"/v1/simulation-requests/{second['id']}/book", json={}, headers=auth()
            ),
            409,
        )
    ) == ["device_stock"]
    queue = (await client.get("/v1/queue", headers=auth())).json()
    assert [(i["request"]["id"], i["request"]["blocking"]) for i in queue] == [
        (second["id"], ["device_stock"])
    ]
    # the stock cannot go below what bookings hold
    r = await client.put(
        "/v1/device-types/breast_board",
        json={"id": "breast_board", "name": "breast board", "stock": 0},
        headers=auth(),
    )
    problem(r, 409)

    cancelled = await client.post(
        f"/v1/bookings/{booked['booking']['id']}/cancel",
        json={"reason": "patient unwell"},
        headers=auth(),
    )
    assert cancelled.status_code == 200
    assert (cancelled.json()["status"], cancelled.json()["booking"]) == ("ready", None)
    with factory() as session:
        active = session.scalar(
            select(func.count()).select_from(ReservationRow).where(ReservationRow.active)
        )
    assert active == 0
    second_now = (
        await client.get(f"/v1/simulation-requests/{second['id']}", headers=auth())
    ).json()
    # the queue is re-read: the second request is no longer blocked
    queue = (await client.get("/v1/queue", headers=auth())).json()
    assert {i["request"]["id"]: i["request"]["status"] for i in queue} == {
        first["id"]: "ready",
        second["id"]: second_now["status"],
    }
    await book(client, auth, second["id"])


async def test_proposed_slot_names_each_broken_constraint(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    first = await create(client, auth)
    await book(client, auth, first["id"], start="2026-11-30T09:00:00", room="ctsim1")
    other = await create(client, auth, patient_id="SIM-002", earliest_date="2026-12-01")
    rid = other["id"]

    async def refused(start: str) -> list[str]:
        r = await client.post(
            f"/v1/simulation-requests/{rid}/book",
            json={"start": start, "room": "ctsim1"},
            headers=auth(),
        )
        return violations(problem(r, 409))

    assert await refused("2026-12-05T09:00:00") == ["closed_day", "opening_hours", "therapists"]
    assert await refused("2026-12-25T09:00:00") == ["closed_day"]
    assert await refused("2026-12-01T16:45:00") == ["opening_hours", "therapists"]
    assert await refused("2026-11-27T09:00:00") == ["in_the_past", "earliest_date"]
    assert await refused("2026-11-30T09:15:00") == ["earliest_date", "room_busy", "therapists"]

    spaceoar = await create(
        client, auth, patient_id="SIM-003", site="prostate", requirements={"spaceoar": True}
    )
    r = await client.post(
        f"/v1/simulation-requests/{spaceoar['id']}/book",
        json={"start": "2026-12-07T09:00:00", "room": "ctsim1"},
        headers=auth(),
    )
    assert violations(problem(r, 409)) == ["procedure_gap"]
    ok = await book(client, auth, spaceoar["id"], start="2026-12-08T09:00:00", room="ctsim1")
    assert datetime.fromisoformat(ok["booking"]["procedure"]["start"]) == at("2026-12-01", "08:00")

    # a blocked request names its prerequisites among the violations
    contrast = await create(client, auth, patient_id="SIM-004", requirements={"iv_contrast": True})
    r = await client.post(
        f"/v1/simulation-requests/{contrast['id']}/book",
        json={"start": "2026-12-05T09:00:00", "room": "ctsim1"},
        headers=auth(),
    )
    assert violations(problem(r, 409)) == [
        "iv_contrast_consent",
        "closed_day",
        "opening_hours",
        "therapists",
    ]
    problem(
        await client.post(
            f"/v1/simulation-requests/{rid}/book",
            json={"start": "2026-12-01T09:00:00", "room": "ctsim9"},
            headers=auth(),
        ),
        422,
    )


async def test_reschedule_and_cancel_with_reasons(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    created = await create(client, auth, requirements={"immobilization": ["thermoplastic_mask"]})
    first = (await book(client, auth, created["id"]))["booking"]
    assert first["simulation"]["end"] == "2026-11-30T13:20:00Z"  # 07:30 + 50 min, in UTC
    problem(
        await client.post(
            f"/v1/bookings/{first['id']}/reschedule",
            json={"start": "2026-12-02T10:00:00"},
            headers=auth(),
        ),
        422,
    )  # no reason
    moved = await client.post(
        f"/v1/bookings/{first['id']}/reschedule",
        json={"start": "2026-12-02T10:00:00", "room": "ctsim1", "reason": "patient asked"},
        headers=auth(),
    )
    assert moved.status_code == 200, moved.text
    second = moved.json()["booking"]
    assert second["id"] != first["id"]
    assert datetime.fromisoformat(second["simulation"]["start"]) == at("2026-12-02", "10:00")
    old = (await client.get(f"/v1/bookings/{first['id']}", headers=auth())).json()
    assert (old["status"], old["reason"]) == ("cancelled", "patient asked")
    with factory() as session:
        units = session.execute(select(ReservationRow.booking_id, ReservationRow.active)).all()
    assert units == [(second["id"], True)]  # the mask travelled with the booking

    # A proposal that does not fit leaves the booking where it was.
    r = await client.post(
        f"/v1/bookings/{second['id']}/reschedule",
        json={"start": "2026-12-05T10:00:00", "room": "ctsim1", "reason": "try Saturday"},
        headers=auth(),
    )
    assert "closed_day" in violations(problem(r, 409))
    assert (await client.get(f"/v1/bookings/{second['id']}", headers=auth())).json()[
        "status"
    ] == "booked"

    r = await client.post(
        f"/v1/bookings/{second['id']}/cancel", json={"reason": "  "[:0]}, headers=auth()
    )
    problem(r, 422)
    r = await client.post(
        f"/v1/bookings/{second['id']}/cancel", json={"reason": "deceased"}, headers=auth()
    )
    assert r.json()["status"] == "ready"
    history = (await client.get(f"/v1/bookings/{second['id']}/history", headers=auth())).json()
    assert [(h["action"], h["reason"]) for h in history] == [
        ("requested", None),
        ("booked", None),
        ("rescheduled", "patient asked"),
        ("cancelled", "deceased"),
    ]
    r = await client.post(
        f"/v1/simulation-requests/{created['id']}/cancel",
        json={"reason": "treatment declined"},
        headers=auth(),
    )
    assert (r.json()["status"], r.json()["cancel_reason"]) == ("cancelled", "treatment declined")
    problem(
        await client.post(f"/v1/simulation-requests/{created['id']}/book", json={}, headers=auth()),
        409,
    )


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"urgency": "whenever"}, "urgency"),
        ({"requirements": {"immobilization": ["bean_bag"]}}, None),
        ({"requirements": {"iv_contrast": "maybe"}}, "iv_contrast"),
        ({"patient_id": ""}, "patient_id"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_bad_requests_are_refused_and_store_nothing(
    client: httpx.AsyncClient,
    auth: Auth,
    factory: sessionmaker[Session],
    body: dict[str, Any],
    where: str | None,
) -> None:
    r = await client.post("/v1/simulation-requests", json={**BASE, **body}, headers=auth())
    refused = problem(r, 422)
    if where:
        assert any(where in e["loc"] for e in refused["errors"])
    else:
        assert "bean_bag" in refused["detail"]
    assert count(factory, RequestRow) == 0


async def test_bad_consents_and_labs(client: httpx.AsyncClient, auth: Auth) -> None:
    created = await create(client, auth, requirements={"iv_contrast": True})
    rid = created["id"]
    for path, body in [
        ("consents", {"kind": "tattoo", "signed_at": "2026-11-27T10:00:00"}),
        ("consents", {"kind": "iv_contrast", "signed_at": "2026-12-27T10:00:00"}),
        ("labs", {"kind": "egfr", "value": 60, "measured_at": "2027-01-01T10:00:00"}),
        ("labs", {"kind": "creatinine", "value": 1.1, "measured_at": "2026-11-27T10:00:00"}),
    ]:
        problem(
            await client.post(f"/v1/simulation-requests/{rid}/{path}", json=body, headers=auth()),
            422,
        )
    again = (await client.get(f"/v1/simulation-requests/{rid}", headers=auth())).json()
    assert again["blocking"] == ["iv_contrast_consent"]
    problem(
        await client.post(
            "/v1/simulation-requests/nope/consents",
            json={"kind": "iv_contrast", "signed_at": "2026-11-27T10:00:00"},
            headers=auth(),
        ),
        404,
    )


async def test_roles(client: httpx.AsyncClient, auth: Auth) -> None:
    problem(await client.get("/v1/queue", headers=auth("billing")), 403)
    problem(await client.get("/v1/queue"), 401)
    assert (await client.get("/v1/queue", headers=auth("therapist"))).status_code == 200


async def test_queue_waits_against_urgency_targets(
    client: httpx.AsyncClient, auth: Auth, clock: Clock
) -> None:
    routine = await create(client, auth)
    urgent = await create(client, auth, patient_id="SIM-002", urgency="urgent")
    # Thursday 3 December: 3 business days later
    clock.now = at("2026-12-03", "12:00")
    queue = (await client.get("/v1/queue", headers=auth())).json()
    assert [
        (i["request"]["id"], i["waited_business_days"], i["target_business_days"], i["over_target"])
        for i in queue
    ] == [(urgent["id"], 3, 3, False), (routine["id"], 3, 10, False)]
    clock.now = at("2026-12-04", "12:00")
    queue = (await client.get("/v1/queue", headers=auth())).json()
    assert queue[0]["over_target"] is True


async def test_room_and_staff_calendars_parse_back(client: httpx.AsyncClient, auth: Auth) -> None:
    created = await create(client, auth, site="prostate", requirements={"fiducials": True})
    booking = (await book(client, auth, created["id"]))["booking"]
    room = await client.get("/v1/calendar/room/ctsim1.ics", headers=auth())
    assert room.headers["content-type"].startswith("text/calendar")
    events = Calendar.from_ical(room.content).walk("VEVENT")
    assert [(str(e["uid"]), e.decoded("dtstart")) for e in events] == [
        (f"{booking['id']}@rtops", datetime.fromisoformat(booking["simulation"]["start"]))
    ]
    therapist = booking["simulation"]["therapists"][0]
    staff = Calendar.from_ical(
        (await client.get(f"/v1/calendar/staff/{therapist}.ics", headers=auth())).content
    )
    assert len(staff.walk("VEVENT")) == 1
    uro = Calendar.from_ical(
        (await client.get("/v1/calendar/staff/uro1.ics", headers=auth())).content
    )
    (event,) = uro.walk("VEVENT")
    assert event.decoded("dtstart") == datetime.fromisoformat(booking["procedure"]["start"])
    assert event.decoded("dtend") - event.decoded("dtstart") == timedelta(minutes=30)
    problem(await client.get("/v1/calendar/room/nope.ics", headers=auth()), 404)
    problem(await client.get("/v1/calendar/staff/nope.ics", headers=auth()), 404)


async def test_resources_api(client: httpx.AsyncClient, auth: Auth) -> None:
    rooms = (await client.get("/v1/rooms", headers=auth())).json()
    assert [(r["id"], r["machine"]) for r in rooms] == [("ctsim1", "CTSim1")]
    assert [t["id"] for t in (await client.get("/v1/therapists", headers=auth())).json()] == [
        "tara",
        "tina",
        "tom",
    ]
    assert len((await client.get("/v1/proceduralists", headers=auth())).json()[0]["blocks"]) == 2
    room2 = {"id": "ctsim2", "name": "CT 2", "machine": "CTSim1", "hours": []}
    problem(await client.put("/v1/rooms/ctsim2", json=room2, headers=auth()), 409)  # machine taken
    room2["machine"] = "CTSim2"
    problem(await client.put("/v1/rooms/other", json=room2, headers=auth()), 422)
    bad = {**room2, "hours": [{"day": "mon", "start": "17:00", "end": "08:00"}]}
    problem(await client.put("/v1/rooms/ctsim2", json=bad, headers=auth()), 422)
    assert (await client.put("/v1/rooms/ctsim2", json=room2, headers=auth())).status_code == 200
    assert len((await client.get("/v1/rooms", headers=auth())).json()) == 2


async def test_batch_reports_then_commits(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    routine = [await create(client, auth, patient_id=f"B-{n}") for n in range(3)]
    emergent = await create(client, auth, patient_id="B-E", urgency="emergent")
    blocked = await create(client, auth, patient_id="B-X", requirements={"iv_contrast": True})
    report = (await client.post("/v1/batch", json={}, headers=auth())).json()
    assert report["requests"] == 4  # the blocked one waits
    assert report["batch"]["weighted_wait_hours"] <= report["one_at_a_time"]["weighted_wait_hours"]
    first = report["batch"]["slots"][0]
    assert first["request_id"] == emergent["id"]
    assert count(factory, BookingRow) == 0  # a report books nothing
    done = (await client.post("/v1/batch", json={"commit": True}, headers=auth())).json()
    assert len(done["booked"]) == 4 and done["refused"] == []
    queue = (await client.get("/v1/queue", headers=auth())).json()
    assert [i["request"]["id"] for i in queue] == [blocked["id"]]
    for r in routine:
        got = await client.get(f"/v1/simulation-requests/{r['id']}", headers=auth())
        assert got.json()["status"] == "booked"


async def test_a_patients_requests(client: httpx.AsyncClient, auth: Auth) -> None:
    first = await create(client, auth)
    await create(client, auth, patient_id="OTHER")
    await book(client, auth, first["id"])
    second = await create(client, auth, site="boost")
    listed = (await client.get("/v1/simulation-requests?patient_id=SIM-001", headers=auth())).json()
    assert sorted((r["id"], r["status"]) for r in listed) == sorted(
        [(second["id"], "ready"), (first["id"], "booked")]
    )
    booked = await client.get(
        "/v1/simulation-requests?patient_id=SIM-001&status=booked", headers=auth()
    )
    assert [r["id"] for r in booked.json()] == [first["id"]]
    problem(await client.get("/v1/simulation-requests", headers=auth()), 422)


async def test_return_devices_and_resolve_a_flag(
    client: httpx.AsyncClient, auth: Auth, service: Any
) -> None:
    from tests.scheduler.test_completion import scan

    created = await create(client, auth, requirements={"immobilization": ["knee_support"]})
    booking = (await book(client, auth, created["id"]))["booking"]
    path = f"/v1/bookings/{booking['id']}/return-devices"
    problem(await client.post(path, json={}, headers=auth()), 422)  # a reason is required
    assert (
        await client.post(path, json={"reason": "course over"}, headers=auth())
    ).status_code == 200
    problem(await client.post(path, json={"reason": "again"}, headers=auth()), 409)
    devices = (await client.get("/v1/device-types", headers=auth())).json()
    assert {d["id"]: d["reserved"] for d in devices}["knee_support"] == 0

    service.apply(scan("8.8", pid="NOBODY"))
    flagged = (await client.get("/v1/unbooked-scans", headers=auth())).json()
    assert [f["series_instance_uid"] for f in flagged] == ["8.8"]
    resolve = "/v1/unbooked-scans/8.8/resolve"
    assert (
        await client.post(resolve, json={"reason": "phantom"}, headers=auth())
    ).status_code == 204
    problem(await client.post(resolve, json={"reason": "phantom"}, headers=auth()), 409)
    problem(
        await client.post("/v1/unbooked-scans/9.9/resolve", json={"reason": "x"}, headers=auth()),
        404,
    )
    assert (await client.get("/v1/unbooked-scans", headers=auth())).json() == []
