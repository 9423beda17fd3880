"""Batch mode: schedule the whole open queue for the coming week at once, minimizing
urgency-weighted waiting, with OR-Tools CP-SAT; and the one-at-a-time booking it is compared
with, on the same queue and the same world. Pure over plain data (no database, no clock).

The model, on the slot grid (``World.step_minutes``):

- one optional start per request among its candidates: a room, on a business day, inside the
  room's hours, the room free, not before the request may be simulated (its earliest date,
  and its proceduralist appointment's gap, the appointment placed first in urgency order);
- each room holds one simulation at a time (no-overlap of optional intervals);
- at every grid point the therapists the running simulations need are at most the
  therapists on shift and free then (a cumulative per time point);
- minimize the sum over requests of weight x (start - requested), a request left out
  costing the week's end plus a day.

The count per time point does not name therapists; they are assigned afterwards, in start
order, to people on shift and free for the whole slot. Should that fail for a simulation, or
the solver find nothing better, the one-at-a-time result is returned: the batch is never worse
than booking one at a time."""

from __future__ import annotations

import time as clock
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import slots
from .domain import Room
from .slots import Need, Procedure, Slot, World


@dataclass(frozen=True)
class Item:
    request_id: str
    need: Need
    weight: float
    requested_at: datetime  # when the wait began
    order: int = 0  # one-at-a-time order (the queue's)


@dataclass
class Outcome:
    slots: dict[str, Slot] = field(default_factory=dict)
    weighted_wait_h: float = 0.0
    unscheduled: list[str] = field(default_factory=list)


@dataclass
class BatchResult:
    batch: Outcome
    one_at_a_time: Outcome
    solver_status: str
    seconds: float
    used: str  # "batch" or "one_at_a_time"
    note: str = ""  # why the batch's own answer was not used


def _cost(items: Sequence[Item], placed: dict[str, Slot], end: datetime) -> tuple[float, list[str]]:
    """Urgency-weighted wait in hours; a request left out waits until the week's end + a day."""
    total, missing = 0.0, []
    for item in items:
        slot = placed.get(item.request_id)
        until = slot.start if slot else end + timedelta(days=1)
        if slot is None:
            missing.append(item.request_id)
        total += item.weight * max(0.0, (until - item.requested_at).total_seconds() / 3600)
    return round(total, 2), missing


def _with(world: World, busy: slots.Busy) -> World:
    return World(
        calendar=world.calendar,
        rooms=world.rooms,
        therapists=world.therapists,
        proceduralists=world.proceduralists,
        busy=busy,
        step_minutes=world.step_minutes,
        horizon_days=world.horizon_days,
    )


def _hold(busy: slots.Busy, slot: Slot) -> None:
    busy.add(f"room:{slot.room}", slot.start, slot.end)
    for t in slot.therapists:
        busy.add(f"therapist:{t}", slot.start, slot.end)
    if slot.procedure:
        p = slot.procedure
        busy.add(f"proceduralist:{p.proceduralist}", p.start, p.end)


def one_at_a_time(items: Sequence[Item], world: World, *, now: datetime, end: datetime) -> Outcome:
    """Each request in queue order gets the earliest slot left (what booking them one by one
    through ``POST /book`` does), within the week."""
    busy = world.busy.copy()
    placed: dict[str, Slot] = {}
    for item in sorted(items, key=lambda i: i.order):
        slot = slots.earliest_slot(item.need, _with(world, busy), now=now)
        if slot is not None and slot.end <= end:
            placed[item.request_id] = slot
            _hold(busy, slot)
    cost, missing = _cost(items, placed, end)
    return Outcome(placed, cost, missing)


