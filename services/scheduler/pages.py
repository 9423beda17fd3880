"""Staff pages of the scheduler (``/ui``): the queue with what blocks each request and a one-click
booking of the earliest slot (or a proposed one), a form for a new request, and the week
calendar of each CT simulator with moving and cancelling.

Built on ``shared.ui``; for the API's ``SchedulingStaff`` roles (scheduler, therapist, admin).
Reads are audited like the API's; writes go through the same use cases as the API
(``SchedulerService.create_request``, ``book``, ``reschedule``, ``cancel_booking``), so they are
validated, audited and published exactly alike."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select

from shared.audit import record_request
from shared.auth import SCHEDULING_STAFF
from shared.calendar import iso_week_bounds, iso_week_of
from shared.errors import Conflict, NotFound, RuleViolation
from shared.ui import NavLink, Session, page_router

from . import domain
from .api import queue_items
from .schemas import RequestIn
from .service import Proposal, SchedulerService, SlotConflict
from .store import AuditLog, BookingRow, DeviceTypeRow, RequestRow, RoomRow

QUEUE = "/ui/queue"
CALENDAR = "/ui/calendar"

pages, router = page_router(
    Path(__file__).parent / "templates",
    nav=(NavLink("Queue", QUEUE), NavLink("Week calendar", CALENDAR)),
    home=QUEUE,
)

Staff = Annotated[Session, pages.user(*SCHEDULING_STAFF)]
Clerk = Annotated[Session, pages.user(*SCHEDULING_STAFF, csrf=True)]

BLOCKING_TEXT = {
    domain.IV_CONTRAST_CONSENT: "IV contrast consent not recorded",
    domain.EGFR: "no recent eGFR (the site requires one before contrast)",
    domain.EGFR_LOW: "eGFR below the contrast threshold: physician to decide",
    domain.DEVICE_STOCK: "immobilization device out of stock",
    domain.NO_PROCEDURALIST: "needs a proceduralist; none set up",
    domain.NO_ROOM: "no CT simulator room set up",
}
CONSTRAINT_TEXT = {
    "in_the_past": "the time has passed",
    "earliest_date": "before the request's earliest date",
    "closed_day": "the clinic is closed that day",
    "opening_hours": "outside the room's opening hours",
    "room_busy": "the room is booked then",
    "therapists": "not enough therapists on shift and free",
    "procedure_gap": "the proceduralist appointment cannot be early enough",
    "device_stock": "immobilization device out of stock",
    "no_slot": "no slot within the search horizon",
    **BLOCKING_TEXT,
}


def _service(request: Request) -> SchedulerService:
    return request.app.state.scheduler_service  # type: ignore[no-any-return]


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _problems(exc: Exception) -> list[str]:
    if isinstance(exc, SlotConflict):
        return [
            f"{CONSTRAINT_TEXT.get(v['constraint'], v['constraint'])}: {v['detail']}"
            for v in exc.violations
        ]
    return [str(exc)]


def _queue_page(
    request: Request,
    user: Session,
    *,
    errors: list[str] | None = None,
    failed: str | None = None,
    form: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    service = _service(request)
    with request.app.state.session_factory.begin() as session:
        items = queue_items(session, service)
        devices = session.scalars(select(DeviceTypeRow).order_by(DeviceTypeRow.id)).all()
        rooms = session.scalars(select(RoomRow).order_by(RoomRow.id)).all()
        record_request(
            session,
            AuditLog,
            user.principal,
            request,
            patient_ids=[i.request.patient_id for i in items],
        )
        return pages.render(
            request,
            "queue.html",
            {
                "items": items,
                "devices": devices,
                "rooms": rooms,
                "blocking_text": BLOCKING_TEXT,
                "errors": errors or [],
                "failed": failed,
                "form": form or {},
                "urgencies": domain.URGENCIES,
            },
            session=user,
            status_code=status_code,
        )


@router.get(QUEUE, response_class=HTMLResponse)
def queue(request: Request, user: Staff) -> Response:
    """Requests not yet booked, most urgent first, what blocks each, a booking button."""
    return _queue_page(request, user)


def _week_link(request: Request, room: str, day: date, **extra: str) -> str:
    return f"{_root(request)}{CALENDAR}?" + urlencode(
        {"room": room, "week": iso_week_of(day), **extra}
    )


@router.post("/ui/requests", response_class=HTMLResponse)
def new_request(
    request: Request,
    user: Clerk,
    patient_id: Annotated[str, Form(max_length=64)] = "",
    patient_name: Annotated[str, Form(max_length=200)] = "",
    referring_physician: Annotated[str, Form(max_length=200)] = "",
    treating_physician: Annotated[str, Form(max_length=200)] = "",
    site: Annotated[str, Form(max_length=100)] = "",
    urgency: Annotated[str, Form(max_length=20)] = "routine",
    earliest_date: Annotated[str, Form(max_length=20)] = "",
    immobilization: Annotated[list[str] | None, Form()] = None,
    iv_contrast: Annotated[bool, Form()] = False,
    four_d_ct: Annotated[bool, Form()] = False,
    fiducials: Annotated[bool, Form()] = False,
    spaceoar: Annotated[bool, Form()] = False,
    notes: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    """A new simulation request (``SchedulerService.create_request``); back to the queue."""
    form: dict[str, Any] = {
        "patient_id": patient_id.strip(),
        "patient_name": patient_name.strip(),
        "referring_physician": referring_physician.strip(),
        "treating_physician": treating_physician.strip(),
        "site": site.strip(),
        "urgency": urgency,
        "earliest_date": earliest_date or None,
        "requirements": {
            "immobilization": immobilization or [],
            "iv_contrast": iv_contrast,
            "four_d_ct": four_d_ct,
            "fiducials": fiducials,
            "spaceoar": spaceoar,
            "notes": notes.strip() or None,
        },
    }
    try:
        body = RequestIn.model_validate(form)
        _service(request).create_request(body, user.principal)
    except ValidationError as exc:
        errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return _queue_page(request, user, errors=errors, form=form, status_code=422)
    except RuleViolation as exc:
        return _queue_page(request, user, errors=[str(exc)], form=form, status_code=422)
    return RedirectResponse(f"{_root(request)}{QUEUE}", status_code=303)


def _when(value: str, service: SchedulerService, errors: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        errors.append(f"{value!r} is not a date and time")
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=service.calendar.zone)


@router.post("/ui/requests/{request_id}/book", response_class=HTMLResponse)
def book(
    request: Request,
    request_id: str,
    user: Clerk,
    start: Annotated[str, Form(max_length=40)] = "",
    room: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Book the earliest slot (no ``start``) or the proposed one; to the room's week, with the
    booking marked. A slot that breaks constraints is listed on the queue (409)."""
    service = _service(request)
    errors: list[str] = []
    moment = _when(start, service, errors)
    if errors:
        return _queue_page(request, user, errors=errors, failed=request_id, status_code=422)
    proposal = Proposal(moment, room or None) if moment else None
    try:
        booking = service.book(request_id, proposal, user.principal)
    except (SlotConflict, Conflict) as exc:
        return _queue_page(request, user, errors=_problems(exc), failed=request_id, status_code=409)
    except (RuleViolation, NotFound) as exc:
        return _queue_page(request, user, errors=[str(exc)], failed=request_id, status_code=422)
    day = service.calendar.local_date(booking.start)
    return RedirectResponse(
        _week_link(request, booking.room_id, day, booked=booking.id), status_code=303
    )


