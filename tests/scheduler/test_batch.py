"""Batch mode, pure: CP-SAT over a week against one-at-a-time booking on the same queue. The
batch is never worse on urgency-weighted waiting, books no room or therapist twice, and beats
first-come-first-served where an urgent request arrived after routine ones."""

from __future__ import annotations

import itertools
import random
from datetime import date, datetime, timedelta

from services.scheduler.batch import Item, schedule_week
from services.scheduler.slots import Need, Slot
from tests.events import at
from tests.scheduler.test_slots import world

MONDAY = at("2026-11-30", "07:00")
WEEK_END = MONDAY + timedelta(days=7)


def item(rid: str, weight: float, order: int, minutes: int = 30, **need: object) -> Item:
    return Item(
        request_id=rid,
        need=Need(minutes=minutes, therapists=2, **need),  # type: ignore[arg-type]
        weight=weight,
        requested_at=MONDAY - timedelta(days=1),
        order=order,
    )


def assert_no_double_booking(placed: dict[str, Slot]) -> None:
    held: dict[str, list[tuple[datetime, datetime]]] = {}
    for slot in placed.values():
        for key in (f"room:{slot.room}", *(f"therapist:{t}" for t in slot.therapists)):
            held.setdefault(key, []).append((slot.start, slot.end))
    for key, intervals in held.items():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert end <= start, key


def test_an_urgent_request_behind_routine_ones_goes_first() -> None:
    # The test world: one room 08:00-12:00, two therapists on shift until 10:00 on weekdays
    # (and a third on Wednesdays): four 30-minute simulations fit each morning.
    queue = [item(f"routine-{n}", 1.0, n) for n in range(8)] + [item("emergent", 10.0, 8)]
    result = schedule_week(queue, world(), now=MONDAY, end=WEEK_END, time_limit_s=3)
    greedy = result.one_at_a_time
    assert greedy.slots["emergent"].start > at("2026-11-30", "10:00")  # behind the routine ones
    assert result.used == "batch"
    assert result.batch.slots["emergent"].start == at("2026-11-30", "08:00")
    assert result.batch.weighted_wait_h < greedy.weighted_wait_h
    assert len(result.batch.slots) == len(greedy.slots) == 9
    assert_no_double_booking(result.batch.slots)


def test_never_worse_than_one_at_a_time_on_a_random_queue() -> None:
    rng = random.Random(7)
    queue = [
        item(
            f"r{n}",
            rng.choice([1.0, 3.0, 10.0]),
            n,
            minutes=rng.choice([30, 45, 60]),
            earliest=rng.choice([None, date(2026, 12, 2)]),
        )
        for n in range(30)
    ]
    result = schedule_week(queue, world(), now=MONDAY, end=WEEK_END, time_limit_s=3)
    assert result.batch.weighted_wait_h <= result.one_at_a_time.weighted_wait_h
    assert_no_double_booking(result.batch.slots)
    for rid, slot in result.batch.slots.items():
        need = next(i.need for i in queue if i.request_id == rid)
        if need.earliest:
            assert slot.start.date() >= need.earliest
    # A week of one room cannot take 30: the rest are reported, not dropped silently.
    assert len(result.batch.slots) + len(result.batch.unscheduled) == 30


def test_procedures_are_placed_before_the_gap() -> None:
    queue = [item("spaceoar", 3.0, 0, procedure_minutes=30, gap_days=1)]
    result = schedule_week(queue, world(), now=MONDAY, end=WEEK_END, time_limit_s=5)
    slot = result.batch.slots["spaceoar"]
    assert slot.procedure is not None and slot.procedure.start == at("2026-12-01", "08:00")
    assert slot.start == at("2026-12-02", "08:00")