def schedule_week(
    items: Sequence[Item],
    world: World,
    *,
    now: datetime,
    end: datetime,
    time_limit_s: float = 20.0,
    workers: int = 2,
) -> BatchResult:
    from ortools.sat.python import cp_model

    started = clock.perf_counter()
    greedy = one_at_a_time(items, world, now=now, end=end)
    busy = world.busy.copy()
    step = timedelta(minutes=world.step_minutes)

    # Proceduralist appointments first: they only move a request's earliest start, and the
    # batch then places the simulations. The one-at-a-time answer's appointments are kept, so
    # that answer is a solution of the model (the solver's starting point); the others go,
    # most urgent first, into what is left of the blocks.
    procedures: dict[str, Procedure] = {
        rid: slot.procedure for rid, slot in greedy.slots.items() if slot.procedure
    }
    for p in procedures.values():
        busy.add(f"proceduralist:{p.proceduralist}", p.start, p.end)
    not_before: dict[str, datetime] = {}
    for item in sorted(items, key=lambda i: (-i.weight, i.order)):
        first = now
        if item.need.earliest is not None:
            first = max(first, world.calendar.midnight(item.need.earliest))
        if item.need.procedure_minutes is not None:
            placed = procedures.get(item.request_id) or slots.earliest_procedure(
                item.need.procedure_minutes, _with(world, busy), not_before=first
            )
            if placed is None:
                continue
            if item.request_id not in procedures:
                procedures[item.request_id] = placed
                busy.add(f"proceduralist:{placed.proceduralist}", placed.start, placed.end)
            first = max(first, slots._sim_not_before(placed, item.need.gap_days, world))
        not_before[item.request_id] = first

    # The grid of the week and, per point, the therapists on shift and free.
    grid_start = now.replace(second=0, microsecond=0)
    grid_start += timedelta(minutes=(-grid_start.minute) % world.step_minutes)
    points: list[datetime] = []
    t = grid_start
    while t < end:
        points.append(t)
        t += step
    index = {p: i for i, p in enumerate(points)}
    capacity = [len(slots.free_therapists(p, p + step, _with(world, busy))) for p in points]

    model = cp_model.CpModel()
    starts: dict[str, tuple[cp_model.IntVar, dict[str, cp_model.IntVar]]] = {}
    by_room: dict[str, list[cp_model.IntervalVar]] = {}
    staffed: list[tuple[cp_model.IntervalVar, int]] = []
    objective = []
    horizon_cost = int((end + timedelta(days=1) - grid_start).total_seconds() // 60)
    for item in items:
        first = not_before.get(item.request_id)
        if first is None:
            continue
        steps = -(-item.need.minutes // world.step_minutes)
        allowed: dict[str, list[int]] = {}
        for room in world.rooms:
            for i, p in enumerate(points):
                if p < first or i + steps > len(points):
                    continue
                e = p + timedelta(minutes=item.need.minutes)
                if not _inside(room, p, e, world) or not busy.free(f"room:{room.id}", p, e):
                    continue
                if min(capacity[i : i + steps]) < item.need.therapists:
                    continue
                allowed.setdefault(room.id, []).append(i)
        if not allowed:
            continue
        # One start per request; a presence literal per room it may take, each with its own
        # optional interval on that start (the room's no-overlap) and the starts it allows.
        every = sorted({i for values in allowed.values() for i in values})
        start = model.new_int_var_from_domain(
            cp_model.Domain.from_values(every), f"start_{item.request_id}"
        )
        present: dict[str, cp_model.IntVar] = {}
        for room_id, values in allowed.items():
            lit = model.new_bool_var(f"in_{item.request_id}_{room_id}")
            model.add_linear_expression_in_domain(
                start, cp_model.Domain.from_values(values)
            ).only_enforce_if(lit)
            interval = model.new_optional_fixed_size_interval_var(
                start, steps, lit, f"iv_{item.request_id}_{room_id}"
            )
            by_room.setdefault(room_id, []).append(interval)
            staffed.append((interval, item.need.therapists))
            present[room_id] = lit
        model.add_at_most_one(present.values())
        starts[item.request_id] = (start, present)
        weight = round(item.weight * 100)
        base = int((grid_start - item.requested_at).total_seconds() // 60)
        scheduled = sum(present.values())
        # An unplaced request's start is free: the solver puts it at its first allowed point,
        # a constant; what matters is the week's end it waits to instead.
        objective.append(weight * world.step_minutes * start)
        objective.append(weight * (base + horizon_cost) * (1 - scheduled))
        # Start from the one-at-a-time answer: the solver only ever improves on it.
        hinted = greedy.slots.get(item.request_id)
        if hinted is not None and index.get(hinted.start) is not None:
            model.add_hint(start, index[hinted.start])
            for room_id, lit in present.items():
                model.add_hint(lit, room_id == hinted.room)
        else:
            for lit in present.values():
                model.add_hint(lit, False)
    for intervals in by_room.values():
        model.add_no_overlap(intervals)
    # Therapists: every running simulation's need within what is on shift and free, as a
    # cumulative whose capacity dips are fixed intervals taking the difference.
    top = max(capacity, default=0)
    k = 0
    while k < len(points):
        gap = top - capacity[k]
        run = k
        while run < len(points) and top - capacity[run] == gap:
            run += 1
        if gap:
            staffed.append((model.new_fixed_size_interval_var(k, run - k, f"dip_{k}"), gap))
        k = run
    if staffed:
        model.add_cumulative([iv for iv, _ in staffed], [n for _, n in staffed], top)
    model.minimize(sum(objective))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers
    status = solver.solve(model)
    status_name = solver.status_name(status)

    batch = Outcome()
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        chosen = []
        for rid, (start_var, present) in starts.items():
            for room_id, lit in present.items():
                if solver.value(lit):
                    chosen.append((points[solver.value(start_var)], rid, room_id))
        staff = busy.copy()
        items_by_id = {i.request_id: i for i in items}
        ok, note = True, ""
        for start, rid, room_id in sorted(chosen):
            need = items_by_id[rid].need
            e = start + timedelta(minutes=need.minutes)
            people = slots.free_therapists(start, e, _with(world, staff))
            if len(people) < need.therapists:
                ok, note = False, f"no therapists to name for {rid} at {start.isoformat()}"
                break
            slot = Slot(start, e, room_id, tuple(people[: need.therapists]), procedures.get(rid))
            batch.slots[rid] = slot
            _hold(staff, slot)
        if ok:
            batch.weighted_wait_h, batch.unscheduled = _cost(items, batch.slots, end)
        else:
            batch = Outcome(weighted_wait_h=float("inf"))
    else:
        batch.weighted_wait_h, note = float("inf"), f"solver: {status_name}"
    used = "batch" if batch.weighted_wait_h <= greedy.weighted_wait_h else "one_at_a_time"
    if used != "batch" and not note:
        note = f"batch {batch.weighted_wait_h} h > one at a time {greedy.weighted_wait_h} h"
    return BatchResult(
        batch=batch if used == "batch" else greedy,
        one_at_a_time=greedy,
        solver_status=status_name,
        seconds=round(clock.perf_counter() - started, 3),
        used=used,
        note=note,
    )


def _inside(room: Room, start: datetime, end: datetime, world: World) -> bool:
    zone = world.calendar.zone
    s, e = start.astimezone(zone), end.astimezone(zone)
    if s.date() != e.date() or not world.calendar.is_business_day(s.date()):
        return False
    return any(
        w.weekday == s.weekday() and w.start <= s.time() and e.time() <= w.end for w in room.hours
    )
