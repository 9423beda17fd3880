"""The earliest-slot search and the check of a proposed slot: pure functions over plain data
(rooms, staff windows, what is already taken, the clinic calendar, ``now``). The service
loads the world once per booking and lets the database guard the race (``store``)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from shared.calendar import ClinicCalendar, local_midnight

from .domain import Room, Staff, Window

Interval = tuple[datetime, datetime]


class Busy:
    """What each resource (``room:ID``, ``therapist:ID``, ``proceduralist:ID``) already has,
    as sorted, non-overlapping [start, end) intervals (the database guarantees they do not
    overlap), so an overlap test is one binary search."""

    def __init__(self, taken: Mapping[str, Iterable[Interval]] | None = None) -> None:
        self._starts: dict[str, list[datetime]] = {}
        self._ends: dict[str, list[datetime]] = {}
        for key, intervals in (taken or {}).items():
            ordered = sorted(intervals)
            self._starts[key] = [s for s, _ in ordered]
            self._ends[key] = [e for _, e in ordered]

    def add(self, key: str, start: datetime, end: datetime) -> None:
        starts = self._starts.setdefault(key, [])
        ends = self._ends.setdefault(key, [])
        i = bisect_left(starts, start)
        starts.insert(i, start)
        ends.insert(i, end)

    def copy(self) -> Busy:
        out = Busy()
        out._starts = {k: list(v) for k, v in self._starts.items()}
        out._ends = {k: list(v) for k, v in self._ends.items()}
        return out

    def free(self, key: str, start: datetime, end: datetime) -> bool:
        starts = self._starts.get(key)
        if not starts:
            return True
        i = bisect_left(starts, end) - 1  # the last interval starting before ``end``
        if i < 0:
            return True
        # Intervals of one resource never overlap, so their ends are sorted like their starts:
        # the latest one starting before ``end`` is the only one that can reach past ``start``.
        return self._ends[key][i] <= start

    def conflicts(self, key: str, start: datetime, end: datetime) -> list[Interval]:
        starts = self._starts.get(key, [])
        ends = self._ends.get(key, [])
        return [(s, e) for s, e in zip(starts, ends, strict=True) if s < end and start < e]


@dataclass(frozen=True)
class World:
    """Everything the search reads."""

    calendar: ClinicCalendar
    rooms: Sequence[Room]
    therapists: Sequence[Staff]
    proceduralists: Sequence[Staff]
    busy: Busy = field(default_factory=Busy)
    step_minutes: int = 15
    horizon_days: int = 90


@dataclass(frozen=True)
class Need:
    """What one simulation needs."""

    minutes: int
    therapists: int
    earliest: date | None = None
    procedure_minutes: int | None = None  # None: no proceduralist appointment
    gap_days: int = 0  # the procedure at least this many days before the simulation


@dataclass(frozen=True)
class Procedure:
    start: datetime
    end: datetime
    proceduralist: str


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime
    room: str
    therapists: tuple[str, ...]
    procedure: Procedure | None = None


@dataclass(frozen=True)
class Violation:
    constraint: str
    detail: str


def _windows(windows: Iterable[Window], day: date) -> list[Window]:
    return [w for w in windows if w.weekday == day.weekday()]


def _at(day: date, moment: time, calendar: ClinicCalendar) -> datetime:
    return datetime.combine(day, moment, tzinfo=calendar.zone)


def _starts(
    day: date, window: Window, minutes: int, not_before: datetime, world: World
) -> Iterable[datetime]:
    step = timedelta(minutes=world.step_minutes)
    length = timedelta(minutes=minutes)
    start = _at(day, window.start, world.calendar)
    close = _at(day, window.end, world.calendar)
    if start < not_before:
        # Jump to the first grid point at or after ``not_before`` (whole steps from opening).
        steps = -(-(not_before - start) // step)
        start += steps * step
    while start + length <= close:
        yield start
        start += step


def _covers(staff: Staff, start: datetime, end: datetime, calendar: ClinicCalendar) -> bool:
    local_start = start.astimezone(calendar.zone)
    local_end = end.astimezone(calendar.zone)
    if local_start.date() != local_end.date() and local_end.time() != time(0):
        return False
    return any(
        w.start <= local_start.time() and (local_end.time() <= w.end)
        for w in _windows(staff.windows, local_start.date())
    )


def free_therapists(start: datetime, end: datetime, world: World) -> list[str]:
    return [
        t.id
        for t in world.therapists
        if _covers(t, start, end, world.calendar)
        and world.busy.free(f"therapist:{t.id}", start, end)
    ]


def _days(first: date, world: World, last: date | None = None) -> Iterable[date]:
    """Business days from ``first``, up to ``last`` or the horizon after ``first``."""
    last = last or first + timedelta(days=world.horizon_days)
    day = first
    while day <= last:
        if world.calendar.is_business_day(day):
            yield day
        day += timedelta(days=1)


def earliest_procedure(
    minutes: int,
    world: World,
    *,
    not_before: datetime,
    latest_end: datetime | None = None,
    until: date | None = None,
) -> Procedure | None:
    """The first free stretch of ``minutes`` in any proceduralist's blocks, on a business day,
    ending by ``latest_end`` when given."""
    first = not_before.astimezone(world.calendar.zone).date()
    length = timedelta(minutes=minutes)
    for day in _days(first, world, until):
        if latest_end is not None and local_midnight(day, world.calendar.zone) >= latest_end:
            return None
        best: Procedure | None = None
        for person in world.proceduralists:
            for window in _windows(person.windows, day):
                for start in _starts(day, window, minutes, not_before, world):
                    if best is not None and start >= best.start:
                        break
                    if latest_end is not None and start + length > latest_end:
                        break
                    if world.busy.free(f"proceduralist:{person.id}", start, start + length):
                        best = Procedure(start, start + length, person.id)
                        break
        if best is not None:
            return best
    return None


def _sim_not_before(procedure: Procedure, gap_days: int, world: World) -> datetime:
    """A simulation at least ``gap_days`` calendar days after the procedure's day (0: the
    same day, once the procedure has ended)."""
    day = procedure.start.astimezone(world.calendar.zone).date() + timedelta(days=gap_days)
    return max(procedure.end, local_midnight(day, world.calendar.zone))


def _procedure_latest_end(start: datetime, gap_days: int, world: World) -> datetime:
    """The latest a procedure may end for a simulation at ``start``: on or before the day
    ``gap_days`` before it, and before the simulation itself."""
    day = start.astimezone(world.calendar.zone).date() - timedelta(days=gap_days - 1)
    return min(start, local_midnight(day, world.calendar.zone)) if gap_days else start


def earliest_slot(
    need: Need, world: World, *, now: datetime, rooms: Sequence[str] | None = None
) -> Slot | None:
    """The earliest simulation that satisfies every constraint: a business day (public
    holidays and closures from the clinic calendar), within a room's opening hours with the
    room free, ``need.therapists`` therapists on shift and free for the whole slot, not before
    ``need.earliest``, and with a proceduralist appointment at least ``need.gap_days`` days
    before it when one is needed. None when nothing fits within the horizon."""
    not_before = now
    if need.earliest is not None:
        not_before = max(not_before, local_midnight(need.earliest, world.calendar.zone))
    procedure: Procedure | None = None
    if need.procedure_minutes is not None:
        # The earliest procedure is never worse: any simulation after a later one is also
        # far enough after the earliest one.
        until = now.astimezone(world.calendar.zone).date() + timedelta(days=world.horizon_days)
        procedure = earliest_procedure(
            need.procedure_minutes, world, not_before=not_before, until=until
        )
        if procedure is None:
            return None
        not_before = max(not_before, _sim_not_before(procedure, need.gap_days, world))
    length = timedelta(minutes=need.minutes)
    candidates = [r for r in world.rooms if rooms is None or r.id in rooms]
    # The horizon counts from now, not from the procedure: what was read of the calendar
    # (the claims) ends there.
    last = now.astimezone(world.calendar.zone).date() + timedelta(days=world.horizon_days)
    for day in _days(not_before.astimezone(world.calendar.zone).date(), world, last):
        best: Slot | None = None
        for room in candidates:
            for window in _windows(room.hours, day):
                for start in _starts(day, window, need.minutes, not_before, world):
                    if best is not None and start >= best.start:
                        break
                    end = start + length
                    if not world.busy.free(f"room:{room.id}", start, end):
                        continue
                    staff = free_therapists(start, end, world)
                    if len(staff) >= need.therapists:
                        best = Slot(start, end, room.id, tuple(staff[: need.therapists]))
                        break
        if best is not None:
            return Slot(best.start, best.end, best.room, best.therapists, procedure)
    return None


def check_slot(
    need: Need, world: World, *, start: datetime, room: str, now: datetime
) -> tuple[Slot | None, list[Violation]]:
    """A proposed slot: the slot when it satisfies every constraint, else each constraint it
    breaks (the API's 409)."""
    zone = world.calendar.zone
    end = start + timedelta(minutes=need.minutes)
    day = start.astimezone(zone).date()
    out: list[Violation] = []
    if start < now:
        out.append(Violation("in_the_past", f"{start.isoformat()} has passed"))
    if need.earliest is not None and day < need.earliest:
        out.append(Violation("earliest_date", f"the request asks for {need.earliest} or later"))
    if not world.calendar.is_business_day(day):
        out.append(
            Violation("closed_day", f"{day} is not a business day (weekend, holiday or closure)")
        )
    by_id = {r.id: r for r in world.rooms}
    the_room = by_id[room]
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    if not any(
        w.start <= local_start.time()
        and local_end.time() <= w.end
        and local_start.date() == local_end.date()
        for w in _windows(the_room.hours, day)
    ):
        hours = ", ".join(f"{w.start:%H:%M}-{w.end:%H:%M}" for w in _windows(the_room.hours, day))
        out.append(
            Violation(
                "opening_hours",
                f"{local_start:%H:%M}-{local_end:%H:%M} is outside room {room}'s hours on "
                f"{day:%A} ({hours or 'closed'})",
            )
        )
    clash = world.busy.conflicts(f"room:{room}", start, end)
    if clash:
        out.append(
            Violation(
                "room_busy",
                f"room {room} is booked "
                + ", ".join(
                    f"{s.astimezone(zone):%H:%M}-{e.astimezone(zone):%H:%M}" for s, e in clash
                ),
            )
        )
    staff = free_therapists(start, end, world)
    if len(staff) < need.therapists:
        out.append(
            Violation(
                "therapists",
                f"{need.therapists} therapists needed; {len(staff)} on shift and free "
                f"({', '.join(staff) or 'none'})",
            )
        )
    procedure: Procedure | None = None
    if need.procedure_minutes is not None:
        not_before = now
        if need.earliest is not None:
            not_before = max(not_before, local_midnight(need.earliest, zone))
        latest_end = _procedure_latest_end(start, need.gap_days, world)
        procedure = earliest_procedure(
            need.procedure_minutes, world, not_before=not_before, latest_end=latest_end
        )
        if procedure is None:
            first = earliest_procedure(need.procedure_minutes, world, not_before=not_before)
            hint = (
                f"; the first free block is {first.start.astimezone(zone):%Y-%m-%d %H:%M}, "
                f"so the simulation can be from "
                f"{_sim_not_before(first, need.gap_days, world).astimezone(zone):%Y-%m-%d}"
                if first
                else "; no proceduralist block is free within the horizon"
            )
            out.append(
                Violation(
                    "procedure_gap",
                    f"the procedure must be at least {need.gap_days} days before the "
                    f"simulation and no proceduralist block is free by then{hint}",
                )
            )
    if out:
        return None, out
    return Slot(start, end, room, tuple(staff[: need.therapists]), procedure), []
