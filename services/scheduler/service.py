"""Use cases of the scheduler, one transaction each: resources, requests and their
prerequisites, booking (search or a proposed slot), rescheduling and cancelling, and the
simulation CTs that complete bookings.

Booking reads the world, asks the pure search (``slots``) for a slot and writes the booking's
claims; the database refuses a claim that overlaps another (``store``), so two bookings made at
once never share a room, a therapist or a device unit. The loser of such a race searches again
(a search) or is told what its proposed slot now breaks (a proposal)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.audit import record_access
from shared.auth import Principal
from shared.calendar import ClinicCalendar, local_midnight
from shared.db import lost_to_a_concurrent_transaction
from shared.errors import Conflict, NotFound, RuleViolation
from shared.events import BookingChanged, CloudEvent, ImagingAcquired, Patient, SimCompleted
from shared.locks import lock_keys
from shared.outbox import claim_events, emit

from . import domain, slots
from .schemas import (
    DeviceTypeIn,
    ProceduralistIn,
    RequestIn,
    Resources,
    RoomIn,
    TherapistIn,
    requirements_of,
    windows_json,
    windows_of,
)
from .store import (
    AuditLog,
    BookingChange,
    BookingRow,
    ConsentRow,
    DeviceTypeRow,
    LabRow,
    ProceduralistRow,
    ProcessedEvent,
    RequestRow,
    ReservationRow,
    RoomRow,
    TherapistRow,
    UnbookedScan,
    add_claims,
    bookings_of_patient_on,
    claims_between,
    current_booking,
    release,
    reserved_units,
    resources_count,
)

log = structlog.get_logger(__name__)
CONSUMER = "scheduler"
SOURCE = "rtops/scheduler"
# A lost race (another booking took the slot between our search and our write) searches again;
# each round has a winner, so n bookings racing for one slot need at most n rounds.
BOOKING_ATTEMPTS = 12
CLAIM_LOCKS = "scheduler.resource"
SEARCH_WINDOWS_DAYS = (4, 21, 10_000)  # the last: the whole horizon


def _race_lost(exc: DBAPIError) -> bool:
    """A concurrent booking took a claimed time first (the exclusion constraint or SQLite's
    trigger), or PostgreSQL ended this transaction for one whose claims conflict with it
    (a deadlock: each inserted a claim the other then waited on): search again."""
    return isinstance(exc, IntegrityError) or lost_to_a_concurrent_transaction(exc)


class SlotConflict(Conflict):
    """409: the slot breaks constraints, each named (``violations``)."""

    def __init__(self, message: str, violations: Sequence[slots.Violation]) -> None:
        super().__init__(message)
        self.violations = [{"constraint": v.constraint, "detail": v.detail} for v in violations]


@dataclass(frozen=True)
class Proposal:
    start: datetime
    room: str | None = None


class SchedulerService:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        calendar: ClinicCalendar,
        policy: domain.Policy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[], None] = lambda: None,
        batch_time_limit_s: float = 20.0,
        batch_workers: int = 2,
    ) -> None:
        self._batch_limits = (batch_time_limit_s, batch_workers)
        self._factory = factory
        self.calendar = calendar
        self.policy = policy
        self._now = clock
        self._on_commit = on_commit

    def now(self) -> datetime:
        return self._now()

    def today(self) -> date:
        return self.calendar.local_date(self._now())

    # ------------------------------------------------------------ resources

    def put_room(self, room: RoomIn, principal: Principal) -> RoomRow:
        with self._factory.begin() as session:
            other = session.scalars(
                select(RoomRow).where(RoomRow.machine == room.machine, RoomRow.id != room.id)
            ).first()
            if other is not None:
                raise Conflict(f"machine {room.machine!r} is already room {other.id!r}'s")
            row = session.get(RoomRow, room.id) or RoomRow(id=room.id)
            row.name, row.machine, row.hours = room.name, room.machine, windows_json(room.hours)
            session.add(row)
            self._audit(session, principal, "write", f"/v1/rooms/{room.id}", [])
        return row

    def put_therapist(self, body: TherapistIn, principal: Principal) -> TherapistRow:
        with self._factory.begin() as session:
            row = session.get(TherapistRow, body.id) or TherapistRow(id=body.id)
            row.name, row.shifts = body.name, windows_json(body.shifts)
            session.add(row)
            self._audit(session, principal, "write", f"/v1/therapists/{body.id}", [])
        return row

    def put_proceduralist(self, body: ProceduralistIn, principal: Principal) -> ProceduralistRow:
        with self._factory.begin() as session:
            row = session.get(ProceduralistRow, body.id) or ProceduralistRow(id=body.id)
            row.name, row.specialty = body.name, body.specialty
            row.blocks = windows_json(body.blocks)
            session.add(row)
            self._audit(session, principal, "write", f"/v1/proceduralists/{body.id}", [])
        return row

    def put_device_type(self, body: DeviceTypeIn, principal: Principal) -> DeviceTypeRow:
        with self._factory.begin() as session:
            row = session.get(DeviceTypeRow, body.id) or DeviceTypeRow(id=body.id)
            reserved = len(reserved_units(session, [body.id]).get(body.id, []))
            if body.stock < reserved:
                raise Conflict(
                    f"{reserved} units of {body.id!r} are reserved by bookings; the stock "
                    f"cannot go below that (cancel bookings first)"
                )
            row.name, row.stock, row.fabricated = body.name, body.stock, body.fabricated
            session.add(row)
            self._audit(session, principal, "write", f"/v1/device-types/{body.id}", [])
            # The stock decides ``device_stock``: requests waiting for this device change.
            self._refresh_open(session)
        return row

    def seed(self, resources: Resources) -> bool:
        """Load the seed file into an empty database; False when resources exist already."""
        system = Principal(user="seed", roles=frozenset({"admin"}))
        with self._factory() as session:
            if resources_count(session):
                return False
        for room in resources.rooms:
            self.put_room(room, system)
        for therapist in resources.therapists:
            self.put_therapist(therapist, system)
        for person in resources.proceduralists:
            self.put_proceduralist(person, system)
        for device in resources.device_types:
            self.put_device_type(device, system)
        return True

    # ------------------------------------------------------------ requests

    def create_request(self, body: RequestIn, principal: Principal) -> RequestRow:
        now = self._now()
        with self._factory.begin() as session:
            known = set(session.scalars(select(DeviceTypeRow.id)))
            unknown = [d for d in body.requirements.immobilization if d not in known]
            if unknown:
                raise RuleViolation(
                    f"unknown immobilization device types {unknown}; known: {sorted(known)} "
                    f"(GET /v1/device-types)"
                )
            row = RequestRow(
                id=str(uuid.uuid4()),
                patient_id=body.patient_id,
                patient_name=body.patient_name,
                referring_physician=body.referring_physician,
                treating_physician=body.treating_physician,
                site=body.site,
                urgency=body.urgency,
                earliest_date=body.earliest_date,
                requirements=body.requirements.model_dump(mode="json"),
                notes=body.requirements.notes,
                status="blocked",
                blocking=[],
                created_at=now,
                created_by=principal.user,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            self._refresh(session, row)
            self._change(session, row, None, "requested", None, None, principal)
            self._audit(session, principal, "write", "/v1/simulation-requests", [row.patient_id])
        return row

    def get_request(self, request_id: str, principal: Principal, resource: str) -> RequestRow:
        with self._factory.begin() as session:
            row = self._request(session, request_id)
            self._audit(session, principal, "read", resource, [row.patient_id])
        return row

    def add_consent(
        self, request_id: str, kind: str, signed_at: datetime, principal: Principal
    ) -> RequestRow:
        if kind not in domain.CONSENT_KINDS:
            raise RuleViolation(f"consent kind {kind!r}; use one of {list(domain.CONSENT_KINDS)}")
        now = self._now()
        if signed_at > now + timedelta(minutes=5):
            raise RuleViolation(f"signed_at {signed_at.isoformat()} is in the future")
        with self._factory.begin() as session:
            row = self._open_request(session, request_id)
            session.add(
                ConsentRow(
                    request_id=request_id,
                    kind=kind,
                    signed_at=signed_at,
                    recorded_by=principal.user,
                    recorded_at=now,
                )
            )
            session.flush()
            self._refresh(session, row)
            self._change(session, row, None, f"consent:{kind}", None, None, principal)
            self._audit(
                session,
                principal,
                "write",
                f"/v1/simulation-requests/{request_id}/consents",
                [row.patient_id],
            )
        return row

    def add_lab(
        self, request_id: str, kind: str, value: float, measured_at: datetime, principal: Principal
    ) -> RequestRow:
        if kind != "egfr":
            raise RuleViolation(f"lab kind {kind!r}; the scheduler reads 'egfr' only")
        now = self._now()
        if measured_at > now + timedelta(minutes=5):
            raise RuleViolation(f"measured_at {measured_at.isoformat()} is in the future")
        with self._factory.begin() as session:
            row = self._open_request(session, request_id)
            session.add(
                LabRow(
                    request_id=request_id,
                    kind=kind,
                    value=value,
                    measured_at=measured_at,
                    recorded_by=principal.user,
                    recorded_at=now,
                )
            )
            session.flush()
            self._refresh(session, row)
            self._change(session, row, None, f"lab:{kind}", None, {"value": value}, principal)
            self._audit(
                session,
                principal,
                "write",
                f"/v1/simulation-requests/{request_id}/labs",
                [row.patient_id],
            )
        return row

    def cancel_request(self, request_id: str, reason: str, principal: Principal) -> RequestRow:
        with self._factory.begin() as session:
            row = self._open_request(session, request_id)
            booking = current_booking(session, request_id)
            if booking is not None:
                self._cancel_booking(session, booking, reason, principal)
            row.status, row.cancel_reason, row.updated_at = "cancelled", reason, self._now()
            self._change(session, row, None, "request_cancelled", None, None, principal, reason)
            self._audit(
                session,
                principal,
                "write",
                f"/v1/simulation-requests/{request_id}/cancel",
                [row.patient_id],
            )
        self._on_commit()
        return row

    def _request(self, session: Session, request_id: str) -> RequestRow:
        row = session.get(RequestRow, request_id)
        if row is None:
            raise NotFound(f"no simulation request {request_id!r}; GET /v1/queue lists them")
        return row

    def _open_request(self, session: Session, request_id: str) -> RequestRow:
        row = self._request(session, request_id)
        if row.status in ("completed", "cancelled"):
            raise Conflict(f"simulation request {request_id} is {row.status}")
        return row

    def blocking_of(self, session: Session, row: RequestRow) -> list[str]:
        """What blocks the request now; reads only what its requirements make relevant (a
        booking reads this once more under its transaction)."""
        req = requirements_of(row.requirements)
        site = self.policy.site(row.site)
        consents, labs = [], []
        if req.iv_contrast:
            consents = [
                domain.Consent(c.kind, c.signed_at)
                for c in session.scalars(select(ConsentRow).where(ConsentRow.request_id == row.id))
            ]
            if site.egfr_required:
                labs = [
                    domain.Lab(lab.kind, lab.value, lab.measured_at)
                    for lab in session.scalars(select(LabRow).where(LabRow.request_id == row.id))
                ]
        free: dict[str, int] = {}
        if req.immobilization:
            wanted = set(req.immobilization)
            # (a Result has keys(): dict() would read it as a mapping, hence the comprehension)
            held = {
                d: n
                for d, n in session.execute(
                    select(ReservationRow.device_type, func.count())
                    .where(ReservationRow.active, ReservationRow.device_type.in_(wanted))
                    .group_by(ReservationRow.device_type)
                )
            }
            booking = current_booking(session, row.id)
            own = set(booking.devices) if booking is not None else set()
            stock = session.execute(
                select(DeviceTypeRow.id, DeviceTypeRow.stock).where(DeviceTypeRow.id.in_(wanted))
            )
            free = {d: n - held.get(d, 0) + (1 if d in own else 0) for d, n in stock}
        proceduralists = 0
        if req.needs_procedure:
            proceduralists = session.scalar(select(func.count()).select_from(ProceduralistRow)) or 0
        return domain.blocking(
            req,
            site=site,
            consents=consents,
            labs=labs,
            free_units=free,
            proceduralists=proceduralists,
            rooms=session.scalar(select(func.count()).select_from(RoomRow)) or 0,
            now=self._now(),
            policy=self.policy,
        )

    def _refresh(self, session: Session, row: RequestRow) -> None:
        """Status and blocking reasons of a request not yet booked (a booked one keeps its
        booking; its reasons are shown for information)."""
        row.blocking = self.blocking_of(session, row)
        if row.status in ("blocked", "ready"):
            row.status = "blocked" if row.blocking else "ready"
        row.updated_at = self._now()

    def _refresh_open(self, session: Session) -> None:
        for row in session.scalars(
            select(RequestRow).where(RequestRow.status.in_(("blocked", "ready")))
        ):
            self._refresh(session, row)

    # ------------------------------------------------------------ the world

    def need(self, row: RequestRow, devices: dict[str, domain.DeviceType]) -> slots.Need:
        req = requirements_of(row.requirements)
        policy = self.policy
        return slots.Need(
            minutes=domain.duration_minutes(req, devices, policy.durations),
            therapists=policy.therapists_needed,
            earliest=row.earliest_date,
            procedure_minutes=policy.durations.procedure if req.needs_procedure else None,
            gap_days=policy.site(row.site).implant_gap_days,
        )

    def world(self, session: Session, *, start: datetime, days: int | None = None) -> slots.World:
        """Resources and what is taken from a day before ``start`` to ``days`` after it (the
        search horizon by default)."""
        horizon = min(days or self.policy.horizon_days, self.policy.horizon_days)
        rooms = [
            domain.Room(r.id, r.machine, windows_of(r.hours))
            for r in session.scalars(select(RoomRow).order_by(RoomRow.id))
        ]
        therapists = [
            domain.Staff(t.id, windows_of(t.shifts))
            for t in session.scalars(select(TherapistRow).order_by(TherapistRow.id))
        ]
        proceduralists = [
            domain.Staff(p.id, windows_of(p.blocks))
            for p in session.scalars(select(ProceduralistRow).order_by(ProceduralistRow.id))
        ]
        first = start - timedelta(days=1)
        last = start + timedelta(days=horizon + 2)
        taken: dict[str, list[tuple[datetime, datetime]]] = {}
        for resource, s, e in claims_between(session, first, last):
            taken.setdefault(resource, []).append((s, e))
        return slots.World(
            calendar=self.calendar,
            rooms=rooms,
            therapists=therapists,
            proceduralists=proceduralists,
            busy=slots.Busy(taken),
            step_minutes=self.policy.step_minutes,
            horizon_days=horizon,
        )

    def devices(self, session: Session) -> dict[str, domain.DeviceType]:
        return {
            d.id: domain.DeviceType(d.id, d.stock, d.fabricated)
            for d in session.scalars(select(DeviceTypeRow))
        }

    # ------------------------------------------------------------ booking

    def book(self, request_id: str, proposal: Proposal | None, principal: Principal) -> BookingRow:
        """Book a request: the earliest slot, or ``proposal`` when it breaks no constraint
        (else ``SlotConflict`` naming each one)."""
        for attempt in range(BOOKING_ATTEMPTS):
            try:
                with self._factory.begin() as session:
                    row = self._open_request(session, request_id)
                    if row.status in ("booked",):
                        raise Conflict(
                            f"simulation request {request_id} is booked already; reschedule "
                            f"its booking (POST /v1/bookings/{{id}}/reschedule)"
                        )
                    booking = self._place(session, row, proposal, principal, previous=None)
                    self._audit(
                        session,
                        principal,
                        "write",
                        f"/v1/simulation-requests/{request_id}/book",
                        [row.patient_id],
                    )
                return booking
            except DBAPIError as exc:
                if not _race_lost(exc):
                    raise
                log.info(
                    "booking race lost; searching again",
                    request=request_id,
                    attempt=attempt,
                    error=str(exc.orig),
                )
        raise Conflict("the slot was taken by concurrent bookings several times; try again")

    def reschedule(
        self, booking_id: str, proposal: Proposal | None, reason: str, principal: Principal
    ) -> BookingRow:
        for attempt in range(BOOKING_ATTEMPTS):
            try:
                with self._factory.begin() as session:
                    old = self._booking(session, booking_id)
                    if old.status != "booked":
                        raise Conflict(
                            f"booking {booking_id} is {old.status}; only a booked one moves"
                        )
                    row = self._request(session, old.request_id)
                    before = _booking_view(old)
                    # The old booking lets go of its times (its device units travel with it).
                    release(session, old.id, devices=False)
                    old.status, old.reason, old.updated_at = "cancelled", reason, self._now()
                    self._announce(session, old, row)
                    session.flush()
                    booking = self._place(
                        session,
                        row,
                        proposal,
                        principal,
                        previous=old,
                        reason=reason,
                        before=before,
                    )
                    self._audit(
                        session,
                        principal,
                        "write",
                        f"/v1/bookings/{booking_id}/reschedule",
                        [row.patient_id],
                    )
                return booking
            except DBAPIError as exc:
                if not _race_lost(exc):
                    raise
                log.info(
                    "reschedule race lost; searching again", booking=booking_id, attempt=attempt
                )
        raise Conflict("the slot was taken by concurrent bookings several times; try again")

    def cancel_booking(self, booking_id: str, reason: str, principal: Principal) -> BookingRow:
        with self._factory.begin() as session:
            booking = self._booking(session, booking_id)
            if booking.status == "cancelled":
                raise Conflict(f"booking {booking_id} is cancelled already")
            self._cancel_booking(session, booking, reason, principal)
            row = self._request(session, booking.request_id)
            row.status = "blocked"
            self._refresh(session, row)
            self._audit(
                session, principal, "write", f"/v1/bookings/{booking_id}/cancel", [row.patient_id]
            )
        self._on_commit()
        return booking

    def _cancel_booking(
        self, session: Session, booking: BookingRow, reason: str, principal: Principal
    ) -> None:
        row = self._request(session, booking.request_id)
        before = _booking_view(booking)
        release(session, booking.id, devices=True)
        was_completed = booking.status == "completed"
        booking.status, booking.reason, booking.updated_at = "cancelled", reason, self._now()
        self._announce(session, booking, row)
        if was_completed:
            # A completion recorded in error: billing's charge is retracted by a higher revision.
            booking.revision += 1
            emit(session, self._sim_completed(session, booking, row, cancelled=True))
        self._change(session, row, booking.id, "cancelled", before, None, principal, reason)

    def return_devices(self, booking_id: str, reason: str, principal: Principal) -> BookingRow:
        """Reusable devices (a board, a support) back in stock once the patient no longer
        needs them: the booking's active reservations are released."""
        with self._factory.begin() as session:
            booking = self._booking(session, booking_id)
            held = session.scalars(
                select(ReservationRow).where(
                    ReservationRow.booking_id == booking_id, ReservationRow.active
                )
            ).all()
            if not held:
                raise Conflict(f"booking {booking_id} holds no device")
            for r in held:
                r.active = False
            row = self._request(session, booking.request_id)
            returned = {"devices": sorted(r.device_type for r in held)}
            self._change(
                session, row, booking.id, "devices_returned", None, returned, principal, reason
            )
            self._audit(
                session,
                principal,
                "write",
                f"/v1/bookings/{booking_id}/return-devices",
                [row.patient_id],
            )
        return booking

    def resolve_scan(self, series_uid: str, reason: str, principal: Principal) -> UnbookedScan:
        """Staff dealt with a flagged simulation CT (booked it late, a re-simulation, a test
        scan): it leaves the list, with who and why in the audit log."""
        with self._factory.begin() as session:
            scan = session.get(UnbookedScan, series_uid)
            if scan is None:
                raise NotFound(f"no flagged simulation CT {series_uid!r}")
            if scan.resolved:
                raise Conflict(f"simulation CT {series_uid} was resolved already")
            scan.resolved, scan.resolution = True, reason
            scan.resolved_by, scan.resolved_at = principal.user, self._now()
            self._audit(
                session,
                principal,
                "write",
                f"/v1/unbooked-scans/{series_uid}/resolve",
                [scan.patient_id],
            )
        return scan

    def _booking(self, session: Session, booking_id: str) -> BookingRow:
        booking = session.get(BookingRow, booking_id)
        if booking is None:
            raise NotFound(f"no booking {booking_id!r}")
        return booking

    def _place(
        self,
        session: Session,
        row: RequestRow,
        proposal: Proposal | None,
        principal: Principal,
        *,
        previous: BookingRow | None,
        reason: str | None = None,
        before: dict[str, Any] | None = None,
    ) -> BookingRow:
        now = self._now()
        self._refresh(session, row)
        violations = [slots.Violation(b, _BLOCKING_DETAIL.get(b, b)) for b in row.blocking]
        devices = self.devices(session)
        need = self.need(row, devices)
        slot: slots.Slot | None = None
        if proposal is None:
            # Most bookings land within days: read a few days' claims first, and further ahead
            # only when nothing fits there (a year of history is never read).
            for days in SEARCH_WINDOWS_DAYS:
                world = self.world(session, start=now, days=days)
                if violations:
                    break
                slot = slots.earliest_slot(need, world, now=now)
                if slot is not None or days >= self.policy.horizon_days:
                    break
        else:
            ahead = (proposal.start - now).days + 2
            world = self.world(session, start=min(proposal.start, now), days=max(ahead, 2))
        if proposal is not None:
            room = proposal.room or (world.rooms[0].id if len(world.rooms) == 1 else None)
            if room is None:
                raise RuleViolation("several rooms exist: name the room of the proposed slot")
            if room not in {r.id for r in world.rooms}:
                raise RuleViolation(f"no room {room!r}; GET /v1/rooms lists them")
            slot, broken = slots.check_slot(need, world, start=proposal.start, room=room, now=now)
            violations += broken
        else:
            if slot is None and not violations:
                violations.append(
                    slots.Violation(
                        "no_slot",
                        f"no slot satisfies every constraint within {world.horizon_days} days",
                    )
                )
        if violations or slot is None:
            raise SlotConflict(
                "the request cannot be booked "
                + ("in the proposed slot" if proposal else "")
                + ": "
                + "; ".join(v.constraint for v in violations),
                violations,
            )
        req = requirements_of(row.requirements)
        booking = BookingRow(
            id=str(uuid.uuid4()),
            request_id=row.id,
            patient_id=row.patient_id,
            room_id=slot.room,
            start=slot.start,
            end=slot.end,
            therapists=list(slot.therapists),
            proceduralist_id=slot.procedure.proceduralist if slot.procedure else None,
            procedure_start=slot.procedure.start if slot.procedure else None,
            procedure_end=slot.procedure.end if slot.procedure else None,
            devices=list(req.immobilization),
            status="booked",
            reason=None,
            revision=0,
            series_instance_uids=[],
            created_at=now,
            created_by=principal.user,
            updated_at=now,
        )
        session.add(booking)
        session.flush()
        claims = [(f"room:{slot.room}", slot.start, slot.end)]
        claims += [(f"therapist:{t}", slot.start, slot.end) for t in slot.therapists]
        if slot.procedure:
            p = slot.procedure
            claims.append((f"proceduralist:{p.proceduralist}", p.start, p.end))
        # Two bookings inserting overlapping claims at once would each wait on the other's
        # uncommitted row in the exclusion constraint's index, a deadlock PostgreSQL breaks only
        # after deadlock_timeout (1 s): holding each resource's lock, in sorted order, first makes
        # the later one meet the committed claim and search again at once.
        devices_taken = [] if previous is not None else [f"device:{d}" for d in req.immobilization]
        lock_keys(session, CLAIM_LOCKS, [r for r, _, _ in claims] + devices_taken)
        add_claims(session, booking.id, claims)
        if previous is not None:
            for r in session.scalars(
                select(ReservationRow).where(
                    ReservationRow.booking_id == previous.id, ReservationRow.active
                )
            ):
                r.booking_id = booking.id
        else:
            reserved = reserved_units(session, req.immobilization)
            for device in req.immobilization:
                unit = domain.first_free_unit(devices[device].stock, reserved.get(device, []))
                if unit is None:
                    # Taken by a booking that committed since this one read the stock.
                    raise SlotConflict(
                        "the request cannot be booked: device_stock",
                        [
                            slots.Violation(
                                domain.DEVICE_STOCK, _BLOCKING_DETAIL[domain.DEVICE_STOCK]
                            )
                        ],
                    )
                session.add(
                    ReservationRow(
                        booking_id=booking.id, device_type=device, unit=unit, active=True
                    )
                )
                reserved.setdefault(device, []).append(unit)
        session.flush()
        row.status, row.updated_at = "booked", now
        self._announce(session, booking, row, first=True)
        action = "rescheduled" if previous is not None else "booked"
        self._change(
            session, row, booking.id, action, before, _booking_view(booking), principal, reason
        )
        return booking

    # ------------------------------------------------------------ batch

    def batch(self, *, commit: bool, principal: Principal) -> dict[str, Any]:
        """The coming week for every ready request at once (CP-SAT), against booking them one
        at a time in queue order; ``commit`` books the batch's answer (each through ``book``,
        so every constraint is checked again and the database guards the race)."""
        from .batch import Item, schedule_week

        now = self._now()
        end = now + timedelta(days=7)
        with self._factory() as session:
            rows = session.scalars(
                select(RequestRow)
                .where(RequestRow.status == "ready")
                .order_by(RequestRow.created_at)
            ).all()
            rows = [r for r in rows if not self.blocking_of(session, r)]
            devices = self.devices(session)
            world = self.world(session, start=now)
            items = [
                Item(
                    request_id=r.id,
                    need=self.need(r, devices),
                    weight=self.policy.urgency[r.urgency].weight,
                    requested_at=r.created_at,
                    order=n,
                )
                for n, r in enumerate(rows)
            ]
        limit, workers = self._batch_limits
        result = schedule_week(items, world, now=now, end=end, time_limit_s=limit, workers=workers)
        booked, refused = [], []
        if commit:
            for rid, slot in sorted(result.batch.slots.items(), key=lambda kv: kv[1].start):
                try:
                    b = self.book(rid, Proposal(slot.start, slot.room), principal)
                    booked.append(b.id)
                except (SlotConflict, Conflict) as exc:
                    refused.append({"request_id": rid, "reason": str(exc)})
        return {
            "requests": len(items),
            "week": {"from": now.isoformat(), "to": end.isoformat()},
            "used": result.used,
            "note": result.note,
            "solver_status": result.solver_status,
            "seconds": result.seconds,
            "batch": _outcome(result.batch),
            "one_at_a_time": _outcome(result.one_at_a_time),
            "committed": commit,
            "booked": booked,
            "refused": refused,
        }

    # ------------------------------------------------------------ reads

    def booking_of(self, request_id: str) -> BookingRow | None:
        with self._factory() as session:
            return current_booking(session, request_id)

    def _audit(
        self,
        session: Session,
        principal: Principal,
        action: str,
        resource: str,
        patients: Sequence[str],
    ) -> None:
        record_access(
            session, AuditLog, principal, action=action, resource=resource, patient_ids=patients
        )

    def _change(
        self,
        session: Session,
        row: RequestRow,
        booking_id: str | None,
        action: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        principal: Principal,
        reason: str | None = None,
    ) -> None:
        session.add(
            BookingChange(
                request_id=row.id,
                booking_id=booking_id,
                action=action,
                before=before,
                after=after,
                reason=reason,
                by=principal.user,
                at=self._now(),
            )
        )

    # ------------------------------------------------------------ events in

    def apply(self, event: CloudEvent) -> bool:
        return self.apply_batch([event]) == 1

    def apply_batch(self, events: Sequence[CloudEvent]) -> int:
        """Simulation CTs complete bookings; everything else is ignored. A redelivered event,
        another series of the same scan (a 4D-CT is many) or a re-publication of a grown series
        completes nothing twice."""
        published = False
        with self._factory.begin() as session:
            fresh = claim_events(session, ProcessedEvent, CONSUMER, [e.id for e in events])
            for event in events:
                if event.id in fresh and isinstance(event.data, ImagingAcquired):
                    published |= self._scanned(session, event.data)
        if published:
            self._on_commit()
        return len(fresh)

    def _scanned(self, session: Session, scan: ImagingAcquired) -> bool:
        # A CT from a TPS or an OIS is a copy of a simulation, not one (domain-dicom.md: CBCT
        # vs sim CT is decided by the sender's registry role).
        if scan.classification != "sim_ct" or scan.source.role != "ct_simulator":
            return False
        when = scan.acquired_at or scan.last_acquired_at
        if when is None or not scan.patient.id:
            log.warning(
                "simulation CT without a time or a patient id", series=scan.series_instance_uid
            )
            return self._flag(session, scan)
        day = self.calendar.local_date(when)
        zone = self.calendar.zone
        bookings = bookings_of_patient_on(
            session,
            scan.patient.id,
            local_midnight(day, zone),
            local_midnight(day + timedelta(days=1), zone),
        )
        machine = scan.source.machine or scan.machine
        rooms = {r.id: r.machine for r in session.scalars(select(RoomRow))}
        mine = [b for b in bookings if rooms.get(b.room_id) == machine] or list(bookings)
        if not mine:
            return self._flag(session, scan)
        booking = mine[0]
        if scan.series_instance_uid not in booking.series_instance_uids:
            booking.series_instance_uids = [*booking.series_instance_uids, scan.series_instance_uid]
        if booking.status == "completed":
            return False
        row = self._request(session, booking.request_id)
        booking.status, booking.revision = "completed", booking.revision + 1
        booking.performed_at = when
        booking.study_instance_uid = scan.study_instance_uid
        booking.updated_at = self._now()
        row.status, row.updated_at = "completed", self._now()
        self._consume_fabricated(session, booking)
        self._announce(session, booking, row)
        system = Principal(user="dicom", roles=frozenset())
        self._change(
            session,
            row,
            booking.id,
            "completed",
            None,
            {"series": scan.series_instance_uid},
            system,
        )
        emit(session, self._sim_completed(session, booking, row, cancelled=False))
        return True

    def _consume_fabricated(self, session: Session, booking: BookingRow) -> None:
        """A mask or a vacuum bag made at the simulation is the patient's from then on: its
        unit leaves the stock. A reusable device (a board, a support) stays reserved."""
        for r in session.scalars(
            select(ReservationRow).where(
                ReservationRow.booking_id == booking.id, ReservationRow.active
            )
        ):
            device = session.get(DeviceTypeRow, r.device_type)
            if device is not None and device.fabricated:
                r.active = False
                device.stock = max(0, device.stock - 1)

    def _flag(self, session: Session, scan: ImagingAcquired) -> bool:
        row = session.get(UnbookedScan, scan.series_instance_uid)
        if row is None:
            session.add(
                UnbookedScan(
                    series_instance_uid=scan.series_instance_uid,
                    patient_id=scan.patient.id,
                    patient_name=scan.patient.name,
                    machine=scan.source.machine or scan.machine,
                    study_instance_uid=scan.study_instance_uid,
                    acquired_at=scan.acquired_at,
                    instance_count=scan.instance_count,
                    first_seen=self._now(),
                    resolved=False,
                )
            )
            log.warning(
                "simulation CT without a booking",
                patient=scan.patient.id,
                series=scan.series_instance_uid,
            )
        else:
            row.instance_count = max(row.instance_count, scan.instance_count)
        return False

    def _announce(
        self, session: Session, booking: BookingRow, row: RequestRow, *, first: bool = False
    ) -> None:
        """``rtops.scheduler.booking.changed`` with the booking's next revision (1 when it is
        made), in the transaction that changed it."""
        booking.state_revision = 1 if first else booking.state_revision + 1
        room = session.get(RoomRow, booking.room_id)
        emit(
            session,
            BookingChanged(
                patient=Patient(id=row.patient_id, name=row.patient_name),
                request_id=row.id,
                booking_id=booking.id,
                revision=booking.state_revision,
                status=booking.status,  # type: ignore[arg-type]
                start=booking.start,
                end=booking.end,
                room=booking.room_id,
                machine=room.machine if room else None,
                therapists=tuple(booking.therapists),
                procedure_start=booking.procedure_start,
                proceduralist=booking.proceduralist_id,
                site=row.site,
                urgency=row.urgency,  # type: ignore[arg-type]
                treating_physician=row.treating_physician,
                reason=booking.reason,
                referring_physician=row.referring_physician,
            ),
        )

    def _sim_completed(
        self, session: Session, booking: BookingRow, row: RequestRow, *, cancelled: bool
    ) -> SimCompleted:
        req = requirements_of(row.requirements)
        devices = self.devices(session)
        names = {d.id: d.name for d in session.scalars(select(DeviceTypeRow))}
        performed = booking.performed_at or booking.start
        return SimCompleted(
            patient=Patient(id=row.patient_id, name=row.patient_name),
            request_id=row.id,
            booking_id=booking.id,
            revision=booking.revision,
            service_date=self.calendar.local_date(performed),
            performed_at=performed,
            complexity=domain.complexity(req, devices),
            four_d_ct=req.four_d_ct,
            iv_contrast=req.iv_contrast,
            immobilization=tuple(names.get(d, d) for d in req.immobilization),
            study_instance_uid=booking.study_instance_uid,
            series_instance_uids=tuple(booking.series_instance_uids),
            treating_physician=row.treating_physician,
            site=row.site,
            room=booking.room_id,
            cancelled=cancelled,
        )


