"""The scheduler's database: resources (rooms, therapists, proceduralists, device types),
simulation requests with their consents and labs, bookings, and what each booking holds.

No double booking is the database's promise, not the application's: every time a booking
holds a room, a therapist or a proceduralist is a ``booking_claim`` row, and two active claims
of one resource never overlap: on PostgreSQL an exclusion constraint (``btree_gist``), on
SQLite triggers, which run inside SQLite's single writer, so a check and its insert cannot
interleave with another writer's. A device reservation holds one numbered unit of a device
type, and a partial unique index keeps a unit to one active reservation (both backends).
Those constraints are added by the migration (``0001``); the models here describe the rest."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.db import UtcDateTime, new_metadata
from shared.tables import kit_tables

PATIENT = String(64)
ID = String(64)


class Base(DeclarativeBase):
    metadata = new_metadata()


Outbox, ProcessedEvent, AuditLog = kit_tables(Base)


class RoomRow(Base):
    """A CT simulator room, tied to its device by the SCP registry's ``machine`` name."""

    __tablename__ = "room"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    machine: Mapped[str] = mapped_column(String(100), unique=True)
    hours: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{weekday, start, end}]


class TherapistRow(Base):
    __tablename__ = "therapist"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    shifts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class ProceduralistRow(Base):
    __tablename__ = "proceduralist"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    specialty: Mapped[str] = mapped_column(String(100))
    blocks: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class DeviceTypeRow(Base):
    __tablename__ = "device_type"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    stock: Mapped[int] = mapped_column(Integer)
    fabricated: Mapped[bool] = mapped_column(Boolean, default=False)


class RequestRow(Base):
    """A simulation order."""

    __tablename__ = "simulation_request"
    __table_args__ = (Index("ix_simulation_request_status_created", "status", "created_at"),)
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(PATIENT, index=True)
    patient_name: Mapped[str] = mapped_column(String(200))
    referring_physician: Mapped[str] = mapped_column(String(200))
    treating_physician: Mapped[str] = mapped_column(String(200))
    site: Mapped[str] = mapped_column(String(100))
    urgency: Mapped[str] = mapped_column(String(10))
    earliest_date: Mapped[date | None] = mapped_column(Date)
    requirements: Mapped[dict[str, Any]] = mapped_column(JSON)
    notes: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10))
    blocking: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    cancel_reason: Mapped[str | None] = mapped_column(Text)


