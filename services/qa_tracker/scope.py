"""Which part of a patient's timeline a batch may have changed (a ``Scope``), and how it is
widened before a rebuild.

Whole clinic days, since imaging and registrations match fractions of the same day, widened
until they hold whole fractions (an interrupted fraction can continue on another day) and the
days of the series registrations name (a CBCT can be matched offline the next day). Pure: the
rows the widening needs are read by ``store.rebuild_queries``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from shared.calendar import local_midnight


class Span(Protocol):
    """A stored fraction's key and span (a row of the fraction timeline)."""

    key: str
    treated_at: datetime
    ended_at: datetime


@dataclass
class Scope:
    """The part of one patient's timeline a batch may have changed.

    ``lo``/``hi`` first collect the earliest and latest fact times; ``to_days`` turns them
    into whole clinic days [lo, hi), the unit the matching rules work in, and ``cover``
    widens them to a fraction's days. ``whole`` means every fraction of the patient.
    """

    whole: bool = False
    lo: datetime | None = None
    hi: datetime | None = None
    keys: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    # Series recorded by the batch: a registration naming one leaves the session it matched
    # before, possibly on another day.
    arrived: set[str] = field(default_factory=set)

    def add(self, *times: datetime | None) -> None:
        for t in times:
            if t is not None:
                self.lo = t if self.lo is None or t < self.lo else self.lo
                self.hi = t if self.hi is None or t > self.hi else self.hi

    def to_days(self, zone: ZoneInfo) -> None:
        if self.lo is not None and self.hi is not None:
            first, last = self.lo, self.hi
            self.lo = self.hi = None
            self.cover(first, last, zone)

    def overlaps(self, start: datetime, end: datetime) -> bool:
        if self.whole:
            return True
        return self.lo is not None and self.hi is not None and start < self.hi and end >= self.lo

    def contains(self, t: datetime) -> bool:
        return self.overlaps(t, t)

    @property
    def windowed(self) -> bool:
        """A window of days (not the whole patient, not empty)."""
        return not self.whole and self.lo is not None

    def cover(self, start: datetime, end: datetime, zone: ZoneInfo) -> bool:
        """Widen to the whole days of [start, end]; True if that grew the scope."""
        if self.whole:
            return False
        lo = local_midnight(start.astimezone(zone).date(), zone)
        hi = local_midnight(end.astimezone(zone).date() + timedelta(days=1), zone)
        grew = self.lo is None or self.hi is None or lo < self.lo or hi > self.hi
        self.lo = lo if self.lo is None else min(lo, self.lo)
        self.hi = hi if self.hi is None else max(hi, self.hi)
        return grew


def named_series(scopes: Mapping[str, Scope]) -> set[str]:
    return {s for scope in scopes.values() for s in scope.series}


def arrived_series(scopes: Mapping[str, Scope]) -> set[str]:
    return {s for scope in scopes.values() for s in scope.arrived}


def widen(
    scopes: Mapping[str, Scope],
    *,
    named_days: Iterable[Any],
    matched_before: Iterable[Any],
    timeline: Mapping[str, Sequence[Span]],
    zone: ZoneInfo,
) -> None:
    """Turn each scope into whole days holding whole fractions.

    ``named_days``: (patient_id, acquired_at) of the series the batch's registrations name;
    ``matched_before``: (patient_id, content_at, acquired_at) of registrations naming a newly
    arrived series and of the session they matched until now (they move to the named one);
    ``timeline``: every stored fraction's span, by patient.
    """
    for row in named_days:
        if row.patient_id in scopes:
            scopes[row.patient_id].add(row.acquired_at)
    for row in matched_before:
        if row.patient_id in scopes:
            scopes[row.patient_id].add(row.content_at, row.acquired_at)
    for scope in scopes.values():
        scope.to_days(zone)
    for patient_id, scope in scopes.items():
        grew = True
        while grew:
            grew = False
            for f in timeline.get(patient_id, ()):
                if f.key in scope.keys or scope.overlaps(f.treated_at, f.ended_at):
                    grew |= scope.cover(f.treated_at, f.ended_at, zone)


def split_timeline(scope: Scope, timeline: Sequence[Span]) -> tuple[list[Span], Span | None]:
    """The stored fractions inside the scope, and the last one before it (whose next
    fraction, so due time, the scope can change)."""
    inside = [f for f in timeline if scope.overlaps(f.treated_at, f.ended_at)]
    previous = None
    if scope.windowed:
        before = [
            f
            for f in timeline
            if f.treated_at < scope.lo and not scope.overlaps(f.treated_at, f.ended_at)  # type: ignore[operator]
        ]
        if before:
            previous = max(before, key=lambda f: (f.treated_at, f.key))
    return inside, previous
