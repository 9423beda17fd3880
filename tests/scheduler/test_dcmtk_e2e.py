"""End to end, from a booking to ``sim.completed``: ``rtops run`` starts the suite; staff book a
simulation through the scheduler's API; DCMTK's storescu sends a simulation CT (two series, as
a 4D-CT has several) from the CT simulator's AE title; the SCP publishes
``rtops.dicom.imaging.acquired``, the scheduler's consumer completes the booking once and
publishes ``rtops.scheduler.sim.completed``, which billing consumes.

The suite runs on the real clock, so the test's clinic works every day around the clock
(its own calendar and resources): the earliest slot is minutes away whenever CI runs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select, text

from services.scheduler.store import Outbox
from shared.db import make_engine
from shared.events import SimCompleted, parse_event
from shared.settings import RtopsSettings
from tests import dicom_factories as f
from tests.support import storescu, wait_for
from tests.test_suite_run import running_suite

pytestmark = [pytest.mark.e2e, pytest.mark.dcmtk]
ZONE = "America/New_York"
ALL_DAY = [
    {"day": d, "start": "00:00", "end": "23:59"}
    for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
]


def test_booking_then_sim_ct_by_storescu_completes_once(
    tmp_path: Path, isolation: dict[str, str], dcmtk: dict[str, str]
) -> None:
    resources = {
        "rooms": [
            {"id": "ctsim1", "name": "CT simulator 1", "machine": "CTSim1", "hours": ALL_DAY}
        ],
        "therapists": [{"id": t, "name": t, "shifts": ALL_DAY} for t in ("tina", "tom")],
        "device_types": [
            {"id": "vacuum_bag", "name": "vacuum bag", "stock": 3, "fabricated": True}
        ],
    }
    (tmp_path / "resources.yaml").write_text(json.dumps(resources))  # JSON is YAML
    calendar = {
        "holidays_country": None,
        "workdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }
    patient = f.DEFAULT_PATIENT
    with running_suite(
        tmp_path,
        isolation,
        RTOPS_SCHEDULER_RESOURCES=str(tmp_path / "resources.yaml"),
        RTOPS_CLINIC_CALENDAR=json.dumps(calendar),
        RTOPS_CLINIC_TIMEZONE=ZONE,
        RTOPS_SCP_SERIES_QUIET_S="1",
    ) as suite:
        scheduler = f"http://127.0.0.1:{suite.env['RTOPS_SCHEDULER_HTTP_PORT']}"
        wait_for(lambda: _ready(scheduler), timeout=60, interval=0.2, message="scheduler /readyz")
        headers = suite.token("scheduler", "sam.scheduler")
        created = httpx.post(
            f"{scheduler}/v1/simulation-requests",
            json={
                "patient_id": patient.patient_id,
                "patient_name": patient.name,
                "referring_physician": "Referrer^Rita",
                "treating_physician": "Oncologist^Olga",
                "site": "lung",
                "urgency": "urgent",
                "requirements": {"four_d_ct": True, "immobilization": ["vacuum_bag"]},
            },
            headers=headers,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        booked = httpx.post(
            f"{scheduler}/v1/simulation-requests/{rid}/book", json={}, headers=headers, timeout=10
        )
        assert booked.status_code == 201, booked.text
        start = datetime.fromisoformat(booked.json()["booking"]["simulation"]["start"]).astimezone(
            ZoneInfo(ZONE)
        )

        # The CT acquired in the booked slot, two respiratory phases as two series.
        study = "1.2.826.0.1.3680043.10.2.77"
        files = []
        for phase in range(2):
            series = f.sim_ct_series(
                n_slices=2,
                study_uid=study,
                series_uid=f"{study}.{phase}",
                acquisition_date=start.strftime("%Y%m%d"),
                acquisition_time=start.strftime("%H%M%S"),
                patient=patient,
            )
            files += f.write_series(series, tmp_path / f"phase{phase}")
        sent = storescu(dcmtk["storescu"], suite.dicom_port, files, calling="CTSIM1")
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def completed() -> dict[str, Any] | None:
            body: dict[str, Any] = httpx.get(
                f"{scheduler}/v1/simulation-requests/{rid}", headers=headers, timeout=5
            ).json()
            booking = body["booking"]
            if body["status"] == "completed" and len(booking["series_instance_uids"]) == 2:
                return body
            return None

        body = wait_for(completed, timeout=90, interval=0.5, message="booking completed (see log)")
        booking = body["booking"]
        assert (booking["status"], booking["revision"]) == ("completed", 1)
        assert sorted(booking["series_instance_uids"]) == [f"{study}.0", f"{study}.1"]
        assert httpx.get(f"{scheduler}/v1/unbooked-scans", headers=headers, timeout=5).json() == []

        # The same CT from the planning system is a copy, not a simulation: nothing changes.
        sent = storescu(dcmtk["storescu"], suite.dicom_port, files[:1], calling="TPS1")
        assert sent.returncode == 0
        # sim.completed was published: its outbox row acknowledged by JetStream, once.
        settings = RtopsSettings(
            var_dir=tmp_path / "var",
            database_url=suite.env.get("RTOPS_DATABASE_URL") or None,
            database_schema_prefix=isolation["database_schema_prefix"],
        )
        engine = make_engine(settings, "scheduler")
        try:

            def sent() -> list[tuple[str, bytes]] | None:
                with engine.connect() as conn:
                    rows = conn.execute(
                        select(Outbox.subject, Outbox.body, Outbox.sent_at).order_by(Outbox.id)
                    ).all()
                if len(rows) < 3 or not all(r[2] for r in rows):
                    return None
                return [(r[0], r[1]) for r in rows]

            rows = wait_for(sent, timeout=30, interval=0.2, message="outbox sent")
        finally:
            engine.dispose()
        # booking.changed (booked, then completed) and sim.completed, once
        subjects = [subject.rsplit(".", 3)[-3:] for subject, _ in rows]
        assert sorted(".".join(s) for s in subjects) == [
            "scheduler.booking.changed",
            "scheduler.booking.changed",
            "scheduler.sim.completed",
        ]
        ((subject, raw),) = [r for r in rows if r[0].endswith("sim.completed")]
        event = parse_event(raw)
        assert subject.endswith("scheduler.sim.completed")
        assert isinstance(event.data, SimCompleted)
        assert (event.data.revision, event.data.complexity, event.data.four_d_ct) == (
            1,
            "complex",
            True,
        )
        assert event.data.service_date == start.date()
        # Billing consumed it: its fact of kind "simulation", keyed by the booking.
        billing_engine = make_engine(settings, "billing")
        try:

            def billed() -> list[tuple[str, int]] | None:
                with billing_engine.connect() as conn:
                    rows = conn.execute(
                        text("SELECT key, revision FROM fact WHERE kind = 'simulation'")
                    ).all()
                return [(r[0], r[1]) for r in rows] or None

            facts = wait_for(billed, timeout=30, interval=0.2, message="billing's fact")
        finally:
            billing_engine.dispose()
        assert facts == [(event.data.booking_id, 1)]
        assert "booking race lost" not in suite.log.read_text()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