class ConsentRow(Base):
    __tablename__ = "consent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("simulation_request.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    signed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LabRow(Base):
    __tablename__ = "lab"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("simulation_request.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    value: Mapped[float] = mapped_column(Float)
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class BookingRow(Base):
    __tablename__ = "booking"
    __table_args__ = (
        Index("ix_booking_patient_start", "patient_id", "start"),
        # One live booking per request, even when two staff book it at once.
        Index(
            "uq_booking_live_request",
            "request_id",
            unique=True,
            sqlite_where=text("status != 'cancelled'"),
            postgresql_where=text("status != 'cancelled'"),
        ),
    )
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("simulation_request.id"), index=True)
    patient_id: Mapped[str] = mapped_column(PATIENT)
    room_id: Mapped[str] = mapped_column(ForeignKey("room.id"))
    start: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    end: Mapped[datetime] = mapped_column(UtcDateTime)
    therapists: Mapped[list[str]] = mapped_column(JSON)
    proceduralist_id: Mapped[str | None] = mapped_column(String(64))
    procedure_start: Mapped[datetime | None] = mapped_column(UtcDateTime)
    procedure_end: Mapped[datetime | None] = mapped_column(UtcDateTime)
    devices: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10))  # booked / completed / cancelled
    reason: Mapped[str | None] = mapped_column(Text)
    # sim.completed: the revision last published (0: never), what the scan was.
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # booking.changed: the revision last published.
    state_revision: Mapped[int] = mapped_column(Integer, default=1)
    performed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uids: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ClaimRow(Base):
    """A stretch of time a booking holds a resource (``room:ID``, ``therapist:ID``,
    ``proceduralist:ID``); an inactive claim (cancelled, rescheduled away) holds nothing."""

    __tablename__ = "booking_claim"
    __table_args__ = (
        # By end, not start: what can overlap [s, e) ends after s, so the no-overlap check
        # (SQLite's trigger) and the search read what is still to come, never the year of
        # past claims before it.
        Index("ix_booking_claim_resource_end", "resource", "end"),
        Index("ix_booking_claim_end", "end"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    booking_id: Mapped[str] = mapped_column(ForeignKey("booking.id"), index=True)
    resource: Mapped[str] = mapped_column(String(100))
    start: Mapped[datetime] = mapped_column(UtcDateTime)
    end: Mapped[datetime] = mapped_column(UtcDateTime)
    active: Mapped[bool] = mapped_column(Boolean)


class ReservationRow(Base):
    """One unit of a device type held for a booking until it is cancelled."""

    __tablename__ = "device_reservation"
    __table_args__ = (
        Index(
            "uq_device_reservation_active_unit",
            "device_type",
            "unit",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    booking_id: Mapped[str] = mapped_column(ForeignKey("booking.id"), index=True)
    device_type: Mapped[str] = mapped_column(ForeignKey("device_type.id"))
    unit: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean)


class BookingChange(Base):
    """Who booked, moved, cancelled or completed what, when and why (the activity log
    schedulers ask for, field-notes 4.4 [G3])."""

    __tablename__ = "booking_change"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    booking_id: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(20))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    by: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class UnbookedScan(Base):
    """A simulation CT from a CT simulator with no booking for its patient that day: flagged
    for staff, never dropped."""

    __tablename__ = "unbooked_scan"
    series_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(PATIENT, index=True)
    patient_name: Mapped[str | None] = mapped_column(String(200))
    machine: Mapped[str | None] = mapped_column(String(100))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    acquired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    instance_count: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolution: Mapped[str | None] = mapped_column(Text)


# ---------------------------------------------------------------- queries


def claims_between(
    session: Session, start: datetime, end: datetime
) -> list[tuple[str, datetime, datetime]]:
    """Active claims overlapping [start, end), as plain tuples (the slot search's ``Busy``)."""
    rows = session.execute(
        select(ClaimRow.resource, ClaimRow.start, ClaimRow.end).where(
            ClaimRow.active, ClaimRow.start < end, ClaimRow.end > start
        )
    )
    return [(r, s, e) for r, s, e in rows]


def reserved_units(
    session: Session, device_types: Iterable[str] | None = None
) -> dict[str, list[int]]:
    """Units held by bookings, by device type (of ``device_types`` only, when given)."""
    out: dict[str, list[int]] = {}
    query = select(ReservationRow.device_type, ReservationRow.unit).where(ReservationRow.active)
    if device_types is not None:
        query = query.where(ReservationRow.device_type.in_(set(device_types)))
    for device, unit in session.execute(query):
        out.setdefault(device, []).append(unit)
    return out


def active_claims_of(session: Session, booking_id: str) -> Sequence[ClaimRow]:
    return session.scalars(
        select(ClaimRow).where(ClaimRow.booking_id == booking_id, ClaimRow.active)
    ).all()


def release(session: Session, booking_id: str, *, devices: bool) -> None:
    for claim in active_claims_of(session, booking_id):
        claim.active = False
    if devices:
        for r in session.scalars(
            select(ReservationRow).where(
                ReservationRow.booking_id == booking_id, ReservationRow.active
            )
        ):
            r.active = False
    session.flush()


def add_claims(
    session: Session, booking_id: str, claims: Iterable[tuple[str, datetime, datetime]]
) -> None:
    session.add_all(
        ClaimRow(booking_id=booking_id, resource=r, start=s, end=e, active=True)
        for r, s, e in claims
    )
    session.flush()


def current_booking(session: Session, request_id: str) -> BookingRow | None:
    return session.scalars(
        select(BookingRow)
        .where(BookingRow.request_id == request_id, BookingRow.status != "cancelled")
        .order_by(BookingRow.created_at.desc())
        .limit(1)
    ).first()


def bookings_of_patient_on(
    session: Session, patient_id: str, start: datetime, end: datetime
) -> Sequence[BookingRow]:
    return session.scalars(
        select(BookingRow)
        .where(
            BookingRow.patient_id == patient_id,
            BookingRow.start >= start,
            BookingRow.start < end,
            BookingRow.status != "cancelled",
        )
        .order_by(BookingRow.start)
    ).all()


def resources_count(session: Session) -> int:
    return sum(
        session.scalar(select(func.count()).select_from(t)) or 0
        for t in (RoomRow, TherapistRow, ProceduralistRow, DeviceTypeRow)
    )
