"""The billing service under test: its database (SQLite, or PostgreSQL with
``RTOPS_DATABASE_URL``) and a service with a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.billing.app import SERVICE, TABLES
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from tests.databases import service_database
from tests.events import Clock, at

Db = tuple[BillingSettings, sessionmaker[Session]]


@contextmanager
def billing_database(base_settings: dict[str, object]) -> Iterator[Db]:
    settings = BillingSettings(**base_settings)  # type: ignore[arg-type]
    with service_database(settings, SERVICE, TABLES) as factory:
        yield settings, factory


def make_service(
    settings: BillingSettings, factory: sessionmaker[Session], clock: Clock
) -> BillingService:
    return BillingService(
        factory=factory,
        rules=settings.rules(),
        settings=settings.engine_settings(),
        payer=settings.payer(),
        gap_days=settings.billing_course_gap_days,
        clock=clock,
    )


@pytest.fixture
def billing_db(base_settings: dict[str, object]) -> Iterator[Db]:
    with billing_database(base_settings) as db:
        yield db


@pytest.fixture
def clock() -> Clock:
    return Clock(at("2026-03-20", "12:00"))


@pytest.fixture
def service(billing_db: Db, clock: Clock) -> BillingService:
    settings, factory = billing_db
    return make_service(settings, factory, clock)
