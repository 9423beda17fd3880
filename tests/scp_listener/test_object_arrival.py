"""An object's index row, its arrival count and its image series' mark are written by one
INSERT into ``object_arrival`` (migration 0007); an image's is its own transaction, on an
engine whose commits do not wait for their flush, so SQLite's write lock is never held between
two Python statements and nothing is switched per object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event, inspect, select

from services.scp_listener import sop
from services.scp_listener.app import SERVICE
from services.scp_listener.service import Ingestor, Status
from services.scp_listener.store import ArrivalHour, DicomObject, ImageSeries
from shared.db import alembic_config, make_engine, migrate
from tests import dicom_factories as f
from tests.scp_listener.test_reconcile import EXPLICIT_LE, LINAC
from tests.support import MIGRATIONS, scp_rest_app, scp_settings


@pytest.fixture
def ingestor(base_settings: dict[str, object]) -> Iterator[Ingestor]:
    with scp_rest_app(scp_settings(base_settings)) as app:
        yield app.state.ingestor


def _store(ingestor: Ingestor, ds: Any, path: Path) -> None:
    f.write(ds, path)
    outcome = ingestor.ingest(
        path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=EXPLICIT_LE,
        source=LINAC,
    )
    assert outcome.status == Status.SUCCESS, outcome


def _statements(engine: Engine) -> tuple[list[str], list[Any]]:
    """Record every statement of this engine, and SQLite's autocommit flag at each."""
    statements: list[str] = []
    autocommit: list[Any] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split("(")[0].strip())
        autocommit.append(getattr(cursor.connection, "isolation_level", "n/a"))

    event.listen(engine, "before_cursor_execute", record)
    return statements, autocommit


def test_an_image_is_indexed_by_one_statement_in_its_own_transaction(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    first, second = f.cbct_series(n_slices=2)
    _store(ingestor, first, tmp_path / "1.dcm")
    images = ingestor._image_engine
    statements, autocommit = _statements(images)
    others, _ = _statements(ingestor._factory.kw["bind"])
    _store(ingestor, second, tmp_path / "2.dcm")
    # The revisions' lookup and the write: nothing else, no switch of the commit's flush.
    assert [s.split()[0] for s in statements] == ["SELECT", "INSERT"]
    assert statements[1] == "INSERT INTO object_arrival"
    assert others == []
    with images.connect() as conn:
        if images.dialect.name == "sqlite":
            # None: the sqlite3 module issues no BEGIN, the statement commits itself.
            assert autocommit[1] is None
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        else:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"


def test_a_record_and_its_event_commit_together(ingestor: Ingestor, tmp_path: Path) -> None:
    statements, autocommit = _statements(ingestor._factory.kw["bind"])
    _store(ingestor, f.treatment_record(plan_uid="1.2.3"), tmp_path / "r.dcm")
    writes = [s for s in statements if not s.startswith(("SELECT", "PRAGMA", "SET LOCAL"))]
    assert writes[0] == "INSERT INTO object_arrival"
    assert any(s.startswith("INSERT INTO outbox") for s in writes[1:])
    if ingestor._factory.kw["bind"].dialect.name == "sqlite":
        assert autocommit[statements.index("INSERT INTO object_arrival")] is not None


def test_the_insert_writes_the_row_the_count_and_the_series(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    series = f.cbct_series(n_slices=3)
    for i, ds in enumerate(series):
        _store(ingestor, ds, tmp_path / f"{i}.dcm")
    _store(ingestor, f.treatment_record(plan_uid="1.2.3"), tmp_path / "r.dcm")
    with ingestor._factory() as session:
        rows = session.scalars(select(DicomObject).order_by(DicomObject.id)).all()
        counts = {a.sop_class_uid: a.objects for a in session.scalars(select(ArrivalHour)).all()}
        marks = session.scalars(select(ImageSeries)).all()
    assert [r.sop_instance_uid for r in rows[:3]] == [str(ds.SOPInstanceUID) for ds in series]
    assert rows[3].sop_class_uid == sop.RT_BEAMS_RECORD
    assert rows[0].acquired_at is not None and rows[0].storage_key
    assert counts == {sop.CT_IMAGE: 3, sop.RT_BEAMS_RECORD: 1}
    assert len(marks) == 1
    mark = marks[0]
    assert mark.series_instance_uid == str(series[0].SeriesInstanceUID)
    assert mark.dirty and mark.published_count == 0
    assert mark.last_received_at == rows[2].received_at  # the latest instance's
    assert mark.facts["patient"]["id"] == str(series[0].PatientID)
    assert mark.facts["source"]["ae_title"] == LINAC.ae_title
    assert "acquired_at" not in mark.facts
    json.dumps(mark.facts)


def test_a_series_row_gone_is_made_again_from_the_facts_this_process_kept(
    ingestor: Ingestor, tmp_path: Path
) -> None:
    """The facts a process keeps for a series are the ones a new row needs: a second instance
    after its row went (a restored database, say) writes the row again, whole."""
    first, second = f.cbct_series(n_slices=2)
    _store(ingestor, first, tmp_path / "1.dcm")
    with ingestor._factory() as session, session.begin():
        kept = session.scalars(select(ImageSeries)).one().facts
        session.query(ImageSeries).delete()
    _store(ingestor, second, tmp_path / "2.dcm")
    with ingestor._factory() as session:
        assert session.scalars(select(ImageSeries)).one().facts == kept


def test_migration_0007_goes_down_and_up(base_settings: dict[str, object]) -> None:
    settings = scp_settings(base_settings)
    with scp_rest_app(settings):
        engine = make_engine(settings, SERVICE)
        try:
            assert "object_arrival" in inspect(engine).get_view_names()
            command.downgrade(alembic_config(MIGRATIONS, engine), "0006")
            assert "object_arrival" not in inspect(engine).get_view_names()
            migrate(engine, settings, SERVICE, MIGRATIONS)
            assert "object_arrival" in inspect(engine).get_view_names()
        finally:
            engine.dispose()
