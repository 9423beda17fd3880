"""The QA tracker's database: the tables (``tables``), the queries a rebuild reads
(``rebuild_queries``) and the queries the API and the sweeps read (``reads``)."""

from services.qa_tracker.store.tables import (
    AuditLog,
    Base,
    Fraction,
    FractionRevision,
    ImagingSeries,
    Outbox,
    Plan,
    ProcessedEvent,
    Registration,
    RegistrationSeries,
    ReviewRow,
    TreatmentRecord,
)

__all__ = [
    "AuditLog",
    "Base",
    "Fraction",
    "FractionRevision",
    "ImagingSeries",
    "Outbox",
    "Plan",
    "ProcessedEvent",
    "Registration",
    "RegistrationSeries",
    "ReviewRow",
    "TreatmentRecord",
]
