"""The hourly arrival counts the SCP's pages read (``arrival_hour``) agree with the objects
themselves: filled from the stored objects by migration 0004, kept by every ingest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener import sop
from services.scp_listener.app import SERVICE
from services.scp_listener.store import (
    DicomObject,
    _counted_objects,
    arrival_counts,
    device_activity,
    received_objects,
)
from shared.db import make_engine, migrate, session_factory
from tests import dicom_factories as f
from tests.support import MIGRATIONS, drop_test_schema, scp_rest_app, scp_settings
from tests.ui.test_scp_pages import ingest

T0 = datetime(2026, 11, 23, 5, 30, tzinfo=UTC)  # Monday 00:30 New York
FILTERS = [
    {},
    {"calling_ae": "TRUEBEAM1"},
    {"sop_class_uid": sop.CT_IMAGE},
    {"received_from": datetime(2026, 11, 23, 5, tzinfo=UTC)},  # New York midnight, in UTC
    {
        "calling_ae": "CTSIM1",
        "received_from": datetime(2026, 11, 23, 5, tzinfo=UTC),
        "received_to": datetime(2026, 11, 24, 5, tzinfo=UTC),
    },
    # A bound off the hour (a zone half an hour off UTC): the objects themselves are counted.
    {"received_from": datetime(2026, 11, 23, 7, 30, tzinfo=UTC)},
    {"patient_id": "P2"},
]


def exact(session: Session, **filters: object) -> list[tuple[str, str, int]]:
    counted = _counted_objects(session, received_objects(**filters))  # type: ignore[arg-type]
    return [(c.calling_ae, c.sop_class_uid, c.objects) for c in counted]


def from_hours(session: Session, **filters: object) -> list[tuple[str, str, int]]:
    counted = arrival_counts(session, **filters)  # type: ignore[arg-type]
    return [(c.calling_ae, c.sop_class_uid, c.objects) for c in counted]


@pytest.fixture
def factory(base_settings: dict[str, object]) -> Iterator[sessionmaker[Session]]:
    settings = scp_settings(base_settings)
    engine = make_engine(settings, SERVICE)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()
        drop_test_schema(settings)


def test_migration_fills_the_counts_from_the_stored_objects(
    base_settings: dict[str, object], factory: sessionmaker[Session]
) -> None:
    settings = scp_settings(base_settings)
    engine = factory.kw["bind"]
    migrate(engine, settings, SERVICE, MIGRATIONS, revision="0003")
    rows = []
    for i in range(60):  # every 37 minutes over a day and a half, three devices, two kinds
        rows.append(
            {
                "sop_instance_uid": f"1.2.3.{i}",
                "revision": 1,
                "sop_class_uid": sop.CT_IMAGE if i % 2 else sop.RT_BEAMS_RECORD,
                "sha256": f"{i:064d}",
                "storage_key": f"k{i}",
                "size": 1,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "patient_id": f"P{i % 3}",
                "calling_ae": ("TRUEBEAM1", "CTSIM1", "TPS1")[i % 3],
                "received_at": T0 + timedelta(minutes=37 * i),
            }
        )
    with factory.begin() as session:
        session.execute(insert(DicomObject), rows)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    with factory() as session:
        for filters in FILTERS:
            assert from_hours(session, **filters) == exact(session, **filters), filters
        activity = device_activity(session, datetime(2026, 11, 24, 5, tzinfo=UTC))
    last = max(r["received_at"] for r in rows if r["calling_ae"] == "TPS1")
    assert activity["TPS1"].last_received_at == last
    tuesday = [r for r in rows if r["calling_ae"] == "TPS1" and r["received_at"].day == 24]
    expected = sum(1 for r in tuesday if r["received_at"] >= datetime(2026, 11, 24, 5, tzinfo=UTC))
    assert activity["TPS1"].objects_since == expected


def test_every_ingest_counts_once(base_settings: dict[str, object], tmp_path: Path) -> None:
    with scp_rest_app(scp_settings(base_settings)) as app:
        linac = app.state.device_registry.devices["TRUEBEAM1"].as_source()
        paths = [
            f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=n), tmp_path / f"{n}.dcm")
            for n in (1, 2, 3)
        ]
        for path in paths:
            ingest(app, path, sop.RT_BEAMS_RECORD, linac)
        # A re-sent object is the same object: it is not counted again.
        again = app.state.ingestor.ingest(
            paths[0],
            sop_class_uid=sop.RT_BEAMS_RECORD,
            sop_instance_uid="",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            source=linac,
        )
        assert not again.created
        with app.state.session_factory() as session:
            assert from_hours(session) == [("TRUEBEAM1", sop.RT_BEAMS_RECORD, 3)]
            assert from_hours(session) == exact(session)
            today = device_activity(session, datetime.now(UTC) - timedelta(hours=1))
        assert today["TRUEBEAM1"].objects_since == 3
