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

from services.billing.store import Base as BillingBase
from services.documents.store import Base as DocumentsBase
from services.qa_tracker.store import Base as QaBase
from services.scheduler.store import Base as SchedulerBase
from services.scp_listener.store import Base as ScpBase
from shared.db import alembic_config, drop_schema, make_engine, migrate
from shared.settings import RtopsSettings

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "scp_listener": ScpBase.metadata,
    "qa_tracker": QaBase.metadata,
    "billing": BillingBase.metadata,
    "scheduler": SchedulerBase.metadata,
    "documents": DocumentsBase.metadata,
}


@pytest.fixture(params=sorted(MODELS))
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(base_settings: dict[str, Any]) -> RtopsSettings:
    return RtopsSettings(**base_settings)


@pytest.fixture
def engine(settings: RtopsSettings, service: str) -> Iterator[Engine]:
    engine = make_engine(settings, service)
    try:
        yield engine
    finally:
        drop_schema(engine, settings, service)
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_diff(engine: Engine, service: str) -> list[Any]:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), MODELS[service])


def migrations(service: str) -> Path:
    return REPO / "services" / service / "migrations"


def head_revision(engine: Engine, service: str) -> str:
    head = ScriptDirectory.from_config(
        alembic_config(migrations(service), engine)
    ).get_current_head()
    assert head is not None
    return head


def assert_migrates_to_the_models(engine: Engine, settings: RtopsSettings, service: str) -> None:
    """Migrate twice (every start migrates): the database is at head, no table appears or
    goes the second time, and the schema is exactly what the models describe."""
    migrate(engine, settings, service, migrations(service))
    tables = set(inspect(engine).get_table_names())
    assert current_revision(engine) == head_revision(engine, service)
    migrate(engine, settings, service, migrations(service))
    assert current_revision(engine) == head_revision(engine, service)
    assert set(inspect(engine).get_table_names()) == tables
    diff = schema_diff(engine, service)
    # A non-empty diff means a model changed without a migration: generate one with
    # `alembic revision --autogenerate` against a database at head, and review it.
    assert diff == [], "\n".join(map(str, diff))


def test_migrating_twice_gives_exactly_the_models(
    engine: Engine, settings: RtopsSettings, service: str
) -> None:
    assert_migrates_to_the_models(engine, settings, service)


def test_the_comparison_notices_a_missing_table(
    engine: Engine, settings: RtopsSettings, service: str
) -> None:
    # Guards the test above: compare_metadata must be looking at the migrated schema.
    migrate(engine, settings, service, migrations(service))
    with engine.begin() as conn:
        MODELS[service].tables["outbox"].drop(conn)

    diff = schema_diff(engine, service)

    assert [(d[0], d[1].name) for d in diff if d[0] == "add_table"] == [("add_table", "outbox")]
