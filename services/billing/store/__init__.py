"""The billing service's database: the tables (``tables``) and the queries (``queries``)."""

from services.billing.store.tables import (
    AuditLog,
    Base,
    ChargeRow,
    Course,
    CourseClosure,
    Fact,
    Outbox,
    ProcessedEvent,
)

__all__ = [
    "AuditLog",
    "Base",
    "ChargeRow",
    "Course",
    "CourseClosure",
    "Fact",
    "Outbox",
    "ProcessedEvent",
]
