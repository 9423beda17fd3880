"""The overdue rule's Python and SQL forms agree, on the real database (SQLite or
PostgreSQL), one second before, at and after the due time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.overdue import OVERDUE, PENDING, status_at
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Fraction
from services.qa_tracker.store.reads import fraction_has_status, fraction_status
from tests.events import at

DUE = at("2026-11-24", "08:00")
STORED = ["pending", "reviewed_on_time", "reviewed_late", "not_imaged"]


def _fraction(key: str, status: str, due: object) -> Fraction:
    return Fraction(
        key=key,
        patient_id="P",
        treated_at=at("2026-11-23", "08:00"),
        ended_at=at("2026-11-23", "08:08"),
        partial=False,
        therapist_override=False,
        imaged=status != "not_imaged",
        review_status=status,
        due_at=due,
        override_required=False,
        override_documented=False,
        rejected=False,
        overdue_notified=False,
    )


@pytest.mark.parametrize("offset_s", [-1, 0, 1])
def test_python_and_sql_agree_around_the_due_second(
    offset_s: int, qa_db: tuple[QaSettings, sessionmaker[Session]]
) -> None:
    now = DUE + timedelta(seconds=offset_s)
    with qa_db[1].begin() as session:
        for status in STORED:
            session.add(_fraction(f"{status}|due", status, DUE))
        session.add(_fraction("pending|no due", PENDING, None))
    with qa_db[1]() as session:
        rows = session.execute(select(Fraction, fraction_status(now))).all()
        in_sql = {f.key: status for f, status in rows}
        in_python = {f.key: status_at(f.review_status, f.due_at, now) for f, _ in rows}
        by_filter = {
            wanted: set(
                session.scalars(select(Fraction.key).where(fraction_has_status(wanted, now)))
            )
            for wanted in [*STORED, OVERDUE]
        }
    assert in_sql == in_python
    assert in_python["pending|due"] == (OVERDUE if offset_s > 0 else PENDING)
    for wanted, keys in by_filter.items():
        assert keys == {k for k, s in in_python.items() if s == wanted}, wanted
