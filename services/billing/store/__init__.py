"""The billing service's database: the tables (``tables``) and the queries (``queries``)."""

from services.billing.store.tables import (
    AuditLog,
    Base,
    ChargeRow,
    ClaimFileRow,
    ClaimLineRow,
    Course,
    CourseClosure,
    CourseKindRow,
    Fact,
    Outbox,
    PatientGeneration,
    ProcessedEvent,
    RemittanceRow,
)

__all__ = [
    "AuditLog",
    "Base",
    "ChargeRow",
    "ClaimFileRow",
    "ClaimLineRow",
    "Course",
    "CourseClosure",
    "CourseKindRow",
    "Fact",
    "Outbox",
    "PatientGeneration",
    "ProcessedEvent",
    "RemittanceRow",
]
