"""Image series published when the association that delivered them is released (issue 14):
one event per series per release, a later instance re-publishes, an aborted association
leaves the series to the quiet window, and a release racing the sweep publishes once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import delete

from services.scp_listener.service import Ingestor
from services.scp_listener.store import ImageSeries
from shared.events import SourceDevice
from tests import dicom_factories as f
from tests.support import (
    RunningScp,
    await_events,
    pynetdicom_store,
    read_for_sending,
    scp_rest_app,
    scp_settings,
    storescu,
    stream_events,
    wait_for,
)

IMAGING = "rtops.dicom.imaging.acquired"
# Far longer than any test: only a release can publish within it.
NEVER_QUIET = {"scp_series_quiet_s": 3600.0}
LINAC = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1")


def imaging(scp: RunningScp) -> list[tuple[str, int]]:
    return [
        (e.data.series_instance_uid, e.data.instance_count)  # type: ignore[attr-defined]
        for e in stream_events(scp.settings)
        if e.type == IMAGING
    ]


def test_release_publishes_each_series_once_within_two_seconds(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    scp = start_scp(**NEVER_QUIET)
    cbct = f.cbct_series(n_slices=4)
    kv = f.cbct_series(n_slices=2)
    paths = f.write_series(cbct, tmp_path / "a") + f.write_series(kv, tmp_path / "b")
    record = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "rt.dcm")
    assert pynetdicom_store(scp.dicom_port, [*paths, record]) == [0] * 7
    released = time.monotonic()
    wait_for(lambda: len(imaging(scp)) >= 2, 5.0, 0.02, "two imaging events")
    assert time.monotonic() - released < 2.0  # the target, p99 in the QA API
    await_events(scp, 3)
    assert sorted(imaging(scp)) == sorted(
        [(str(cbct[0].SeriesInstanceUID), 4), (str(kv[0].SeriesInstanceUID), 2)]
    )

    # A later instance re-publishes its series (and only it); a re-send publishes nothing.
    late = f.cbct_series(n_slices=5, series_uid=str(cbct[0].SeriesInstanceUID))[4]
    late.StudyInstanceUID = cbct[0].StudyInstanceUID
    late_path = f.write(late, tmp_path / "late.dcm")
    assert pynetdicom_store(scp.dicom_port, [late_path]) == [0]
    await_events(scp, 4)
    assert imaging(scp)[-1] == (str(cbct[0].SeriesInstanceUID), 5)
    assert pynetdicom_store(scp.dicom_port, [*paths, late_path]) == [0] * 7
    await_events(scp, 4)


def test_release_of_a_dcmtk_association_publishes_its_cbct(
    start_scp: Callable[..., RunningScp], dcmtk: dict[str, str], tmp_path: Path
) -> None:
    scp = start_scp(**NEVER_QUIET)
    cbct = f.cbct_series(n_slices=5)
    sent = storescu(dcmtk["storescu"], scp.dicom_port, f.write_series(cbct, tmp_path))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    released = time.monotonic()
    wait_for(lambda: bool(imaging(scp)), 5.0, 0.02, "the imaging event")
    assert time.monotonic() - released < 2.0
    await_events(scp, 1)
    assert imaging(scp) == [(str(cbct[0].SeriesInstanceUID), 5)]


def test_aborted_association_leaves_its_series_to_a_later_release(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    scp = start_scp(**NEVER_QUIET)
    cbct = f.cbct_series(n_slices=3)
    paths = f.write_series(cbct, tmp_path)
    ae = AE(ae_title="TRUEBEAM1")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(read_for_sending(p)).Status) for p in paths[:2]]
    assoc.abort()
    assert statuses == [0, 0]
    time.sleep(1.0)
    assert imaging(scp) == []

    # The console sends the whole series again: two duplicates and the third, one event.
    assert pynetdicom_store(scp.dicom_port, paths) == [0, 0, 0]
    await_events(scp, 1)
    assert imaging(scp) == [(str(cbct[0].SeriesInstanceUID), 3)]


def test_release_racing_the_sweep_publishes_once(
    base_settings: dict[str, object], tmp_path: Path
) -> None:
    settings = scp_settings(base_settings, scp_object_store=tmp_path / "objects")
    with scp_rest_app(settings) as app:
        ingestor: Ingestor = app.state.ingestor
        for round_ in range(20):
            cbct = f.cbct_series(n_slices=2)
            for i, ds in enumerate(cbct):
                path = f.write(ds, tmp_path / f"{round_}.{i}.dcm")
                outcome = ingestor.ingest(
                    path,
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    transfer_syntax_uid=str(pydicom.dcmread(path).file_meta.TransferSyntaxUID),
                    source=LINAC,
                )
                assert outcome.series_instance_uid == str(ds.SeriesInstanceUID)
            counts = _race(ingestor, str(cbct[0].SeriesInstanceUID))
            assert sum(counts) == 1, counts
        assert ingestor.publish_quiet_series(now=datetime.now(UTC), quiet=timedelta(0)) == 0


def _race(ingestor: Ingestor, uid: str) -> list[int]:
    """Two releases and the sweep publish one dirty series at the same moment."""
    counts: list[int] = []
    start = threading.Barrier(3)

    def release() -> None:
        start.wait()
        counts.append(ingestor.publish_series({uid}))

    def sweep() -> None:
        start.wait()
        later = datetime.now(UTC) + timedelta(hours=1)
        counts.append(ingestor.publish_quiet_series(now=later, quiet=timedelta(0)))

    threads = [threading.Thread(target=t) for t in (release, release, sweep)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def test_later_instances_mark_their_series_changed_and_a_lost_row_is_written_again(
    base_settings: dict[str, object], tmp_path: Path
) -> None:
    """After a series' first instance, later ones only mark its row changed (the first
    instance's facts stay); a row that is not there any more is written whole again."""
    settings = scp_settings(base_settings, scp_object_store=tmp_path / "objects")
    with scp_rest_app(settings) as app:
        ingestor: Ingestor = app.state.ingestor
        cbct = f.cbct_series(n_slices=3)
        uid = str(cbct[0].SeriesInstanceUID)

        def ingest(i: int) -> None:
            path = f.write(cbct[i], tmp_path / f"{i}.dcm")
            assert ingestor.ingest(
                path,
                sop_class_uid=str(cbct[i].SOPClassUID),
                sop_instance_uid=str(cbct[i].SOPInstanceUID),
                transfer_syntax_uid=str(pydicom.dcmread(path).file_meta.TransferSyntaxUID),
                source=LINAC,
            ).created

        def row() -> ImageSeries | None:
            with ingestor._factory() as session:
                return session.get(ImageSeries, uid)

        ingest(0)
        first = row()
        assert first is not None and first.dirty
        assert ingestor.publish_series({uid}) == 1
        assert not row().dirty  # type: ignore[union-attr]
        ingest(1)
        second = row()
        assert second is not None and second.dirty and second.facts == first.facts
        assert second.last_received_at > first.last_received_at
        with ingestor._factory() as session, session.begin():
            session.execute(delete(ImageSeries).where(ImageSeries.series_instance_uid == uid))
        ingest(2)
        again = row()
        assert again is not None and again.dirty and again.facts == first.facts
