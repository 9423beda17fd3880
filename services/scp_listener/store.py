"""Tables of the SCP (the object index, image series awaiting their event, the durability
mark, and the kit's outbox, inbox and audit log) and the queries its API and pages run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Index,
    Integer,
    Select,
    String,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.db import UtcDateTime, new_metadata
from shared.tables import kit_tables


class Base(DeclarativeBase):
    metadata = new_metadata()


class DicomObject(Base):
    """One stored revision of one SOP instance. The same UID with other content is a new
    revision; the same UID with the same content is the same row (re-sends change nothing)."""

    __tablename__ = "dicom_object"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "revision"),
        UniqueConstraint("sop_instance_uid", "sha256"),
        # The arrivals page: a kind within dates. (A kind alone keeps its own index, which
        # lists it newest first without a sort.)
        Index("ix_dicom_object_class_received", "sop_class_uid", "received_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Looked up through the unique constraint above, which starts with it.
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    acquired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    approval: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ImageSeries(Base):
    """An image series whose imaging event is (re)published once it has been quiet."""

    __tablename__ = "image_series"
    series_instance_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    # No index: the quiet sweep finds the few dirty rows by ``dirty``, and an index here
    # would be written for every instance (migration 0008).
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    dirty: Mapped[bool] = mapped_column(Boolean, index=True)
    published_count: Mapped[int] = mapped_column(Integer, default=0)


class ArrivalHour(Base):
    """Objects received per device, SOP class and UTC hour: what the arrivals and devices pages
    count, kept by the ingest in the object's transaction, so a page counts a few thousand
    rows instead of a year's millions of objects."""

    __tablename__ = "arrival_hour"
    calling_ae: Mapped[str] = mapped_column(String(16), primary_key=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True, index=True)
    objects: Mapped[int] = mapped_column(Integer)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DurabilityMark(Base):
    """One row, rewritten by each confirmation of the reconciliation (reconcile.py) in a
    transaction whose commit waits for its flush: the write that makes every earlier relaxed
    index commit durable, and a record of when that last happened."""

    __tablename__ = "durability_mark"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    confirmed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    confirmed_objects: Mapped[int] = mapped_column(BigInteger)


def hour_of(instant: datetime) -> datetime:
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# The SCP consumes no events: its inbox stays empty, but every service has the same three.
Outbox, ProcessedEvent, AuditLog = kit_tables(Base)


def received_objects(
    *,
    patient_id: str | None = None,
    calling_ae: str | None = None,
    sop_class_uid: str | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
) -> Select[tuple[DicomObject]]:
    """Stored objects matching every filter given (the API pages them newest first)."""
    query = select(DicomObject)
    for column, value in (
        (DicomObject.patient_id, patient_id),
        (DicomObject.calling_ae, calling_ae),
        (DicomObject.sop_class_uid, sop_class_uid),
    ):
        if value:
            query = query.where(column == value)
    if received_from:
        query = query.where(DicomObject.received_at >= received_from)
    if received_to:
        query = query.where(DicomObject.received_at < received_to)
    return query


def object_revision(session: Session, uid: str, revision: int | None = None) -> DicomObject | None:
    """One stored revision of an object: ``revision``, else the latest."""
    query = (
        select(DicomObject)
        .where(DicomObject.sop_instance_uid == uid)
        .order_by(DicomObject.revision.desc())
        .limit(1)
    )
    if revision is not None:
        query = query.where(DicomObject.revision == revision)
    return session.scalars(query).first()


@dataclass(frozen=True)
class ArrivalCount:
    """How many objects one device sent of one SOP class, and when the last one arrived."""

    calling_ae: str
    sop_class_uid: str
    objects: int
    last_received_at: datetime


def arrival_counts(
    session: Session,
    *,
    patient_id: str | None = None,
    calling_ae: str | None = None,
    sop_class_uid: str | None = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
) -> list[ArrivalCount]:
    """The objects ``received_objects`` would list for the same filters, counted by device and
    SOP class. From the hourly counts; a patient filter (not in them) or a bound that is not a
    whole UTC hour (a clinic zone half an hour off UTC) counts the objects themselves."""
    bounds = [b for b in (received_from, received_to) if b is not None]
    if patient_id or any(b != hour_of(b) for b in bounds):
        return _counted_objects(
            session,
            received_objects(
                patient_id=patient_id,
                calling_ae=calling_ae,
                sop_class_uid=sop_class_uid,
                received_from=received_from,
                received_to=received_to,
            ),
        )
    query = select(
        ArrivalHour.calling_ae,
        ArrivalHour.sop_class_uid,
        func.sum(ArrivalHour.objects).label("objects"),
        func.max(ArrivalHour.last_received_at).label("last"),
    )
    for column, value in (
        (ArrivalHour.calling_ae, calling_ae),
        (ArrivalHour.sop_class_uid, sop_class_uid),
    ):
        if value:
            query = query.where(column == value)
    if received_from:
        query = query.where(ArrivalHour.hour >= received_from)
    if received_to:
        query = query.where(ArrivalHour.hour < received_to)
    rows = session.execute(
        query.group_by(ArrivalHour.calling_ae, ArrivalHour.sop_class_uid).order_by(
            ArrivalHour.calling_ae, ArrivalHour.sop_class_uid
        )
    ).all()
    return [ArrivalCount(r.calling_ae, r.sop_class_uid, r.objects, _aware(r.last)) for r in rows]


def _counted_objects(session: Session, objects: Select[tuple[DicomObject]]) -> list[ArrivalCount]:
    matching = objects.subquery()
    rows = session.execute(
        select(
            matching.c.calling_ae,
            matching.c.sop_class_uid,
            func.count().label("objects"),
            func.max(matching.c.received_at).label("last"),
        )
        .group_by(matching.c.calling_ae, matching.c.sop_class_uid)
        .order_by(matching.c.calling_ae, matching.c.sop_class_uid)
    ).all()
    return [ArrivalCount(r.calling_ae, r.sop_class_uid, r.objects, _aware(r.last)) for r in rows]


@dataclass(frozen=True)
class DeviceActivity:
    last_received_at: datetime
    objects_since: int  # objects received at or after the ``since`` asked for (today)


def device_activity(session: Session, since: datetime) -> dict[str, DeviceActivity]:
    """Calling AE title -> when it last sent an object, and how many it sent since ``since``
    (counted from the hour ``since`` falls in)."""
    rows = session.execute(
        select(
            ArrivalHour.calling_ae,
            func.max(ArrivalHour.last_received_at).label("last"),
            func.coalesce(
                func.sum(ArrivalHour.objects).filter(ArrivalHour.hour >= hour_of(since)), 0
            ).label("recent"),
        ).group_by(ArrivalHour.calling_ae)
    ).all()
    return {r.calling_ae: DeviceActivity(_aware(r.last), r.recent) for r in rows}


def _aware(value: datetime) -> datetime:
    """An aggregate bypasses the column's type on some databases: a naive value is UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
