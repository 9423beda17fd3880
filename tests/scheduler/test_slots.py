"""The slot search and the scheduler's rules, pure: no database, no clock. Border cases in the
tables: a slot ending as a shift ends, a procedure exactly N days before, a holiday, a
closure, an eGFR exactly as old as allowed, the last unit of a device."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest

from services.scheduler import domain
from services.scheduler.domain import (
    Consent,
    DeviceType,
    Lab,
    Policy,
    Requirements,
    Room,
    SitePolicy,
    Staff,
    Window,
)
from services.scheduler.slots import Busy, Need, World, check_slot, earliest_slot
from shared.calendar import CalendarSpec, build_calendar
from tests.events import at

WEEKDAYS = range(5)


def hours(start: str, end: str, days: range | tuple[int, ...] = WEEKDAYS) -> tuple[Window, ...]:
    return tuple(Window(d, time.fromisoformat(start), time.fromisoformat(end)) for d in days)


def world(
    busy: dict[str, list[tuple[datetime, datetime]]] | None = None,
    closed: tuple[str, ...] = (),
) -> World:
    calendar = build_calendar(
        CalendarSpec(closed_days=[date.fromisoformat(d) for d in closed]),
        zone="America/New_York",
    )
    return World(
        calendar=calendar,
        rooms=[Room("ct1", "CTSim1", hours("08:00", "12:00"))],
        therapists=[
            Staff("a", hours("08:00", "12:00")),
            Staff("b", hours("08:00", "10:00")),
            Staff("c", hours("08:00", "12:00", (2,))),  # Wednesdays
        ],
        proceduralists=[Staff("uro", hours("08:00", "12:00", (1,)))],  # Tuesdays
        busy=Busy(busy or {}),
        step_minutes=15,
        horizon_days=60,
    )


MONDAY = at("2026-11-30", "07:00")  # the Monday after Thanksgiving
PLAIN = Need(minutes=30, therapists=2)


def test_earliest_slot_is_the_first_opening_with_enough_therapists() -> None:
    slot = earliest_slot(PLAIN, world(), now=MONDAY)
    assert slot is not None
    assert (slot.start, slot.end, slot.room, slot.therapists) == (
        at("2026-11-30", "08:00"),
        at("2026-11-30", "08:30"),
        "ct1",
        ("a", "b"),
    )
    assert slot.procedure is None


@pytest.mark.parametrize(
    ("room_busy_until", "expected"),
    [
        # 09:30-10:00 ends exactly as therapist b's shift ends: allowed.
        ("09:30", at("2026-11-30", "09:30")),
        # From 09:45 the slot would run past b's shift, and a is alone: Tuesday.
        ("09:45", at("2026-12-01", "08:00")),
    ],
)
def test_shift_end_is_a_border(room_busy_until: str, expected: datetime) -> None:
    busy = {"room:ct1": [(at("2026-11-30", "08:00"), at("2026-11-30", room_busy_until))]}
    slot = earliest_slot(PLAIN, world(busy), now=MONDAY)
    assert slot is not None and slot.start == expected


def test_a_busy_therapist_is_not_counted() -> None:
    busy = {"therapist:b": [(at("2026-11-30", "08:00"), at("2026-11-30", "10:00"))]}
    slot = earliest_slot(PLAIN, world(busy), now=MONDAY)
    assert slot is not None and slot.start == at("2026-12-01", "08:00")


def test_wednesday_has_a_third_therapist() -> None:
    need = Need(minutes=30, therapists=2, earliest=date(2026, 12, 2))
    busy = {"therapist:b": [(at("2026-12-02", "08:00"), at("2026-12-02", "10:00"))]}
    slot = earliest_slot(need, world(busy), now=MONDAY)
    assert slot is not None
    assert (slot.start, slot.therapists) == (at("2026-12-02", "08:00"), ("a", "c"))


@pytest.mark.parametrize(
    ("now", "closed", "expected_day"),
    [
        # Thursday 24 December after hours; Friday 25 is Christmas (US holiday): Monday.
        (at("2026-12-24", "13:00"), (), "2026-12-28"),
        # The same, with the clinic closed on Monday 28: Tuesday.
        (at("2026-12-24", "13:00"), ("2026-12-28",), "2026-12-29"),
        # Friday evening: the weekend is skipped.
        (at("2026-12-04", "18:00"), (), "2026-12-07"),
        # 11:40 on Monday: 11:45 is on the grid but 11:45-12:15 passes closing: Tuesday.
        (at("2026-11-30", "11:40"), (), "2026-12-01"),
    ],
)
def test_holidays_closures_and_weekends(
    now: datetime, closed: tuple[str, ...], expected_day: str
) -> None:
    slot = earliest_slot(PLAIN, world(closed=closed), now=now)
    assert slot is not None and slot.start == at(expected_day, "08:00")


def test_now_is_rounded_up_to_the_grid() -> None:
    slot = earliest_slot(PLAIN, world(), now=at("2026-11-30", "08:05"))
    assert slot is not None and slot.start == at("2026-11-30", "08:15")


def test_earliest_date_is_respected() -> None:
    need = Need(minutes=30, therapists=2, earliest=date(2026, 12, 3))
    slot = earliest_slot(need, world(), now=MONDAY)
    assert slot is not None and slot.start == at("2026-12-03", "08:00")


@pytest.mark.parametrize(
    ("gap_days", "expected_sim"),
    [
        (0, at("2026-12-01", "08:30")),  # the same day, once the procedure is over
        (1, at("2026-12-02", "08:00")),
        (7, at("2026-12-08", "08:00")),  # the procedure Tuesday 1, the simulation Tuesday 8
    ],
)
def test_procedure_gap(gap_days: int, expected_sim: datetime) -> None:
    need = Need(minutes=30, therapists=2, procedure_minutes=30, gap_days=gap_days)
    slot = earliest_slot(need, world(), now=MONDAY)
    assert slot is not None and slot.procedure is not None
    assert (slot.procedure.start, slot.procedure.proceduralist) == (
        at("2026-12-01", "08:00"),
        "uro",
    )
    assert slot.start == expected_sim


@pytest.mark.parametrize(
    ("proposed", "ok"),
    [
        (at("2026-12-08", "08:00"), True),  # exactly 7 days after Tuesday 1's block
        (at("2026-12-07", "08:00"), False),  # 6 days: too early
    ],
)
def test_procedure_gap_border_for_a_proposed_slot(proposed: datetime, ok: bool) -> None:
    need = Need(minutes=30, therapists=2, procedure_minutes=30, gap_days=7)
    slot, broken = check_slot(need, world(), start=proposed, room="ct1", now=MONDAY)
    assert (slot is not None) is ok
    assert [v.constraint for v in broken] == ([] if ok else ["procedure_gap"])
    if not ok:
        assert "2026-12-08" in broken[0].detail  # says when it could be


def test_a_full_proceduralist_block_pushes_the_procedure_a_week() -> None:
    busy = {"proceduralist:uro": [(at("2026-12-01", "08:00"), at("2026-12-01", "12:00"))]}
    need = Need(minutes=30, therapists=2, procedure_minutes=30, gap_days=1)
    slot = earliest_slot(need, world(busy), now=MONDAY)
    assert slot is not None and slot.procedure is not None
    assert slot.procedure.start == at("2026-12-08", "08:00")
    assert slot.start == at("2026-12-09", "08:00")


@pytest.mark.parametrize(
    ("start", "constraints"),
    [
        (at("2026-12-05", "09:00"), ["closed_day", "opening_hours", "therapists"]),  # Saturday
        (at("2026-12-25", "09:00"), ["closed_day"]),  # Christmas, a Friday
        (at("2026-11-30", "11:45"), ["opening_hours", "therapists"]),  # past closing
        (at("2026-11-30", "10:00"), ["therapists"]),  # only a on shift
        (at("2026-11-27", "09:00"), ["in_the_past"]),
    ],
)
def test_proposed_slot_names_each_broken_constraint(
    start: datetime, constraints: list[str]
) -> None:
    _, broken = check_slot(PLAIN, world(), start=start, room="ct1", now=MONDAY)
    assert [v.constraint for v in broken] == constraints


def test_proposed_slot_in_a_busy_room() -> None:
    busy = {"room:ct1": [(at("2026-11-30", "08:00"), at("2026-11-30", "08:30"))]}
    _, broken = check_slot(
        PLAIN, world(busy), start=at("2026-11-30", "08:15"), room="ct1", now=MONDAY
    )
    assert [v.constraint for v in broken] == ["room_busy"]
    assert "08:00-08:30" in broken[0].detail
    slot, broken = check_slot(
        PLAIN, world(busy), start=at("2026-11-30", "08:30"), room="ct1", now=MONDAY
    )
    assert broken == [] and slot is not None  # adjacent, not overlapping


def test_busy_intervals() -> None:
    b = Busy({"x": [(at("2026-11-30", "09:00"), at("2026-11-30", "10:00"))]})
    assert b.free("x", at("2026-11-30", "08:00"), at("2026-11-30", "09:00"))
    assert b.free("x", at("2026-11-30", "10:00"), at("2026-11-30", "11:00"))
    assert not b.free("x", at("2026-11-30", "09:59"), at("2026-11-30", "11:00"))
    assert not b.free("x", at("2026-11-30", "08:00"), at("2026-11-30", "12:00"))
    assert b.free("y", at("2026-11-30", "08:00"), at("2026-11-30", "12:00"))


DEVICES = {
    "mask": DeviceType("mask", 5, fabricated=True),
    "knee": DeviceType("knee", 2),
}


@pytest.mark.parametrize(
    ("req", "minutes", "complexity"),
    [
        (Requirements(), 30, "simple"),
        (Requirements(immobilization=("knee",)), 30, "intermediate"),
        (Requirements(four_d_ct=True), 45, "intermediate"),
        (Requirements(immobilization=("mask",)), 50, "complex"),
        (Requirements(iv_contrast=True), 45, "complex"),
        (Requirements(immobilization=("mask",), four_d_ct=True, iv_contrast=True), 80, "complex"),
        (Requirements(fiducials=True), 30, "complex"),
    ],
)
def test_duration_and_complexity(req: Requirements, minutes: int, complexity: str) -> None:
    assert domain.duration_minutes(req, DEVICES, domain.Durations()) == minutes
    assert domain.complexity(req, DEVICES) == complexity


NOW = at("2026-11-30", "07:00")
EGFR_SITE = SitePolicy(egfr_required=True)
ANY_SITE = SitePolicy()


def reasons(
    req: Requirements,
    *,
    site: SitePolicy = ANY_SITE,
    consents: tuple[Consent, ...] = (),
    labs: tuple[Lab, ...] = (),
    free: dict[str, int] | None = None,
    proceduralists: int = 1,
) -> list[str]:
    return domain.blocking(
        req,
        site=site,
        consents=consents,
        labs=labs,
        free_units=free if free is not None else {"mask": 1, "knee": 2},
        proceduralists=proceduralists,
        rooms=1,
        now=NOW,
        policy=Policy(egfr_max_age_days=30, egfr_min=30.0),
    )


CONSENT = Consent("iv_contrast", NOW - timedelta(days=1))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["iv_contrast_consent"]),
        ({"consents": (CONSENT,)}, []),
        ({"consents": (Consent("simulation", NOW),)}, ["iv_contrast_consent"]),
        ({"consents": (CONSENT,), "site": EGFR_SITE}, ["egfr"]),
        # exactly 30 days old is still recent; a second more is not
        (
            {
                "consents": (CONSENT,),
                "site": EGFR_SITE,
                "labs": (Lab("egfr", 80, NOW - timedelta(days=30)),),
            },
            [],
        ),
        (
            {
                "consents": (CONSENT,),
                "site": EGFR_SITE,
                "labs": (Lab("egfr", 80, NOW - timedelta(days=30, seconds=1)),),
            },
            ["egfr"],
        ),
        (
            {"consents": (CONSENT,), "site": EGFR_SITE, "labs": (Lab("egfr", 29.9, NOW),)},
            ["egfr_low"],
        ),
        # the latest value counts
        (
            {
                "consents": (CONSENT,),
                "site": EGFR_SITE,
                "labs": (Lab("egfr", 20, NOW - timedelta(days=5)), Lab("egfr", 45, NOW)),
            },
            [],
        ),
    ],
)
def test_contrast_prerequisites(kwargs: dict[str, object], expected: list[str]) -> None:
    assert reasons(Requirements(iv_contrast=True), **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("free", "expected"), [(1, []), (0, ["device_stock"])])
def test_device_stock(free: int, expected: list[str]) -> None:
    assert reasons(Requirements(immobilization=("mask",)), free={"mask": free}) == expected


def test_procedure_needs_a_proceduralist() -> None:
    assert reasons(Requirements(spaceoar=True), proceduralists=0) == ["no_proceduralist"]
    assert reasons(Requirements(spaceoar=True)) == []


def test_first_free_unit() -> None:
    assert domain.first_free_unit(3, [1]) == 0
    assert domain.first_free_unit(3, [0, 1]) == 2
    assert domain.first_free_unit(2, [0, 1]) is None
    assert domain.first_free_unit(0, []) is None


def test_the_horizon_counts_from_now() -> None:
    """The service reads what is taken up to now + horizon; nothing is proposed past it, even
    after a procedure's gap or an earliest date."""
    small = World(
        calendar=world().calendar,
        rooms=world().rooms,
        therapists=world().therapists,
        proceduralists=world().proceduralists,
        horizon_days=4,
    )
    gap = Need(minutes=30, therapists=2, procedure_minutes=30, gap_days=7)
    assert earliest_slot(gap, small, now=MONDAY) is None
    late = Need(minutes=30, therapists=2, earliest=date(2026, 12, 9))
    assert earliest_slot(late, small, now=MONDAY) is None
    slot = earliest_slot(
        Need(minutes=30, therapists=2, earliest=date(2026, 12, 4)), small, now=MONDAY
    )
    assert slot is not None and slot.start == at("2026-12-04", "08:00")
