"""The documents service's tables. Plans, treatment records and regroupings are the facts;
``plan_version`` is derived from them (per patient, in the transaction that changed them);
documents, their files, notes and letters are records staff or devices filed."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime, new_metadata
from shared.tables import kit_tables

UID = 64


class Base(DeclarativeBase):
    metadata = new_metadata()


Outbox, ProcessedEvent, AuditLog = kit_tables(Base)


class PlanRow(Base):
    """The latest revision of each RT Plan received (``snapshot``: ``domain.PlanSnapshot``)."""

    __tablename__ = "plan"
    uid: Mapped[str] = mapped_column(String(UID), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date)
    revision: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)


class PlanRevisionRow(Base):
    """Every revision of a plan: its approval status history and what each re-send changed."""

    __tablename__ = "plan_revision"
    uid: Mapped[str] = mapped_column(String(UID), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sha256: Mapped[str] = mapped_column(String(64))
    approval_status: Mapped[str | None] = mapped_column(String(16))
    reviewer: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    changes: Mapped[list[str]] = mapped_column(JSON, default=list)


class VersionRow(Base):
    """Derived: each course plan's place in its course's version history (the state behind
    ``rtops.documents.plan.versioned``, whose ``revision`` is kept here)."""

    __tablename__ = "plan_version"
    plan_uid: Mapped[str] = mapped_column(String(UID), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    course_id: Mapped[str] = mapped_column(String(80), index=True)
    number: Mapped[int] = mapped_column(Integer)
    predecessor_uid: Mapped[str | None] = mapped_column(String(UID))
    predecessor_inferred: Mapped[bool] = mapped_column(Boolean, default=False)
    concurrent_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    superseded_by: Mapped[str | None] = mapped_column(String(UID))
    changes: Mapped[list[str]] = mapped_column(JSON, default=list)
    revision: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    # Retracted (the plan was re-sent as a QA plan): kept, so a later version row continues
    # its revisions.
    removed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class RecordRow(Base):
    """A treatment record (latest revision) and whether it has been judged for a flag."""

    __tablename__ = "treatment_record"
    uid: Mapped[str] = mapped_column(String(UID), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    plan_uid: Mapped[str | None] = mapped_column(String(UID), index=True)
    treated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    delivered: Mapped[bool] = mapped_column(Boolean)
    fraction_numbers: Mapped[list[int]] = mapped_column(JSON, default=list)
    evaluated_revision: Mapped[int | None] = mapped_column(Integer)
    flag_reasons: Mapped[list[str] | None] = mapped_column(JSON)


class ReferralRow(Base):
    """A simulation booking's referral, from ``rtops.scheduler.booking.changed`` (latest
    revision per booking): the treatment-start letter goes to this referring physician rather
    than to the plan's Referring Physician's Name."""

    __tablename__ = "referral"
    booking_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(10))
    start: Mapped[datetime] = mapped_column(UtcDateTime)
    referring_physician: Mapped[str | None] = mapped_column(String(200))


class RegroupingRow(Base):
    __tablename__ = "regrouping"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    plan_uids: Mapped[list[str]] = mapped_column(JSON)
    course_id: Mapped[str | None] = mapped_column(String(80))
    corrected_by: Mapped[str] = mapped_column(String(200))
    corrected_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str | None] = mapped_column(Text)


class FileRow(Base):
    """Document bytes by SHA-256: immutable, stored once however often they are filed."""

    __tablename__ = "document_file"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class DocumentRow(Base):
    """A filed document: uploaded, or an Encapsulated PDF from the SCP. Never changed; filing
    the same (plan, type) again is the next revision."""

    __tablename__ = "document"
    __table_args__ = (
        UniqueConstraint("plan_uid", "doc_type", "revision", name="uq_document_revision"),
        UniqueConstraint("dicom_uid", "dicom_revision", name="uq_document_dicom"),
        Index("ix_document_patient", "patient_id", "filed_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    plan_uid: Mapped[str | None] = mapped_column(String(UID), index=True)
    course_id: Mapped[str | None] = mapped_column(String(80))
    week: Mapped[str | None] = mapped_column(String(8))
    doc_type: Mapped[str] = mapped_column(String(40))
    revision: Mapped[int] = mapped_column(Integer)
    title: Mapped[str | None] = mapped_column(String(200))
    author: Mapped[str | None] = mapped_column(String(200))
    signed_by: Mapped[str | None] = mapped_column(String(200))
    signed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    filename: Mapped[str | None] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(10))  # upload | dicom
    dicom_uid: Mapped[str | None] = mapped_column(String(UID))
    dicom_revision: Mapped[int | None] = mapped_column(Integer)
    filed_by: Mapped[str] = mapped_column(String(200))
    filed_at: Mapped[datetime] = mapped_column(UtcDateTime)

    @property
    def effective_at(self) -> datetime:
        """When the document counts from: its signature, else its filing."""
        return self.signed_at or self.filed_at


class NoteRow(Base):
    """A signed weekly note (management note, physics check), entered or uploaded."""

    __tablename__ = "note"
    __table_args__ = (Index("ix_note_course", "course_id", "week"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    course_id: Mapped[str] = mapped_column(String(80))
    week: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(40))
    author: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    visit_date: Mapped[date | None] = mapped_column(Date)
    face_to_face: Mapped[bool] = mapped_column(Boolean, default=True)
    text: Mapped[str | None] = mapped_column(Text)
    document_id: Mapped[str | None] = mapped_column(String(36))
    voided: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_by: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LetterRow(Base):
    """The referring-provider letter of a course: drafted once, approved by a physician, sent by
    the transmission adapter (retried until it is)."""

    __tablename__ = "letter"
    __table_args__ = (Index("ix_letter_patient", "patient_id", "drafted_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    course_id: Mapped[str] = mapped_column(String(80), unique=True)
    plan_uids: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), index=True)  # draft | approved | sent
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    drafted_at: Mapped[datetime] = mapped_column(UtcDateTime)
    approved_by: Mapped[str | None] = mapped_column(String(200))
    approved_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    transport: Mapped[str | None] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    sent_reference: Mapped[str | None] = mapped_column(String(500))