_BLOCKING_DETAIL = {
    domain.IV_CONTRAST_CONSENT: "IV contrast needs a signed consent "
    "(POST /v1/simulation-requests/{id}/consents, kind iv_contrast)",
    domain.EGFR: "the site needs a recent eGFR before IV contrast "
    "(POST /v1/simulation-requests/{id}/labs)",
    domain.EGFR_LOW: "the latest eGFR is below the contrast threshold: a physician decides",
    domain.DEVICE_STOCK: "an immobilization device is out of stock",
    domain.NO_PROCEDURALIST: "fiducials / SpaceOAR need a proceduralist and none is set up",
    domain.NO_ROOM: "no CT simulator room is set up",
}


def _outcome(outcome: Any) -> dict[str, Any]:
    return {
        "scheduled": len(outcome.slots),
        "unscheduled": outcome.unscheduled,
        "weighted_wait_hours": outcome.weighted_wait_h,
        "slots": [
            {
                "request_id": rid,
                "start": slot.start.isoformat(),
                "end": slot.end.isoformat(),
                "room": slot.room,
                "therapists": list(slot.therapists),
                "procedure_start": slot.procedure.start.isoformat() if slot.procedure else None,
            }
            for rid, slot in sorted(outcome.slots.items(), key=lambda kv: kv[1].start)
        ],
    }


def _booking_view(b: BookingRow) -> dict[str, Any]:
    return {
        "start": b.start.isoformat(),
        "end": b.end.isoformat(),
        "room": b.room_id,
        "therapists": list(b.therapists),
        "procedure_start": b.procedure_start.isoformat() if b.procedure_start else None,
        "proceduralist": b.proceduralist_id,
    }
