"""Databases for tests: a service's own, migrated and dropped afterwards, or scratch tables
of a test's own metadata. On PostgreSQL each is a schema under the test's prefix; on SQLite a
file under the test's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy.orm import Session, sessionmaker

from shared.db import drop_schema, ensure_schema, make_engine, migrate, session_factory
from shared.outbox import outbox_info
from shared.settings import RtopsSettings
from shared.tables import KitTables

SERVICES = Path(__file__).resolve().parents[1] / "services"


@contextmanager
def service_database(
    settings: RtopsSettings, service: str, tables: KitTables
) -> Iterator[sessionmaker[Session]]:
    """``service``'s database migrated to head, with sessions that know its outbox (as the
    running service's ``Runtime`` builds them); dropped afterwards."""
    engine = make_engine(settings, service)
    migrate(engine, settings, service, SERVICES / service / "migrations")
    try:
        yield session_factory(engine, **outbox_info(tables.outbox, service))
    finally:
        drop_schema(engine, settings, service)
        engine.dispose()


@contextmanager
def scratch_database(
    settings: RtopsSettings, name: str, metadata: MetaData
) -> Iterator[sessionmaker[Session]]:
    """Tables of ``metadata`` in a database (or PostgreSQL schema) of their own, dropped after."""
    engine = make_engine(settings, name)
    ensure_schema(engine, settings, name)
    metadata.create_all(engine)
    try:
        yield session_factory(engine)
    finally:
        drop_schema(engine, settings, name)
        engine.dispose()


def drop_service_schema(settings: RtopsSettings, service: str) -> None:
    engine = make_engine(settings, service)
    try:
        drop_schema(engine, settings, service)
    finally:
        engine.dispose()


def sub_database(base_settings: dict[str, object], tag: str) -> dict[str, object]:
    """Settings for one more database in the same test (a schema or a SQLite file of its own)."""
    return {
        **base_settings,
        "database_schema_prefix": f"{base_settings['database_schema_prefix']}{tag}_",
        "var_dir": base_settings["var_dir"] / tag,  # type: ignore[operator]
    }
