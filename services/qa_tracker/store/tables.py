"""Tables of the QA tracker: what the DICOM events said, the fractions derived from them, and
the reviews staff documented."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime, new_metadata
from shared.tables import kit_tables

UID = String(64)


class Base(DeclarativeBase):
    metadata = new_metadata()


class Plan(Base):
    __tablename__ = "plan"
    plan_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, server_default="1")
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str | None] = mapped_column(String(64))
    site: Mapped[str | None] = mapped_column(String(200))
    technique: Mapped[str | None] = mapped_column(String(32))
    physician: Mapped[str | None] = mapped_column(String(200))


class TreatmentRecord(Base):
    """One RT Beams Treatment Record (latest revision), as the event described it."""

    __tablename__ = "treatment_record"
    # A rebuild reads one patient's records of some days.
    __table_args__ = (Index("ix_treatment_record_patient_time", "patient_id", "started_at"),)
    record_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(200))
    plan_uid: Mapped[str | None] = mapped_column(UID)
    fraction_group: Mapped[int | None] = mapped_column(Integer)
    fraction_numbers: Mapped[list[int]] = mapped_column(JSON)
    machine: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime] = mapped_column(UtcDateTime)
    delivered: Mapped[bool] = mapped_column(Boolean)
    partial: Mapped[bool] = mapped_column(Boolean)
    therapist_override: Mapped[bool] = mapped_column(Boolean)


class ImagingSeries(Base):
    """One image series taken before treatment (a CBCT, kV pair or MV portal), matched to
    the fraction it prepared (``fraction_key``)."""

    __tablename__ = "imaging_session"
    __table_args__ = (Index("ix_imaging_session_patient_time", "patient_id", "acquired_at"),)
    series_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    machine: Mapped[str | None] = mapped_column(String(64))
    classification: Mapped[str] = mapped_column(String(16))
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime)
    instance_count: Mapped[int] = mapped_column(Integer)
    approvals: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # The fraction this series prepared (always one of the same patient's): found through the
    # patient's series (ix_imaging_session_patient_time), not an index of its own, which every
    # match would update at a random place (migration 0004).
    fraction_key: Mapped[str | None] = mapped_column(String(300))


class Registration(Base):
    __tablename__ = "registration"
    __table_args__ = (Index("ix_registration_patient_time", "patient_id", "content_at"),)
    sop_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(64))
    machine: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    content_at: Mapped[datetime] = mapped_column(UtcDateTime)
    creator: Mapped[str | None] = mapped_column(String(200))
    moving_series: Mapped[list[str]] = mapped_column(JSON)
    translation_mm: Mapped[list[float] | None] = mapped_column(JSON)
    rotation_deg: Mapped[list[float] | None] = mapped_column(JSON)
    # The series matched (always one of the same patient's): not indexed, see fraction_key.
    session_uid: Mapped[str | None] = mapped_column(UID)


class RegistrationSeries(Base):
    """The series each registration names (its ``moving_series``), to find the registrations
    of a series that arrived after them."""

    __tablename__ = "registration_series"
    series_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    sop_uid: Mapped[str] = mapped_column(UID, primary_key=True)


class Fraction(Base):
    """A treated fraction: (patient, plan, fraction group, fraction number), possibly spread
    over several treatment records. Derived: rebuilt from the tables above on every event."""

    __tablename__ = "fraction"
    # The review worklist's order (store/reads.py, _worklist_rows), read a page at a time and
    # counted in the index, everyone's and a physician's.
    __table_args__ = (
        Index("ix_fraction_worklist", "review_status", "imaged", "due_at", "treated_at", "id"),
        Index(
            "ix_fraction_worklist_physician",
            *("physician", "review_status", "imaged", "due_at", "treated_at", "id"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(200))
    plan_uid: Mapped[str | None] = mapped_column(UID)
    fraction_number: Mapped[int | None] = mapped_column(Integer)
    machine: Mapped[str | None] = mapped_column(String(64), index=True)
    treated_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    ended_at: Mapped[datetime] = mapped_column(UtcDateTime)
    partial: Mapped[bool] = mapped_column(Boolean)
    therapist_override: Mapped[bool] = mapped_column(Boolean)
    next_fraction_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    imaged: Mapped[bool] = mapped_column(Boolean)
    physician: Mapped[str | None] = mapped_column(String(200), index=True)
    technique: Mapped[str | None] = mapped_column(String(32))
    site: Mapped[str | None] = mapped_column(String(200))
    translation_mm: Mapped[list[float] | None] = mapped_column(JSON)
    rotation_deg: Mapped[list[float] | None] = mapped_column(JSON)
    # Classifications of the imaging that prepared it, sorted (e.g. ["cbct"]).
    imaging: Mapped[list[str] | None] = mapped_column(JSON)
    # Derived from the rules at the last change; "overdue" is decided at read time.
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    review_status: Mapped[str] = mapped_column(String(20), index=True)
    override_required: Mapped[bool] = mapped_column(Boolean)
    override_documented: Mapped[bool] = mapped_column(Boolean)
    rejected: Mapped[bool] = mapped_column(Boolean)
    overdue_notified: Mapped[bool] = mapped_column(Boolean, default=False)


class ReviewRow(Base):
    """A documented review of a fraction, through the API or adopted from an RT Image
    approval (then it follows the image to whatever fraction the image prepares)."""

    __tablename__ = "review"
    __table_args__ = (UniqueConstraint("source", "source_ref"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    fraction_id: Mapped[int] = mapped_column(ForeignKey("fraction.id"), index=True)
    decision: Mapped[str] = mapped_column(String(10))
    comment: Mapped[str | None] = mapped_column(Text)
    override_reason: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    physician: Mapped[str] = mapped_column(String(200))
    # When rtops recorded it (the server's clock), beside the time the review says it happened.
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # A review dated further back than the policy's backdate tolerance: why, and the system
    # it was first documented in (e.g. "ARIA", "paper chart"). Migration 0006.
    backdate_reason: Mapped[str | None] = mapped_column(Text)
    documented_in: Mapped[str | None] = mapped_column(String(200))
    # The stable identity (shared.auth.Principal.user) that recorded it; None for a device's
    # approval and for reviews recorded before migration 0006.
    recorded_by: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(20))  # "api" or "dicom_approval"
    source_ref: Mapped[str] = mapped_column(String(100))  # request id or RT Image SOP UID


class FractionRevision(Base):
    """The last ``rtops.qa.fraction.assessed`` published per fraction key: its revision (part
    of the event id) and a digest of its verdict, so an unchanged verdict is not published
    again. No foreign key: it outlives the fraction, so a fraction removed and later derived
    again continues its revisions instead of reusing an id."""

    __tablename__ = "fraction_revision"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))


Outbox, ProcessedEvent, AuditLog = kit_tables(Base)
