"""The scheduler under test: its database (SQLite, or PostgreSQL with ``RTOPS_DATABASE_URL``)
seeded with the development resources, a service with a settable clock, and the REST app."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from services.scheduler.app import SERVICE, TABLES, create_app, load_resources
from services.scheduler.service import SchedulerService
from services.scheduler.settings import DEFAULT_RESOURCES, SchedulerSettings
from shared.auth import issue_dev_token
from shared.calendar import clinic_calendar
from shared.runtime import Runtime
from tests.databases import service_database
from tests.events import Clock, at

Db = tuple[SchedulerSettings, sessionmaker[Session]]
Auth = Callable[..., dict[str, str]]
# Monday 30 November 2026, 07:00 in New York: the Monday after Thanksgiving.
NOW = at("2026-11-30", "07:00")


def make_service(
    settings: SchedulerSettings, factory: sessionmaker[Session], clock: Clock
) -> SchedulerService:
    return SchedulerService(
        factory=factory,
        calendar=clinic_calendar(settings),
        policy=settings.policy(),
        clock=clock,
    )


@pytest.fixture
def scheduler_db(base_settings: dict[str, object]) -> Iterator[Db]:
    settings = SchedulerSettings(**base_settings)  # type: ignore[arg-type]
    with service_database(settings, SERVICE, TABLES) as factory:
        yield settings, factory


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def service(scheduler_db: Db, clock: Clock) -> SchedulerService:
    settings, factory = scheduler_db
    service = make_service(settings, factory, clock)
    service.seed(load_resources(DEFAULT_RESOURCES))
    return service


@pytest.fixture
def factory(scheduler_db: Db) -> sessionmaker[Session]:
    return scheduler_db[1]


@pytest.fixture
def app(scheduler_db: Db, service: SchedulerService) -> FastAPI:
    settings, factory = scheduler_db
    runtime = Runtime.create(SERVICE, settings, TABLES, engine=factory.kw["bind"])
    return create_app(settings, runtime=runtime, service=service, background=False)


@pytest.fixture
def auth(scheduler_db: Db) -> Auth:
    settings, _ = scheduler_db

    def headers(role: str = "scheduler", user: str = "sam") -> dict[str, str]:
        token = issue_dev_token(settings, user=user, roles=[role])
        return {"Authorization": f"Bearer {token}"}

    return headers
