"""The QA tracker under test: its database and a service with a settable clock. Event
builders are in ``tests/events.py``, scratch databases in ``tests/databases.py``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.app import SERVICE, TABLES
from services.qa_tracker.policy import load_policy
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from tests.databases import service_database
from tests.events import Clock


@contextmanager
def qa_database(
    base_settings: dict[str, object],
) -> Iterator[tuple[QaSettings, sessionmaker[Session]]]:
    """A migrated QA tracker database of the test's own (dropped afterwards on PostgreSQL)."""
    settings = QaSettings(**base_settings)  # type: ignore[arg-type]
    with service_database(settings, SERVICE, TABLES) as factory:
        yield settings, factory


def make_service(
    settings: QaSettings,
    factory: sessionmaker[Session],
    clock: Clock,
    policy: domain.ReviewPolicy | None = None,
) -> QaService:
    return QaService(
        factory=factory, policy=policy or load_policy(None, zone="America/New_York"), clock=clock
    )


def policy_with(**changes: Any) -> domain.ReviewPolicy:
    """The default policy (America/New_York) with ``changes``."""
    return replace(load_policy(None, zone="America/New_York"), **changes)
