"""``shared.locks.lock_keys``: on PostgreSQL a second transaction cannot take a key the first
holds until it ends; on SQLite it is a no-op (one writer)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.locks import lock_keys


def test_a_held_key_is_refused_to_another_transaction(factory: sessionmaker[Session]) -> None:
    with factory.begin() as first:
        lock_keys(first, "documents.patient", ["P1", "P2", "P1"])
        if first.get_bind().dialect.name != "postgresql":
            return  # SQLite: nothing to hold
        key = func.hashtextextended("documents.patient:P1", 0)
        other_key = func.hashtextextended("documents.patient:P3", 0)
        with factory.begin() as second:
            assert second.scalar(select(func.pg_try_advisory_xact_lock(key))) is False
            assert second.scalar(select(func.pg_try_advisory_xact_lock(other_key))) is True
    with factory.begin() as third:  # released with the first transaction
        assert third.scalar(select(func.pg_try_advisory_xact_lock(key))) is True
