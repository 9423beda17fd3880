"""REST API of the scheduler (``/v1``): resources, simulation requests with their consents and
labs, booking, rescheduling and cancelling, the queue, iCalendar feeds and the simulation CTs
no booking explains. Roles: scheduler, therapist and admin; every read and write of patient
data is audited."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.audit import record_access, record_request
from shared.auth import SchedulingStaff
from shared.errors import NotFound, RuleViolation
from shared.params import PATIENT_ID_MAX_CHARS, UidPath

from . import domain
from .ical import feed
from .schemas import (
    DeviceTypeIn,
    ProceduralistIn,
    RequestIn,
    RoomIn,
    TherapistIn,
    requirements_of,
)
from .service import Proposal, SchedulerService
from .store import (
    AuditLog,
    BookingChange,
    BookingRow,
    DeviceTypeRow,
    ProceduralistRow,
    RequestRow,
    RoomRow,
    TherapistRow,
    UnbookedScan,
    current_booking,
    reserved_units,
)

router = APIRouter(prefix="/v1", tags=["scheduler"])

# Every id the scheduler keeps (rooms, staff, devices, requests, bookings) is a String(64)
# column (store.ID); a longer one names nothing and is a 422 before any lookup.
ID_MAX_CHARS = 64
IdPath = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS)]


def _service(request: Request) -> SchedulerService:
    return request.app.state.scheduler_service  # type: ignore[no-any-return]


def _factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


ServiceDep = Annotated[SchedulerService, Depends(_service)]
FactoryDep = Annotated[sessionmaker[Session], Depends(_factory)]


# ---------------------------------------------------------------- shapes out


class SimulationOut(BaseModel):
    start: datetime
    end: datetime
    room: str
    therapists: list[str]


class ProcedureOut(BaseModel):
    start: datetime
    end: datetime
    proceduralist: str


class BookingOut(BaseModel):
    id: str
    request_id: str
    patient_id: str
    status: Literal["booked", "completed", "cancelled"]
    simulation: SimulationOut
    procedure: ProcedureOut | None = Field(description="fiducials / SpaceOAR placement")
    devices: list[str] = Field(description="device types, one unit of each reserved")
    reason: str | None = Field(description="why it was cancelled or moved")
    revision: int = Field(description="rtops.scheduler.sim.completed revision published (0: none)")
    performed_at: datetime | None
    series_instance_uids: list[str]


class RequestOut(BaseModel):
    id: str
    status: Literal["blocked", "ready", "booked", "completed", "cancelled"]
    blocking: list[str]
    patient_id: str
    patient_name: str
    referring_physician: str
    treating_physician: str
    site: str
    urgency: domain.Urgency
    earliest_date: date | None
    requirements: dict[str, Any]
    duration_minutes: int
    complexity: domain.Complexity
    created_at: datetime
    created_by: str
    cancel_reason: str | None
    booking: BookingOut | None


class QueueItem(BaseModel):
    request: RequestOut
    waited_business_days: int
    target_business_days: int
    over_target: bool


def booking_out(b: BookingRow) -> BookingOut:
    procedure = None
    if b.procedure_start and b.procedure_end and b.proceduralist_id:
        procedure = ProcedureOut(
            start=b.procedure_start, end=b.procedure_end, proceduralist=b.proceduralist_id
        )
    return BookingOut(
        id=b.id,
        request_id=b.request_id,
        patient_id=b.patient_id,
        status=b.status,  # type: ignore[arg-type]
        simulation=SimulationOut(start=b.start, end=b.end, room=b.room_id, therapists=b.therapists),
        procedure=procedure,
        devices=b.devices,
        reason=b.reason,
        revision=b.revision,
        performed_at=b.performed_at,
        series_instance_uids=b.series_instance_uids,
    )


def request_out(
    session: Session, service: SchedulerService, row: RequestRow, devices: Any = None
) -> RequestOut:
    devices = devices if devices is not None else service.devices(session)
    req = requirements_of(row.requirements)
    booking = current_booking(session, row.id)
    status, blocking = row.status, row.blocking
    if status in ("blocked", "ready"):
        # Read live: stock, other bookings and the age of an eGFR change without this request.
        blocking = service.blocking_of(session, row)
        status = "blocked" if blocking else "ready"
    return RequestOut(
        id=row.id,
        status=status,  # type: ignore[arg-type]
        blocking=blocking,
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        referring_physician=row.referring_physician,
        treating_physician=row.treating_physician,
        site=row.site,
        urgency=row.urgency,  # type: ignore[arg-type]
        earliest_date=row.earliest_date,
        requirements=row.requirements,
        duration_minutes=domain.duration_minutes(req, devices, service.policy.durations),
        complexity=domain.complexity(req, devices),
        created_at=row.created_at,
        created_by=row.created_by,
        cancel_reason=row.cancel_reason,
        booking=booking_out(booking) if booking else None,
    )


def _request_view(
    factory: sessionmaker[Session], service: SchedulerService, rid: str
) -> RequestOut:
    with factory() as session:
        row = session.get(RequestRow, rid)
        if row is None:
            raise NotFound(f"no simulation request {rid!r}")
        return request_out(session, service, row)


# ---------------------------------------------------------------- resources


class RoomOut(RoomIn):
    pass


class DeviceTypeOut(DeviceTypeIn):
    reserved: int = Field(description="units held by bookings")


@router.get("/rooms", response_model=list[RoomOut])
def list_rooms(principal: SchedulingStaff, factory: FactoryDep) -> list[RoomOut]:
    with factory() as session:
        return [
            RoomOut(id=r.id, name=r.name, machine=r.machine, hours=r.hours)  # type: ignore[arg-type]
            for r in session.scalars(select(RoomRow).order_by(RoomRow.id))
        ]


@router.put("/rooms/{room_id}", response_model=RoomOut)
def put_room(
    room_id: IdPath, body: RoomIn, principal: SchedulingStaff, service: ServiceDep
) -> RoomOut:
    """Create or replace a CT simulator room; ``machine`` ties it to the SCP registry."""
    _same_id(room_id, body.id)
    service.put_room(body, principal)
    return RoomOut.model_validate(body.model_dump())


@router.get("/therapists", response_model=list[TherapistIn])
def list_therapists(principal: SchedulingStaff, factory: FactoryDep) -> list[TherapistIn]:
    with factory() as session:
        return [
            TherapistIn(id=t.id, name=t.name, shifts=t.shifts)  # type: ignore[arg-type]
            for t in session.scalars(select(TherapistRow).order_by(TherapistRow.id))
        ]


@router.put("/therapists/{therapist_id}", response_model=TherapistIn)
def put_therapist(
    therapist_id: IdPath, body: TherapistIn, principal: SchedulingStaff, service: ServiceDep
) -> TherapistIn:
    _same_id(therapist_id, body.id)
    service.put_therapist(body, principal)
    return body


@router.get("/proceduralists", response_model=list[ProceduralistIn])
def list_proceduralists(principal: SchedulingStaff, factory: FactoryDep) -> list[ProceduralistIn]:
    with factory() as session:
        return [
            ProceduralistIn(id=p.id, name=p.name, specialty=p.specialty, blocks=p.blocks)  # type: ignore[arg-type]
            for p in session.scalars(select(ProceduralistRow).order_by(ProceduralistRow.id))
        ]


@router.put("/proceduralists/{proceduralist_id}", response_model=ProceduralistIn)
def put_proceduralist(
    proceduralist_id: IdPath, body: ProceduralistIn, principal: SchedulingStaff, service: ServiceDep
) -> ProceduralistIn:
    _same_id(proceduralist_id, body.id)
    service.put_proceduralist(body, principal)
    return body


@router.get("/device-types", response_model=list[DeviceTypeOut])
def list_device_types(principal: SchedulingStaff, factory: FactoryDep) -> list[DeviceTypeOut]:
    with factory() as session:
        reserved = reserved_units(session)
        return [
            DeviceTypeOut(
                id=d.id,
                name=d.name,
                stock=d.stock,
                fabricated=d.fabricated,
                reserved=len(reserved.get(d.id, [])),
            )
            for d in session.scalars(select(DeviceTypeRow).order_by(DeviceTypeRow.id))
        ]


@router.put("/device-types/{device_type_id}", response_model=DeviceTypeIn)
def put_device_type(
    device_type_id: IdPath, body: DeviceTypeIn, principal: SchedulingStaff, service: ServiceDep
) -> DeviceTypeIn:
    """Create a device type or set its stock (never below the units bookings hold)."""
    _same_id(device_type_id, body.id)
    service.put_device_type(body, principal)
    return body


def _same_id(path: str, body: str) -> None:
    if path != body:
        raise RuleViolation(f"the path names {path!r} and the body {body!r}: they must agree")


# ---------------------------------------------------------------- requests


class ConsentIn(BaseModel):
    kind: str = Field(max_length=30, description=f"one of {', '.join(domain.CONSENT_KINDS)}")
    signed_at: datetime


class LabIn(BaseModel):
    kind: Literal["egfr"] = "egfr"
    value: float = Field(ge=0, description="mL/min/1.73 m2")
    measured_at: datetime


class BookIn(BaseModel):
    start: datetime | None = Field(
        default=None,
        description="a proposed start (clinic time when it has no offset); omitted: the "
        "earliest slot that satisfies every constraint",
    )
    room: str | None = Field(
        default=None, max_length=ID_MAX_CHARS, description="the proposed room (with ``start``)"
    )


class ReasonIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


class RescheduleIn(BookIn):
    reason: str = Field(min_length=1, max_length=2000)


def _aware(moment: datetime, service: SchedulerService) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=service.calendar.zone)


def _proposal(body: BookIn, service: SchedulerService) -> Proposal | None:
    if body.start is None:
        return None
    return Proposal(start=_aware(body.start, service), room=body.room)


@router.post("/simulation-requests", response_model=RequestOut, status_code=201)
def create_request(
    body: RequestIn, principal: SchedulingStaff, service: ServiceDep, factory: FactoryDep
) -> RequestOut:
    """A simulation order; ``blocking`` names what keeps it from being booked."""
    row = service.create_request(body, principal)
    return _request_view(factory, service, row.id)


@router.get("/simulation-requests", response_model=list[RequestOut])
def list_requests(
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
    patient_id: Annotated[str, Query(min_length=1, max_length=PATIENT_ID_MAX_CHARS)],
    status: Literal["blocked", "ready", "booked", "completed", "cancelled"] | None = None,
) -> list[RequestOut]:
    """A patient's simulation requests, newest first (the patient timeline reads them)."""
    with factory.begin() as session:
        query = select(RequestRow).where(RequestRow.patient_id == patient_id)
        if status:
            query = query.where(RequestRow.status == status)
        rows = session.scalars(query.order_by(RequestRow.created_at.desc()).limit(200)).all()
        record_request(session, AuditLog, principal, request, patient_ids=[patient_id])
        devices = service.devices(session)
        return [request_out(session, service, r, devices) for r in rows]


