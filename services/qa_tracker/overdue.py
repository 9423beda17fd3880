"""The overdue rule, once in Python and once in SQL, side by side so they cannot drift apart.

A fraction's stored verdict never says "overdue": it says ``pending`` with a ``due_at``, and a
pending review is overdue once the clock has passed ``due_at`` (at the due second itself it is
still on time). Reads decide it against their own "now"; tests/qa_tracker/test_overdue.py
checks on the real database that both forms agree around the due second.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, or_

PENDING = "pending"
OVERDUE = "overdue"


def is_overdue(stored_status: str, due_at: datetime | None, now: datetime) -> bool:
    return stored_status == PENDING and due_at is not None and due_at < now


def status_at(stored_status: str, due_at: datetime | None, now: datetime) -> str:
    """The status a reader sees at ``now``."""
    return OVERDUE if is_overdue(stored_status, due_at, now) else stored_status


def overdue_sql(status: Any, due_at: Any, now: datetime) -> ColumnElement[bool]:
    """``is_overdue`` over the given columns."""
    return (status == PENDING) & (due_at < now)


def status_sql(status: Any, due_at: Any, now: datetime) -> ColumnElement[str]:
    """``status_at`` over the given columns."""
    return case((overdue_sql(status, due_at, now), OVERDUE), else_=status)


def status_is_sql(status: Any, due_at: Any, wanted: str, now: datetime) -> ColumnElement[bool]:
    """``status_at(...) == wanted``, written so the database can use its indexes."""
    if wanted == OVERDUE:
        return overdue_sql(status, due_at, now)
    if wanted == PENDING:
        return (status == PENDING) & or_(due_at.is_(None), due_at >= now)
    return status == wanted  # type: ignore[no-any-return]
