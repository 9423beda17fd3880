"""Tables of the billing service: the facts the events stated (every one kept, so the charges
can be derived again from scratch), the courses and charges derived from them, and the staff
closures of courses."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UtcDateTime, new_metadata
from shared.tables import kit_tables

PATIENT = String(64)
COURSE = String(100)  # "course:" + a plan UID (64)
CHARGE = String(300)  # course|code|occurrence|modifiers


class Base(DeclarativeBase):
    metadata = new_metadata()


class Fact(Base):
    """What one event stated, by kind (``plan``, ``record``, ``summary``, ``assessed``,
    ``simulation``, ``regrouping``, ``note``) and business key with its revision: an event
    applied twice, or a revision already held, inserts nothing. Every revision is kept; the
    rules decide which one counts (the latest, and for an assessed fraction also whether an
    earlier revision showed its review on time)."""

    __tablename__ = "fact"
    __table_args__ = (Index("ix_fact_patient_kind", "patient_id", "kind"),)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(PATIENT)
    event_id: Mapped[str] = mapped_column(String(64))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class PatientGeneration(Base):
    """A counter per patient, raised in the transaction of every write to the patient's
    billing state (facts evaluated, a closure, a kind, an export). The service keeps each
    patient's state in memory between evaluations (``memo.PatientMemos``) and trusts it only
    while the counter is the one it left: any other writer (a replica, the API, the sweep)
    makes it read the patient from the tables again. The raise is also the lock that
    serializes two evaluations of one patient."""

    __tablename__ = "patient_generation"
    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    generation: Mapped[int] = mapped_column(Integer)


class Course(Base):
    """A course as billing grouped it at the last evaluation (derived)."""

    __tablename__ = "course"
    id: Mapped[str] = mapped_column(COURSE, primary_key=True)
    patient_id: Mapped[str] = mapped_column(PATIENT, index=True)
    plan_uids: Mapped[list[str]] = mapped_column(JSON)
    corrected: Mapped[bool] = mapped_column(Boolean, default=False)
    kind: Mapped[str] = mapped_column(String(20))  # as billed (after the SRS/SBRT limits)
    # The kind staff confirmed (``course_kind``), and why the plan facts make the course
    # possibly stereotactic (``assemble.KindScreen``; None when they do not).
    kind_confirmed: Mapped[str | None] = mapped_column(String(20))
    kind_candidate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), index=True)  # open / closed
    fractions_delivered: Mapped[int] = mapped_column(Integer)
    first_session: Mapped[date | None] = mapped_column(Date)
    last_session: Mapped[date | None] = mapped_column(Date)
    closures: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # Occurrences no rule codes (reported, never guessed) and charges a bundle dropped.
    unresolved: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    bundled: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # When the row last changed: an evaluation that changes nothing of the course leaves it.
    evaluated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CourseClosure(Base):
    """Staff closed a course (``POST /v1/courses/{id}/close``); kept under the course id it was
    given, so a closure follows the course as long as its first plan does."""

    __tablename__ = "course_closure"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    course_id: Mapped[str] = mapped_column(COURSE, index=True)
    patient_id: Mapped[str] = mapped_column(PATIENT, index=True)
    closed_on: Mapped[date] = mapped_column(Date)
    closed_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CourseKindRow(Base):
    """The kind staff confirmed for a course (``POST /v1/courses/{id}/kind``): one row per
    course id, kept under that id like a closure, so it follows the course through a regrouping
    as long as its first plan does."""

    __tablename__ = "course_kind"
    course_id: Mapped[str] = mapped_column(COURSE, primary_key=True)
    patient_id: Mapped[str] = mapped_column(PATIENT, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # conventional / srs / sbrt
    set_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ChargeRow(Base):
    """A charge by the domain's deterministic id. ``revision`` counts the versions published as
    ``rtops.billing.charge.posted``; ``digest`` is the last one's content, so an unchanged
    charge is not published again. A charge the facts stop giving is kept ``removed`` (its
    revisions continue if it comes back)."""

    __tablename__ = "charge"
    __table_args__ = (Index("ix_charge_patient_date", "patient_id", "service_date"),)
    id: Mapped[str] = mapped_column(CHARGE, primary_key=True)
    patient_id: Mapped[str] = mapped_column(PATIENT)
    course_id: Mapped[str] = mapped_column(COURSE, index=True)
    cpt: Mapped[str] = mapped_column(String(10))
    modifiers: Mapped[list[str]] = mapped_column(JSON)
    units: Mapped[int] = mapped_column(Integer)
    service_date: Mapped[date] = mapped_column(Date, index=True)
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(10))  # ready / hold
    hold_reason: Mapped[str | None] = mapped_column(String(100))
    evidence: Mapped[list[str]] = mapped_column(JSON)
    rule: Mapped[str] = mapped_column(String(100))
    citation: Mapped[str] = mapped_column(Text)
    rules_version: Mapped[str] = mapped_column(String(40))
    revision: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    exported: Mapped[bool] = mapped_column(Boolean, default=False)
    exported_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ClaimFileRow(Base):
    """An imported claim file (``POST /v1/claims``), accepted whole; the same bytes twice are
    refused (``sha256``)."""

    __tablename__ = "claim_file"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str | None] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(20))
    lines: Mapped[int] = mapped_column(Integer)
    remittances: Mapped[int] = mapped_column(Integer)
    uploaded_by: Mapped[str] = mapped_column(String(200))
    uploaded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ClaimLineRow(Base):
    """One claim line of an imported file (``services.billing.domain.ClaimLine``)."""

    __tablename__ = "claim_line"
    __table_args__ = (Index("ix_claim_line_patient_date", "patient_id", "service_date"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("claim_file.id"), index=True)
    claim_id: Mapped[str] = mapped_column(String(100))
    patient_id: Mapped[str] = mapped_column(PATIENT)
    service_date: Mapped[date] = mapped_column(Date, index=True)
    cpt: Mapped[str] = mapped_column(String(10))
    modifiers: Mapped[list[str]] = mapped_column(JSON)
    units: Mapped[int] = mapped_column(Integer)
    line: Mapped[int | None] = mapped_column(Integer)


class RemittanceRow(Base):
    """A service line an 835 remittance denied or adjusted; it joins the discrepancy report."""

    __tablename__ = "remittance_line"
    __table_args__ = (Index("ix_remittance_line_patient_date", "patient_id", "service_date"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("claim_file.id"), index=True)
    claim_id: Mapped[str] = mapped_column(String(100))
    claim_status: Mapped[str] = mapped_column(String(10))
    patient_id: Mapped[str] = mapped_column(PATIENT)
    service_date: Mapped[date] = mapped_column(Date)
    cpt: Mapped[str] = mapped_column(String(10))
    modifiers: Mapped[list[str]] = mapped_column(JSON)
    billed_units: Mapped[int] = mapped_column(Integer)
    paid_units: Mapped[int] = mapped_column(Integer)
    charged_amount: Mapped[str] = mapped_column(String(30))  # Decimal as text, exact
    paid_amount: Mapped[str] = mapped_column(String(30))
    denied: Mapped[bool] = mapped_column(Boolean)
    adjustments: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    remark_codes: Mapped[list[str]] = mapped_column(JSON)
    line: Mapped[int | None] = mapped_column(Integer)


Outbox, ProcessedEvent, AuditLog = kit_tables(Base)
