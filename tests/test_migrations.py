"""Each service's migrations build exactly the schema its models describe, and re-running them
(every service start does) changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from services.scp_listener.store import Base as ScpBase
from shared.db import alembic_config, drop_schema, make_engine, migrate
from shared.settings import RtopsSettings

REPO = Path(__file__).resolve().parents[1]
SERVICE = "scp_listener"
MIGRATIONS = REPO / "services" / SERVICE / "migrations"


@pytest.fixture
def settings(base_settings: dict[str, Any]) -> RtopsSettings:
    return RtopsSettings(**base_settings)


@pytest.fixture
def engine(settings: RtopsSettings) -> Iterator[Engine]:
    engine = make_engine(settings, SERVICE)
    try:
        yield engine
    finally:
        drop_schema(engine, settings, SERVICE)
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), ScpBase.metadata)


def test_migrating_twice_is_idempotent(engine: Engine, settings: RtopsSettings) -> None:
    head = ScriptDirectory.from_config(alembic_config(MIGRATIONS, engine)).get_current_head()
    assert head is not None

    migrate(engine, settings, SERVICE, MIGRATIONS)
    tables = set(inspect(engine).get_table_names())
    assert current_revision(engine) == head

    migrate(engine, settings, SERVICE, MIGRATIONS)  # a restart of the service

    assert current_revision(engine) == head
    assert set(inspect(engine).get_table_names()) == tables
    assert set(ScpBase.metadata.tables) <= tables


def test_migrated_schema_matches_the_models(engine: Engine, settings: RtopsSettings) -> None:
    migrate(engine, settings, SERVICE, MIGRATIONS)

    diff = schema_diff(engine)

    # A non-empty diff means a model changed without a migration: generate one with
    # `alembic revision --autogenerate` against a database at head, and review it.
    assert diff == [], "\n".join(map(str, diff))


def test_the_comparison_notices_a_missing_table(engine: Engine, settings: RtopsSettings) -> None:
    # Guards the test above: compare_metadata must be looking at the migrated schema.
    migrate(engine, settings, SERVICE, MIGRATIONS)
    with engine.begin() as conn:
        ScpBase.metadata.tables["outbox"].drop(conn)

    diff = schema_diff(engine)

    assert [(d[0], d[1].name) for d in diff if d[0] == "add_table"] == [("add_table", "outbox")]
