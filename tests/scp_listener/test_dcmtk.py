"""The SCP with DCMTK's echoscu and storescu as senders, as a linac console or TPS would be."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pydicom

from tests import dicom_factories as f
from tests.scp_listener.test_scp import IMAGING, PLAN, RECORD, REGISTRATION, counts
from tests.support import (
    TEST_DATA,
    RunningScp,
    await_events,
    by_type,
    drop_test_schema,
    scp_settings,
    storescu,
    wait_for,
)


def test_echoscu(scp: RunningScp, dcmtk: dict[str, str]) -> None:
    ok = subprocess.run(
        [dcmtk["echoscu"], "-aet", "TRUEBEAM1", "-aec", "RTOPS", "127.0.0.1", str(scp.dicom_port)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        [dcmtk["echoscu"], "-aet", "INTRUDER", "-aec", "RTOPS", "127.0.0.1", str(scp.dicom_port)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_plan_record_cbct_registration(
    scp: RunningScp, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    fraction = f.imaged_fraction(fractions=25, fraction_number=3, cbct_slices=5)
    plan, cbct = fraction.plan, fraction.cbct
    # The plan comes from the planning system, the rest from the linac.
    plan_file, *linac_files = fraction.write(tmp_path)
    assert storescu(dcmtk["storescu"], scp.dicom_port, [plan_file], calling="TPS1").returncode == 0
    sent = storescu(dcmtk["storescu"], scp.dicom_port, linac_files)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    events = await_events(scp, 4)
    assert sorted(e.type for e in events) == sorted([PLAN, RECORD, IMAGING, REGISTRATION])
    assert by_type(events, PLAN)[0].data.source.role == "tps"
    rec = by_type(events, RECORD)[0].data
    assert rec.fraction_numbers == (3,) and rec.plan_uid == plan.SOPInstanceUID  # type: ignore[attr-defined]
    img = by_type(events, IMAGING)[0].data
    assert (img.classification, img.instance_count) == ("cbct", 5)  # type: ignore[attr-defined]
    reg_event = by_type(events, REGISTRATION)[0].data
    assert reg_event.moving_series_uids == (cbct[0].SeriesInstanceUID,)  # type: ignore[attr-defined]


def test_every_reference_sample_is_accepted_once(scp: RunningScp, dcmtk: dict[str, str]) -> None:
    files = sorted(TEST_DATA.rglob("*.dcm"))
    sent = storescu(dcmtk["storescu"], scp.dicom_port, files, calling="TPS1")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    plans = [
        p
        for p in files
        if pydicom.dcmread(p, force=True, stop_before_pixels=True).Modality == "RTPLAN"
    ]
    # Plans give one event each; the two RT Images are two series; the structure set none.
    expected = len(plans) + 2
    events = await_events(scp, expected)
    assert len(by_type(events, PLAN)) == len(plans)
    assert len(by_type(events, IMAGING)) == 2
    assert len(events) == expected
    assert counts(scp)[0] == len(files)

    again = storescu(dcmtk["storescu"], scp.dicom_port, files, calling="TPS1")
    assert again.returncode == 0
    assert len(await_events(scp, expected)) == expected
    assert counts(scp)[0] == len(files)


def test_mr_image_is_refused(scp: RunningScp, dcmtk: dict[str, str], tmp_path: Path) -> None:
    mr = f.write(f.mr_image(), tmp_path / "mr.dcm")
    sent = storescu(dcmtk["storescu"], scp.dicom_port, [mr])
    assert sent.returncode != 0
    assert "no acceptable presentation contexts" in (sent.stdout + sent.stderr).lower()
    assert counts(scp) == (0, 0, 0)


def test_truncated_file_is_not_stored(
    scp: RunningScp, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    # DCMTK refuses to send a file it cannot read; the SCP-side rejection of a truncated
    # dataset that does arrive is in test_scp.py (pynetdicom sends the raw bytes).
    good = f.write(f.treatment_record(plan_uid="1.2.3"), tmp_path / "good.dcm")
    bad = f.truncated_copy(good, tmp_path / "bad.dcm", keep_fraction=0.6)
    sent = storescu(dcmtk["storescu"], scp.dicom_port, [bad])
    assert sent.returncode != 0
    assert counts(scp) == (0, 0, 0)


def test_two_senders_at_once(scp: RunningScp, dcmtk: dict[str, str], tmp_path: Path) -> None:
    cbct = f.write_series(f.cbct_series(n_slices=30, rows=128, columns=128), tmp_path / "a")
    sim = f.write_series(f.sim_ct_series(n_slices=30, rows=128, columns=128), tmp_path / "b")
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    senders = [
        threading.Thread(
            target=lambda: results.__setitem__(
                "linac", storescu(dcmtk["storescu"], scp.dicom_port, cbct)
            )
        ),
        threading.Thread(
            target=lambda: results.__setitem__(
                "ctsim", storescu(dcmtk["storescu"], scp.dicom_port, sim, calling="CTSIM1")
            )
        ),
    ]
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    assert {k: v.returncode for k, v in results.items()} == {"linac": 0, "ctsim": 0}
    events = await_events(scp, 2)
    assert sorted((e.data.classification, e.data.instance_count) for e in events) == [  # type: ignore[attr-defined]
        ("cbct", 30),
        ("sim_ct", 30),
    ]
    assert counts(scp)[0] == 60


def test_nats_outage_during_a_200_object_send_loses_and_duplicates_nothing(
    base_settings: dict[str, object], dcmtk: dict[str, str], tmp_path: Path
) -> None:
    from shared.natsd import EmbeddedNats

    # A NATS of this test's own, so that it can be stopped and started again.
    nats = EmbeddedNats(tmp_path / "nats", port=0).start()
    scp = RunningScp(scp_settings({**base_settings, "nats_url": nats.url}))
    try:
        records = [
            f.write(
                f.treatment_record(plan_uid="1.2.3", fraction_number=i % 30 + 1),
                tmp_path / "rec" / f"{i:03}.dcm",
            )
            for i in range(200)
        ]
        result: dict[str, subprocess.CompletedProcess[str]] = {}
        sender = threading.Thread(
            target=lambda: result.__setitem__(
                "send", storescu(dcmtk["storescu"], scp.dicom_port, records)
            )
        )
        sender.start()
        wait_for(lambda: counts(scp)[0] >= 30, message="30 objects stored")
        nats.stop()
        wait_for(lambda: counts(scp)[0] >= 120, message="120 objects stored with NATS down")
        restarted = EmbeddedNats(tmp_path / "nats", port=nats.port).start()
        sender.join(120)
        assert result["send"].returncode == 0, result["send"].stderr
        scp.wait_outbox_empty(timeout=60)
        events = await_events(scp, 200, timeout=60)
        uids = [e.data.object.sop_instance_uid for e in events]  # type: ignore[attr-defined]
        assert len(uids) == 200 and len(set(uids)) == 200
        assert {str(pydicom.dcmread(p).SOPInstanceUID) for p in records} == set(uids)
    finally:
        scp.stop()
        drop_test_schema(scp.settings)
        nats.stop()
        if "restarted" in locals():
            restarted.stop()
