"""The billing service under test: its database (SQLite, or PostgreSQL with
``RTOPS_DATABASE_URL``) and a service with a settable clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from services.billing.app import SERVICE, TABLES, api_app
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from shared.auth import issue_dev_token
from tests.databases import service_database
from tests.events import Clock, at

Db = tuple[BillingSettings, sessionmaker[Session]]
Auth = Callable[..., dict[str, str]]


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


# ---------------------------------------------------------------- the REST app


@pytest.fixture
def app(billing_db: Db, service: BillingService) -> FastAPI:
    settings, factory = billing_db
    return api_app(settings, factory, service)


@pytest.fixture
def auth(billing_db: Db) -> Auth:
    settings, _ = billing_db

    def headers(role: str = "billing", user: str = "bea") -> dict[str, str]:
        token = issue_dev_token(settings, user=user, roles=[role])
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def factory(billing_db: Db) -> sessionmaker[Session]:
    return billing_db[1]