def _calendar_page(
    request: Request,
    user: Session,
    *,
    room: str | None,
    week: str | None,
    booked: str | None = None,
    errors: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    service = _service(request)
    zone = service.calendar.zone
    week = week or iso_week_of(service.today())
    try:
        first, end = iso_week_bounds(week, zone)
    except ValueError as exc:
        return pages.render(
            request,
            "error.html",
            {"title": "Not a week", "message": str(exc)},
            session=user,
            status_code=422,
        )
    with request.app.state.session_factory.begin() as session:
        rooms = session.scalars(select(RoomRow).order_by(RoomRow.id)).all()
        if not rooms:
            return pages.render(
                request,
                "error.html",
                {"title": "No room", "message": "No CT simulator room is set up."},
                session=user,
            )
        the_room = next((r for r in rooms if r.id == room), rooms[0])
        rows = session.scalars(
            select(BookingRow)
            .where(
                BookingRow.room_id == the_room.id,
                BookingRow.start >= first,
                BookingRow.start < end,
                BookingRow.status != "cancelled",
            )
            .order_by(BookingRow.start)
        ).all()
        requests = {
            r.id: r
            for r in session.scalars(
                select(RequestRow).where(RequestRow.id.in_({b.request_id for b in rows}))
            )
        }
        record_request(
            session, AuditLog, user.principal, request, patient_ids=[b.patient_id for b in rows]
        )
        monday = first.date()
        days = []
        for offset in range(7):
            day = monday + timedelta(days=offset)
            if not service.calendar.is_business_day(day) and not any(
                service.calendar.local_date(b.start) == day for b in rows
            ):
                continue
            days.append(
                {
                    "day": day,
                    "open": service.calendar.is_business_day(day),
                    "hours": [
                        f"{w['start'][:5]}-{w['end'][:5]}"
                        for w in the_room.hours
                        if w["day"] == day.strftime("%a").lower()
                    ],
                    "bookings": [b for b in rows if service.calendar.local_date(b.start) == day],
                }
            )
        return pages.render(
            request,
            "calendar.html",
            {
                "rooms": rooms,
                "room": the_room,
                "week": week,
                "days": days,
                "requests": requests,
                "booked": booked,
                "errors": errors or [],
                "previous": iso_week_of(monday - timedelta(days=7)),
                "next": iso_week_of(monday + timedelta(days=7)),
            },
            session=user,
            status_code=status_code,
        )


@router.get(CALENDAR, response_class=HTMLResponse)
def calendar(
    request: Request,
    user: Staff,
    room: str | None = None,
    week: str | None = None,
    booked: str | None = None,
) -> Response:
    """A CT simulator's week: each business day's bookings with move and cancel forms."""
    return _calendar_page(request, user, room=room, week=week, booked=booked)


@router.post("/ui/bookings/{booking_id}/reschedule", response_class=HTMLResponse)
def reschedule(
    request: Request,
    booking_id: str,
    user: Clerk,
    start: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
    room: Annotated[str, Form(max_length=64)] = "",
    week: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    service = _service(request)
    errors: list[str] = []
    moment = _when(start, service, errors)
    if not reason.strip():
        errors.append("a reason is required to move a booking")
    if errors:
        return _calendar_page(
            request, user, room=room, week=week or None, errors=errors, status_code=422
        )
    proposal = Proposal(moment, room or None) if moment else None
    try:
        booking = service.reschedule(booking_id, proposal, reason.strip(), user.principal)
    except (SlotConflict, Conflict) as exc:
        return _calendar_page(
            request, user, room=room, week=week or None, errors=_problems(exc), status_code=409
        )
    except (RuleViolation, NotFound) as exc:
        return _calendar_page(
            request, user, room=room, week=week or None, errors=[str(exc)], status_code=422
        )
    day = service.calendar.local_date(booking.start)
    return RedirectResponse(
        _week_link(request, booking.room_id, day, booked=booking.id), status_code=303
    )


@router.post("/ui/bookings/{booking_id}/cancel", response_class=HTMLResponse)
def cancel(
    request: Request,
    booking_id: str,
    user: Clerk,
    reason: Annotated[str, Form(max_length=2000)] = "",
    room: Annotated[str, Form(max_length=64)] = "",
    week: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    if not reason.strip():
        return _calendar_page(
            request,
            user,
            room=room,
            week=week or None,
            errors=["a reason is required to cancel a booking"],
            status_code=422,
        )
    try:
        _service(request).cancel_booking(booking_id, reason.strip(), user.principal)
    except (Conflict, NotFound) as exc:
        return _calendar_page(
            request, user, room=room, week=week or None, errors=[str(exc)], status_code=409
        )
    target = f"{_root(request)}{CALENDAR}?" + urlencode({"room": room, "week": week})
    return RedirectResponse(target, status_code=303)
