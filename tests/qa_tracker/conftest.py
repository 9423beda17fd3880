from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from tests.events import Clock, at
from tests.qa_tracker.factories import make_service, qa_database


@pytest.fixture
def qa_db(base_settings: dict[str, object]) -> Iterator[tuple[QaSettings, sessionmaker[Session]]]:
    with qa_database(base_settings) as db:
        yield db


@pytest.fixture
def clock() -> Clock:
    return Clock(at("2026-11-23", "12:00"))


@pytest.fixture
def service(qa_db: tuple[QaSettings, sessionmaker[Session]], clock: Clock) -> QaService:
    settings, factory = qa_db
    return make_service(settings, factory, clock)
