"""`rtops demo`: the simulated department's schedule (pure), its objects, the one-line error
when no SCP answers, and a short period sent to a running suite until the QA tracker fills."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import datetime, time, timedelta
from pathlib import Path

import httpx
import pytest

from shared.calendar import CalendarSpec, build_calendar
from tests import demo
from tests.support import REPO, free_port, wait_for
from tests.test_suite_run import running_suite

ZONE = "America/New_York"
CALENDAR = build_calendar(CalendarSpec(), zone=ZONE)  # US holidays: 2026-11-11 is closed
LINACS = [demo.Linac("TRUEBEAM1", "TrueBeam1")]


def plan_for(until: str, days: int) -> demo.Schedule:
    now = datetime.combine(datetime.fromisoformat(until).date(), time(23, 59), CALENDAR.zone)
    return demo.schedule(
        now=now, days=days, calendar=CALENDAR, linacs=LINACS, ct_ae="CTSIM1", tps_ae="TPS1"
    )


def test_two_weeks_of_the_department() -> None:
    plan = plan_for("2026-11-13", 14)
    assert plan.period == (datetime(2026, 10, 31).date(), datetime(2026, 11, 13).date())
    assert len(plan.business_days) == 9  # two weeks minus Veterans Day
    kinds = Counter(s.kind for s in plan.sends)
    assert kinds == {"sim_ct": 6, "plan": 6, "fraction": 52}
    per_patient = Counter(s.course.patient.name for s in plan.fractions)
    assert per_patient == {
        "Demo^Alpha": 9,
        "Demo^Bravo": 5,
        "Demo^Charlie": 18,
        "Demo^Delta": 3,
        "Demo^Echo": 8,
        "Demo^Foxtrot": 9,
    }
    assert all(s.course.patient.name.startswith("Demo^") for s in plan.sends)

    # Clinic hours on business days, in the order they happen; every plan before its course.
    assert [s.at for s in plan.sends] == sorted(s.at for s in plan.sends)
    for s in plan.sends:
        assert CALENDAR.is_business_day(s.at.date()), s
        assert time(7, 30) <= s.at.time() <= time(17, 0), s
    for pid, state in plan.states.items():
        course = [s for s in plan.sends if s.course.patient.patient_id == pid]
        assert [s.kind for s in course[:2]] == ["sim_ct", "plan"]
        assert {s.plan_uid for s in course} == {state.plan_uid}

    # SBRT: five fractions, every other business day.
    sbrt = [s for s in plan.fractions if s.course.technique == "SBRT"]
    assert [s.fraction_number for s in sbrt] == [1, 2, 3, 4, 5]
    assert [plan.business_days.index(s.at.date()) for s in sbrt] == [0, 2, 4, 6, 8]
    assert all(max(map(abs, s.shift_mm)) <= 2.0 for s in sbrt)

    # Twice daily: two fractions a day, at least six hours apart.
    bid = [s for s in plan.fractions if s.course.pattern == "twice_daily"]
    by_day: dict[object, list[demo.Send]] = {}
    for s in bid:
        by_day.setdefault(s.at.date(), []).append(s)
    assert len(by_day) == 9 and all(len(v) == 2 for v in by_day.values())
    assert all(b.at - a.at >= timedelta(hours=6) for a, b in by_day.values())

    # One couch shift beyond tolerance, one interrupted fraction; nothing else out of line.
    (beyond,) = [s for s in plan.fractions if s.beyond_tolerance]
    assert (beyond.course.patient.name, beyond.fraction_number) == ("Demo^Alpha", 10)
    assert max(map(abs, beyond.shift_mm)) > 5.0
    others = [s for s in plan.fractions if not s.beyond_tolerance]
    assert all(max(map(abs, s.shift_mm)) <= 5.0 for s in others)
    (cut,) = [s for s in plan.fractions if s.interrupted]
    assert cut.course.patient.name == "Demo^Foxtrot"


def test_fraction_objects_agree_with_the_schedule() -> None:
    plan = plan_for("2026-11-13", 14)
    (cut,) = [s for s in plan.fractions if s.interrupted]
    objects = demo.render(cut, cbct_slices=3, image_size=16)
    assert [o.Modality for o in objects] == ["CT"] * 3 + ["REG", "RTRECORD", "RTRECORD"]
    assert len(objects) == demo.object_count(cut, 3)
    first, resumed = objects[-2:]
    day = cut.at.strftime("%Y%m%d")
    assert first.TreatmentDate == resumed.TreatmentDate == objects[0].AcquisitionDate == day
    assert first.TreatmentTime == cut.at.strftime("%H%M%S") < resumed.TreatmentTime
    numbers = {
        b.CurrentFractionNumber for r in (first, resumed) for b in r.TreatmentSessionBeamSequence
    }
    assert numbers == {cut.fraction_number}
    assert first.TreatmentSessionBeamSequence[-1].TreatmentTerminationStatus == "MACHINE"
    assert resumed.TreatmentSessionBeamSequence[0].ReferencedBeamNumber == 2
    assert objects[0].AcquisitionTime < objects[3].ContentTime < first.TreatmentTime
    assert objects[0].PatientName == "Demo^Foxtrot"


def test_no_scp_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--port", str(free_port()), "--days", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no DICOM SCP answers at 127.0.0.1:" in err[0], err


UNTIL, DAYS = "2026-11-06", 5  # Mon 2026-11-02 .. Fri 11-06, in the past: every status settled


@pytest.mark.e2e
def test_a_week_of_the_demo_fills_the_qa_tracker(tmp_path: Path, isolation: dict[str, str]) -> None:
    expected = plan_for(UNTIL, DAYS)
    with running_suite(
        tmp_path,
        isolation,
        RTOPS_SCP_SERIES_QUIET_S="0.5",
        RTOPS_SCP_SWEEP_INTERVAL_S="0.2",
        RTOPS_CLINIC_TIMEZONE=ZONE,
    ) as suite:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "services.cli", "demo", "--port", str(suite.dicom_port)),
                *("--days", str(DAYS), "--until", UNTIL, "--cbct-slices", "2"),
                *("--image-size", "16"),
            ],
            cwd=REPO,
            env=suite.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "RTOPS_SCP_SERIES_QUIET_S" in done.stderr
        assert f"{len(expected.fractions)} fractions" in done.stderr

        headers = suite.token("physician", "demo")
        url = f"{suite.qa_http}/v1/fractions"

        def fractions() -> list[dict[str, object]]:
            items = httpx.get(url, params={"limit": 500}, headers=headers).json()["items"]
            complete = len(items) == len(expected.fractions) and all(
                i["imaged"] and i["correction_mm"] is not None for i in items
            )
            return items if complete else []

        items = wait_for(fractions, timeout=40, interval=0.3, message="the demo's fractions")
        got = Counter((i["patient_id"], i["fraction_number"]) for i in items)
        assert got == Counter(
            (s.course.patient.patient_id, s.fraction_number) for s in expected.fractions
        )
        assert {i["review_status"] for i in items} == {"overdue"}  # nobody reviewed
        (override,) = [i for i in items if i["override_required"]]
        assert override["patient_id"] == "DEMO-0001" and float(override["correction_mm"]) > 5
        days = Counter((i["patient_id"], str(i["treated_at"])[:10]) for i in items)
        assert any(pid == "DEMO-0003" and n == 2 for (pid, _), n in days.items())
        sbrt = [i for i in items if i["patient_id"] == "DEMO-0002"]
        assert len(sbrt) == 3 and {i["physician"] for i in sbrt} == {"Oncologist^Omar"}
        (cut,) = [s for s in expected.fractions if s.interrupted]
        (row,) = [
            i
            for i in items
            if (i["patient_id"], i["fraction_number"]) == ("DEMO-0006", cut.fraction_number)
        ]
        detail = httpx.get(f"{url}/{row['id']}", headers=headers).json()
        assert detail["partial"] is True
