"""Per-key locks held to the end of the caller's transaction, so that two replicas of a
service never derive the same entity (a patient) at the same time: on PostgreSQL transaction
advisory locks (``pg_advisory_xact_lock``), taken in sorted order so that two transactions
asking for overlapping keys cannot deadlock; on SQLite nothing (its one writer already
serializes transactions)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session


def lock_keys(session: Session, namespace: str, keys: Iterable[str]) -> None:
    """Block until this transaction holds the lock of every ``namespace:key``."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted(set(keys)):
        session.execute(
            select(func.pg_advisory_xact_lock(func.hashtextextended(f"{namespace}:{key}", 0)))
        )
