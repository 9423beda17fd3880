"""Pure, table-driven tests of the review-compliance rules (no database, no clock)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import permutations
from zoneinfo import ZoneInfo

import pytest

from services.qa_tracker.domain import (
    Correction,
    Decision,
    FractionFacts,
    ImagingSession,
    Match,
    Review,
    ReviewPolicy,
    ReviewStatus,
    SummaryRow,
    Tolerance,
    TreatedFraction,
    assess,
    due_at,
    exceeds,
    match_imaging,
    match_registrations,
    next_fraction_starts,
    tolerance_for,
    weekly_summary,
)
from shared.calendar import ClinicCalendar, add_business_hours, iso_week_bounds

NY = ZoneInfo("America/New_York")
THANKSGIVING = date(2026, 11, 26)  # Thursday
CALENDAR = ClinicCalendar(zone=NY, closed_days=frozenset({THANKSGIVING, date(2026, 12, 25)}))
POLICY = ReviewPolicy(calendar=CALENDAR)


def ny(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=NY)


@pytest.mark.parametrize(
    ("start", "hours", "expected"),
    [
        (ny("2026-11-23", "09:00"), 24, ny("2026-11-24", "09:00")),  # Monday -> Tuesday
        (ny("2026-11-20", "10:00"), 24, ny("2026-11-23", "10:00")),  # Friday -> Monday
        (ny("2026-11-25", "10:00"), 24, ny("2026-11-27", "10:00")),  # over Thanksgiving
        (ny("2026-11-21", "10:00"), 24, ny("2026-11-24", "00:00")),  # Saturday counts from Mon
        (ny("2026-11-26", "08:00"), 1, ny("2026-11-27", "01:00")),  # on the holiday itself
        (ny("2026-11-23", "09:00"), 0, ny("2026-11-23", "09:00")),
        (ny("2026-11-23", "23:30"), 1, ny("2026-11-24", "00:30")),  # across midnight
        (ny("2026-12-24", "12:00"), 24, ny("2026-12-28", "12:00")),  # Christmas + weekend
        (ny("2026-11-20", "10:00"), 48, ny("2026-11-24", "10:00")),
        # DST ends 2026-11-01 (Sunday): business hours are wall-clock hours.
        (ny("2026-10-30", "09:00"), 24, ny("2026-11-02", "09:00")),
    ],
)
def test_add_business_hours(start: datetime, hours: float, expected: datetime) -> None:
    assert add_business_hours(start, hours, CALENDAR) == expected


def test_business_hours_keep_the_callers_zone() -> None:
    start = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)  # Friday 10:00 in New York
    assert add_business_hours(start, 24, CALENDAR) == datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("treated", "next_fraction", "expected"),
    [
        # The next fraction comes first: review before it (ASTRO).
        (ny("2026-11-23", "09:00"), ny("2026-11-23", "16:00"), ny("2026-11-23", "16:00")),
        # Friday's fraction, next on Monday 08:00: before the 24 business hours end (Mon 09:00).
        (ny("2026-11-20", "09:00"), ny("2026-11-23", "08:00"), ny("2026-11-23", "08:00")),
        # Next fraction later than the hour limit: the limit decides.
        (ny("2026-11-23", "09:00"), ny("2026-11-25", "09:00"), ny("2026-11-24", "09:00")),
        # Last fraction of the course: the hour limit alone.
        (ny("2026-11-23", "09:00"), None, ny("2026-11-24", "09:00")),
    ],
)
def test_due_at(treated: datetime, next_fraction: datetime | None, expected: datetime) -> None:
    fraction = FractionFacts(treated_at=treated, imaged=True, next_fraction_at=next_fraction)
    assert due_at(fraction, POLICY) == expected


def test_due_at_without_the_next_fraction_rule() -> None:
    policy = ReviewPolicy(calendar=CALENDAR, before_next_fraction=False, max_business_hours=8)
    fraction = FractionFacts(
        treated_at=ny("2026-11-23", "09:00"),
        imaged=True,
        next_fraction_at=ny("2026-11-23", "12:00"),
    )
    assert due_at(fraction, policy) == ny("2026-11-23", "17:00")


DUE = ny("2026-11-24", "09:00")
ONE_SECOND = timedelta(seconds=1)


def review(
    at: datetime, decision: Decision = Decision.APPROVED, override: str | None = None
) -> Review:
    return Review(decision=decision, reviewed_at=at, physician="Dr Olga", override_reason=override)


@pytest.mark.parametrize(
    ("imaged", "reviews", "now", "status"),
    [
        (False, [], DUE + timedelta(days=3), ReviewStatus.NOT_IMAGED),
        (True, [], DUE - ONE_SECOND, ReviewStatus.PENDING),
        (True, [], DUE, ReviewStatus.PENDING),  # due means "by": not overdue at the instant
        (True, [], DUE + ONE_SECOND, ReviewStatus.OVERDUE),
        (True, [review(DUE - ONE_SECOND)], DUE + timedelta(days=1), ReviewStatus.REVIEWED_ON_TIME),
        (True, [review(DUE)], DUE + timedelta(days=1), ReviewStatus.REVIEWED_ON_TIME),
        (True, [review(DUE + ONE_SECOND)], DUE + timedelta(days=1), ReviewStatus.REVIEWED_LATE),
        # The first review decides timeliness; a later approval does not make it late.
        (
            True,
            [review(DUE + timedelta(hours=5)), review(DUE - timedelta(hours=5))],
            DUE + timedelta(days=1),
            ReviewStatus.REVIEWED_ON_TIME,
        ),
        # A rejection is a documented review too.
        (True, [review(DUE - ONE_SECOND, Decision.REJECTED)], DUE, ReviewStatus.REVIEWED_ON_TIME),
    ],
)
def test_status(imaged: bool, reviews: list[Review], now: datetime, status: ReviewStatus) -> None:
    fraction = FractionFacts(treated_at=ny("2026-11-23", "09:00"), imaged=imaged, reviews=reviews)
    assert assess(fraction, now=now, policy=POLICY).status == status


def test_rejected_until_a_later_approval() -> None:
    first = review(DUE - timedelta(hours=3), Decision.REJECTED)
    fraction = FractionFacts(treated_at=ny("2026-11-23", "09:00"), imaged=True, reviews=[first])
    assert assess(fraction, now=DUE, policy=POLICY).rejected
    fixed = FractionFacts(
        treated_at=fraction.treated_at,
        imaged=True,
        reviews=[first, review(DUE - timedelta(hours=1))],
    )
    assert not assess(fixed, now=DUE, policy=POLICY).rejected


@pytest.mark.parametrize(
    ("translation", "rotation", "technique", "required"),
    [
        ((5.0, 0.0, 0.0), None, None, False),  # at the 5 mm limit: within
        ((5.01, 0.0, 0.0), None, None, True),
        ((0.0, -5.01, 0.0), None, None, True),  # any axis, either sign
        ((0.0, 0.0, 0.0), (0.0, 3.0, 0.0), None, False),  # at the 3 degree limit
        ((0.0, 0.0, 0.0), (0.0, 0.0, -3.1), None, True),
        ((2.0, 0.0, 0.0), (1.0, 0.0, 0.0), "SBRT", False),  # SBRT 2 mm / 1 degree
        ((2.1, 0.0, 0.0), None, "SBRT", True),
        ((0.0, 0.0, 0.0), (1.1, 0.0, 0.0), "sbrt", True),  # technique names ignore case
        (None, None, None, False),  # no registration: nothing to override
    ],
)
def test_override_required(
    translation: tuple[float, float, float] | None,
    rotation: tuple[float, float, float] | None,
    technique: str | None,
    required: bool,
) -> None:
    correction = Correction(translation_mm=translation, rotation_deg=rotation)
    fraction = FractionFacts(
        treated_at=ny("2026-11-23", "09:00"),
        imaged=True,
        correction=correction,
        technique=technique,
    )
    assert assess(fraction, now=DUE, policy=POLICY).override_required is required


def test_override_documented_needs_a_reason() -> None:
    big = Correction(translation_mm=(7.0, 0.0, 0.0))
    base = FractionFacts(treated_at=ny("2026-11-23", "09:00"), imaged=True, correction=big)
    blank = FractionFacts(**{**base.__dict__, "reviews": [review(DUE, override="  ")]})
    given = FractionFacts(**{**base.__dict__, "reviews": [review(DUE, override="setup change")]})
    assert not assess(blank, now=DUE, policy=POLICY).override_documented
    assert assess(given, now=DUE, policy=POLICY).override_documented


def test_tolerance_lookup_order() -> None:
    policy = ReviewPolicy(
        calendar=CALENDAR, tolerances={"SBRT": Tolerance(2, 1), "Brain": Tolerance(3, 2)}
    )
    assert tolerance_for(policy, technique="SBRT", site="Brain") == Tolerance(2, 1)
    assert tolerance_for(policy, technique=None, site="brain") == Tolerance(3, 2)
    assert tolerance_for(policy, technique="IMRT", site="Prostate") == Tolerance(5, 3)
    assert not exceeds(None, Tolerance(0, 0))


def test_weekly_summary() -> None:
    rows = [
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.REVIEWED_ON_TIME, True, True),
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.REVIEWED_LATE, False, False),
        SummaryRow("TrueBeam2", "Dr B", ReviewStatus.OVERDUE, True, False),
        SummaryRow("TrueBeam2", None, ReviewStatus.PENDING, False, False),
        SummaryRow("TrueBeam2", "Dr B", ReviewStatus.NOT_IMAGED, False, False),
    ]
    summary = weekly_summary(rows)
    assert summary.total.as_dict() == {
        "imaged_fractions": 4,
        "reviewed_on_time": 1,
        "reviewed_late": 1,
        "reviewed_backdated": 0,
        "overdue": 1,
        "pending": 1,
        "overrides_required": 2,
        "overrides_documented": 1,
        "compliance_pct": 25.0,
        "attested_compliance_pct": 25.0,
    }
    assert summary.by_machine["TrueBeam1"].compliance_pct == 50.0
    assert summary.by_machine["TrueBeam2"].imaged_fractions == 2
    assert summary.by_physician["unassigned"].pending == 1
    assert weekly_summary([]).total.compliance_pct is None


@pytest.mark.parametrize(
    ("week", "monday"),
    [
        ("2026-W48", date(2026, 11, 23)),
        ("2026-W01", date(2025, 12, 29)),
        ("2026-W53", date(2026, 12, 28)),
    ],
)
def test_iso_week_bounds(week: str, monday: date) -> None:
    start, end = iso_week_bounds(week, NY)
    assert start.date() == monday and end - start == timedelta(days=7)


@pytest.mark.parametrize("week", ["2026-48", "2026-W54", "W48", "2026-Wxx"])
def test_iso_week_bounds_rejects_bad_weeks(week: str) -> None:
    with pytest.raises(ValueError, match="ISO week"):
        iso_week_bounds(week, NY)


# ---------------------------------------------------------------- matching


def frac(
    key: str,
    start: str,
    minutes: int = 10,
    *,
    patient: str = "P1",
    machine: str | None = "TrueBeam1",
    day: str = "2026-11-23",
) -> TreatedFraction:
    begin = ny(day, start)
    return TreatedFraction(key, patient, machine, begin, begin + timedelta(minutes=minutes))


def cbct(
    key: str,
    at: str,
    *,
    patient: str = "P1",
    machine: str | None = "TrueBeam1",
    day: str = "2026-11-23",
) -> ImagingSession:
    return ImagingSession(key, patient, machine, ny(day, at))


def test_imaging_matches_the_fraction_it_prepared() -> None:
    fractions = [frac("am", "08:00"), frac("pm", "15:00")]  # twice daily
    sessions = [
        cbct("cb-am", "07:55"),
        cbct("cb-pm", "14:50"),
        cbct("cb-during", "15:05"),  # acquired during delivery: still that fraction
        cbct("cb-after", "16:00"),  # after the last fraction ended: none
        cbct("cb-other-patient", "07:55", patient="P2"),
        cbct("cb-other-machine", "07:55", machine="TrueBeam2"),
        cbct("cb-yesterday", "08:00", day="2026-11-22"),
    ]
    assert match_imaging(fractions, sessions, zone=NY) == {
        "cb-am": "am",
        "cb-pm": "pm",
        "cb-during": "pm",
    }


def test_imaging_device_can_belong_to_a_linac() -> None:
    matched = match_imaging(
        [frac("f", "08:00")],
        [cbct("xvi", "07:55", machine="XVI1")],
        zone=NY,
        same_machine={"XVI1": "TrueBeam1"},
    )
    assert matched == {"xvi": "f"}


def test_matching_does_not_depend_on_arrival_order() -> None:
    fractions = [frac("a", "08:00"), frac("b", "15:00"), frac("c", "08:00", day="2026-11-24")]
    sessions = [cbct("1", "07:50"), cbct("2", "14:55"), cbct("3", "07:58", day="2026-11-24")]
    results = {
        tuple(sorted(match_imaging(list(fs), list(ss), zone=NY).items()))
        for fs in permutations(fractions)
        for ss in permutations(sessions)
    }
    assert results == {(("1", "a"), ("2", "b"), ("3", "c"))}


def test_next_fraction_of_the_same_patient() -> None:
    fractions = [
        frac("mon", "08:00"),
        frac("tue", "08:00", day="2026-11-24"),
        frac("other", "09:00", patient="P2"),
    ]
    assert next_fraction_starts(fractions) == {
        "mon": ny("2026-11-24", "08:00"),
        "tue": None,
        "other": None,
    }


def test_registration_matches_named_series_else_the_latest_earlier_session() -> None:
    sessions = [cbct("s1", "07:50"), cbct("s2", "08:20")]
    regs = [
        Match("named", "P1", "TrueBeam1", ny("2026-11-23", "09:00"), series_keys=("s1",)),
        Match("by-time", "P1", "TrueBeam1", ny("2026-11-23", "08:25")),
        Match("too-early", "P1", "TrueBeam1", ny("2026-11-23", "07:40")),
    ]
    assert match_registrations(regs, sessions, zone=NY) == {"named": "s1", "by-time": "s2"}


def test_weekly_summary_of_grouped_counts_equals_one_row_per_fraction() -> None:
    one_each = [
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.REVIEWED_ON_TIME, True, True),
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.REVIEWED_ON_TIME, True, True),
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.OVERDUE, True, False),
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.NOT_IMAGED, False, False),
    ]
    grouped = [
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.REVIEWED_ON_TIME, True, True, count=2),
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.OVERDUE, True, False, count=1),
        SummaryRow("TrueBeam1", "Dr A", ReviewStatus.NOT_IMAGED, False, False, count=1),
    ]
    assert weekly_summary(grouped) == weekly_summary(one_each)
    assert weekly_summary(grouped).total.compliance_pct == 66.7
