"""The tables every service's database has besides its own: the outbox (events to publish),
the processed-event inbox, and the audit log. A service declares its base and gets them:

    class Base(DeclarativeBase):
        metadata = new_metadata()

    Outbox, ProcessedEvent, AuditLog = kit_tables(Base)
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy.orm import DeclarativeBase

from shared.audit import AuditMixin
from shared.outbox import OutboxMixin, ProcessedEventMixin


class KitTables(NamedTuple):
    outbox: type[OutboxMixin]
    processed_event: type[ProcessedEventMixin]
    audit_log: type[AuditMixin]


def kit_tables(base: type[DeclarativeBase]) -> KitTables:
    """Map the kit's three tables on ``base`` (once per service)."""
    outbox = type("Outbox", (OutboxMixin, base), {"__module__": base.__module__})
    inbox = type("ProcessedEvent", (ProcessedEventMixin, base), {"__module__": base.__module__})
    audit = type("AuditLog", (AuditMixin, base), {"__module__": base.__module__})
    return KitTables(outbox, inbox, audit)  # type: ignore[arg-type]