@router.get("/simulation-requests/{request_id}", response_model=RequestOut)
def get_request(
    request_id: IdPath,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
) -> RequestOut:
    service.get_request(request_id, principal, request.url.path)
    return _request_view(factory, service, request_id)


@router.post(
    "/simulation-requests/{request_id}/consents", response_model=RequestOut, status_code=201
)
def add_consent(
    request_id: IdPath,
    body: ConsentIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> RequestOut:
    service.add_consent(request_id, body.kind, _aware(body.signed_at, service), principal)
    return _request_view(factory, service, request_id)


@router.post("/simulation-requests/{request_id}/labs", response_model=RequestOut, status_code=201)
def add_lab(
    request_id: IdPath,
    body: LabIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> RequestOut:
    service.add_lab(request_id, body.kind, body.value, _aware(body.measured_at, service), principal)
    return _request_view(factory, service, request_id)


@router.post("/simulation-requests/{request_id}/book", response_model=RequestOut, status_code=201)
def book(
    request_id: IdPath,
    body: BookIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> RequestOut:
    """Book the earliest slot, or the proposed one; 409 names each broken constraint
    (``violations``). The response's ``booking`` has ``simulation`` and ``procedure``."""
    service.book(request_id, _proposal(body, service), principal)
    return _request_view(factory, service, request_id)


@router.post("/simulation-requests/{request_id}/cancel", response_model=RequestOut)
def cancel_request(
    request_id: IdPath,
    body: ReasonIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> RequestOut:
    service.cancel_request(request_id, body.reason, principal)
    return _request_view(factory, service, request_id)


# ---------------------------------------------------------------- bookings


@router.get("/bookings", response_model=list[BookingOut])
def list_bookings(
    principal: SchedulingStaff,
    factory: FactoryDep,
    request: Request,
    service: ServiceDep,
    room: Annotated[str | None, Query(max_length=ID_MAX_CHARS)] = None,
    start: date | None = None,
    days: int = 7,
) -> list[BookingOut]:
    """Bookings (not cancelled) from ``start`` (default today) for ``days`` days."""
    first = service.calendar.midnight(start or service.today())
    last = first + timedelta(days=max(1, min(days, 92)))
    with factory.begin() as session:
        query = select(BookingRow).where(
            BookingRow.start >= first, BookingRow.start < last, BookingRow.status != "cancelled"
        )
        if room:
            query = query.where(BookingRow.room_id == room)
        rows = session.scalars(query.order_by(BookingRow.start)).all()
        record_request(
            session, AuditLog, principal, request, patient_ids=[r.patient_id for r in rows]
        )
        return [booking_out(r) for r in rows]


@router.get("/bookings/{booking_id}", response_model=BookingOut)
def get_booking(
    booking_id: IdPath, principal: SchedulingStaff, factory: FactoryDep, request: Request
) -> BookingOut:
    with factory.begin() as session:
        row = session.get(BookingRow, booking_id)
        if row is None:
            raise NotFound(f"no booking {booking_id!r}")
        record_request(session, AuditLog, principal, request, patient_ids=[row.patient_id])
        return booking_out(row)


@router.get("/bookings/{booking_id}/history")
def booking_history(
    booking_id: IdPath, principal: SchedulingStaff, factory: FactoryDep, request: Request
) -> list[dict[str, Any]]:
    """Who booked, moved, cancelled or completed the booking's request, and why."""
    with factory.begin() as session:
        row = session.get(BookingRow, booking_id)
        if row is None:
            raise NotFound(f"no booking {booking_id!r}")
        record_request(session, AuditLog, principal, request, patient_ids=[row.patient_id])
        changes = session.scalars(
            select(BookingChange)
            .where(BookingChange.request_id == row.request_id)
            .order_by(BookingChange.id)
        )
        return [
            {
                "action": c.action,
                "booking_id": c.booking_id,
                "before": c.before,
                "after": c.after,
                "reason": c.reason,
                "by": c.by,
                "at": c.at.isoformat(),
            }
            for c in changes
        ]


@router.post("/bookings/{booking_id}/reschedule", response_model=RequestOut)
def reschedule(
    booking_id: IdPath,
    body: RescheduleIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> RequestOut:
    """Move a booking (to the proposed slot, or the earliest one) with a reason; the old
    booking is kept as cancelled, the devices stay reserved."""
    booking = service.reschedule(booking_id, _proposal(body, service), body.reason, principal)
    return _request_view(factory, service, booking.request_id)


@router.post("/bookings/{booking_id}/cancel", response_model=RequestOut)
def cancel_booking(
    booking_id: IdPath,
    body: ReasonIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> RequestOut:
    """Cancel with a reason: the request goes back to the queue and its devices are released.
    Cancelling a completed booking retracts its completion (``sim.completed`` with
    ``cancelled``)."""
    booking = service.cancel_booking(booking_id, body.reason, principal)
    return _request_view(factory, service, booking.request_id)


@router.post("/bookings/{booking_id}/return-devices", response_model=BookingOut)
def return_devices(
    booking_id: IdPath,
    body: ReasonIn,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
) -> BookingOut:
    """Reusable devices held by the booking go back in stock (a fabricated one left the stock
    when the simulation was done)."""
    service.return_devices(booking_id, body.reason, principal)
    with factory() as session:
        row = session.get(BookingRow, booking_id)
        assert row is not None
        return booking_out(row)


# ---------------------------------------------------------------- queue and feeds


def queue_items(session: Session, service: SchedulerService) -> list[QueueItem]:
    today = service.today()
    devices = service.devices(session)
    rows = session.scalars(
        select(RequestRow)
        .where(RequestRow.status.in_(("blocked", "ready")))
        .order_by(RequestRow.created_at)
    ).all()
    items = []
    for row in rows:
        target = service.policy.urgency[row.urgency].business_days
        waited = domain.business_days_waited(
            service.calendar.local_date(row.created_at), today, service.calendar.is_business_day
        )
        items.append(
            QueueItem(
                request=request_out(session, service, row, devices),
                waited_business_days=waited,
                target_business_days=target,
                over_target=waited > target,
            )
        )
    order = {u: i for i, u in enumerate(domain.URGENCIES)}
    # Most urgent first, then whoever has used most of their target.
    items.sort(
        key=lambda i: (
            order[i.request.urgency],
            -(i.waited_business_days / max(i.target_business_days, 1)),
            i.request.created_at,
        )
    )
    return items


@router.get("/queue", response_model=list[QueueItem])
def queue(
    principal: SchedulingStaff, service: ServiceDep, factory: FactoryDep, request: Request
) -> list[QueueItem]:
    """Requests not yet booked, most urgent first: what blocks each and how long it has waited
    (business days) against its urgency's target."""
    with factory.begin() as session:
        items = queue_items(session, service)
        record_request(
            session, AuditLog, principal, request, patient_ids=[i.request.patient_id for i in items]
        )
    return items


ICS = "text/calendar; charset=utf-8"


def _feed_bookings(session: Session, service: SchedulerService) -> list[BookingRow]:
    since = service.now() - timedelta(days=30)
    return list(
        session.scalars(
            select(BookingRow)
            .where(BookingRow.start >= since, BookingRow.status != "cancelled")
            .order_by(BookingRow.start)
        )
    )


@router.get(
    "/calendar/room/{room_id}.ics",
    response_class=Response,
    responses={200: {"content": {"text/calendar": {}}}},
)
def room_calendar(
    room_id: IdPath,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
) -> Response:
    """The room's bookings from 30 days ago on, as iCalendar."""
    with factory.begin() as session:
        room = session.get(RoomRow, room_id)
        if room is None:
            raise NotFound(f"no room {room_id!r}; GET /v1/rooms lists them")
        rows = [b for b in _feed_bookings(session, service) if b.room_id == room_id]
        record_request(
            session, AuditLog, principal, request, patient_ids=[b.patient_id for b in rows]
        )
    return Response(feed(room.name, rows, now=service.now()), media_type=ICS)


@router.get(
    "/calendar/staff/{staff_id}.ics",
    response_class=Response,
    responses={200: {"content": {"text/calendar": {}}}},
)
def staff_calendar(
    staff_id: IdPath,
    principal: SchedulingStaff,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
) -> Response:
    """A therapist's simulations, or a proceduralist's appointments, as iCalendar."""
    with factory.begin() as session:
        therapist = session.get(TherapistRow, staff_id)
        proceduralist = session.get(ProceduralistRow, staff_id)
        if therapist is None and proceduralist is None:
            raise NotFound(f"no therapist or proceduralist {staff_id!r}")
        bookings = _feed_bookings(session, service)
        if therapist is not None:
            rows = [b for b in bookings if staff_id in b.therapists]
            body = feed(therapist.name, rows, now=service.now())
        else:
            assert proceduralist is not None
            rows = [b for b in bookings if b.proceduralist_id == staff_id]
            body = feed(proceduralist.name, rows, now=service.now(), procedures_of=staff_id)
        record_request(
            session, AuditLog, principal, request, patient_ids=[b.patient_id for b in rows]
        )
    return Response(body, media_type=ICS)


class BatchIn(BaseModel):
    commit: bool = Field(
        default=False, description="book the batch's answer; false: report it only"
    )


@router.post("/batch")
def batch(
    body: BatchIn, principal: SchedulingStaff, service: ServiceDep, factory: FactoryDep
) -> dict[str, Any]:
    """Schedule every ready request for the coming seven days at once (OR-Tools CP-SAT,
    minimizing urgency-weighted waiting) and report it against booking them one at a time in
    queue order; with ``commit`` the answer is booked (each slot checked again)."""
    result = service.batch(commit=body.commit, principal=principal)
    with factory.begin() as session:
        ids = [s["request_id"] for s in result["batch"]["slots"]]
        patients = session.scalars(select(RequestRow.patient_id).where(RequestRow.id.in_(ids)))
        record_access(
            session,
            AuditLog,
            principal,
            action="write" if body.commit else "read",
            resource="/v1/batch",
            patient_ids=list(patients),
        )
    return result


class UnbookedOut(BaseModel):
    series_instance_uid: str
    patient_id: str
    patient_name: str | None
    machine: str | None
    study_instance_uid: str | None
    acquired_at: datetime | None
    instance_count: int
    first_seen: datetime


@router.get("/unbooked-scans", response_model=list[UnbookedOut])
def unbooked_scans(
    principal: SchedulingStaff, factory: FactoryDep, request: Request
) -> list[UnbookedOut]:
    """Simulation CTs from a CT simulator with no booking for the patient that day."""
    with factory.begin() as session:
        rows = session.scalars(
            select(UnbookedScan).where(~UnbookedScan.resolved).order_by(UnbookedScan.first_seen)
        ).all()
        record_request(
            session, AuditLog, principal, request, patient_ids=[r.patient_id for r in rows]
        )
        return [UnbookedOut.model_validate(r, from_attributes=True) for r in rows]


@router.post("/unbooked-scans/{series_instance_uid}/resolve", status_code=204)
def resolve_scan(
    series_instance_uid: UidPath,
    body: ReasonIn,
    principal: SchedulingStaff,
    service: ServiceDep,
) -> Response:
    """A flagged simulation CT dealt with (booked late, a re-simulation, a test scan): off the
    list; who and why are audited."""
    service.resolve_scan(series_instance_uid, body.reason, principal)
    return Response(status_code=204)
