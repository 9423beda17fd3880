"""When a course ends, and how many per-five-fraction units it has earned.

A course ends when its planned fractions are delivered, when an RT Treatment Summary Record says
COMPLETED or STOPPED, when staff close it, or after ``inactivity_days`` without treatment. Each
end is a *closure point*; treatment after it reopens the course. Units are the running maximum
over closure points, so a course that resumes is charged only the difference and never less
than was already earned (CMS Pub 100-04 Ch. 13 s. 70: 8 fractions billed as 2 units, then 2 more
fractions, stay 2 units; no automatic refund).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from services.billing.domain.facts import CourseFacts, PlanTechnique
from services.billing.domain.policy import BillingSettings, RemainderPolicy
from services.billing.domain.sessions import Session

ClosureReason = Literal["planned_delivered", "summary_record", "staff", "inactivity"]
CLOSING_STATUSES = frozenset({"COMPLETED", "STOPPED"})


@dataclass(frozen=True)
class ClosurePoint:
    on: date
    count: int  # sessions delivered by then
    reason: ClosureReason
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class CourseStatus:
    state: Literal["open", "closed"]
    sessions: int
    closures: tuple[ClosurePoint, ...]  # in date order

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def last_closure(self) -> ClosurePoint | None:
        return self.closures[-1] if self.closures else None


def course_status(
    course: CourseFacts,
    sessions: Sequence[Session],
    *,
    as_of: date,
    settings: BillingSettings,
    counted: Sequence[Session] | None = None,
) -> CourseStatus:
    """``counted`` are the sessions that count toward units (external beam); ``sessions`` all
    of them decide activity and the closure dates."""
    counted = list(sessions if counted is None else counted)
    days = [s.day for s in sessions]

    def count_by(day: date) -> int:
        return sum(1 for s in counted if s.day <= day)

    points: list[ClosurePoint] = []
    for summary in course.summaries:
        if (summary.current_status or "").upper() in CLOSING_STATUSES:
            points.append(
                ClosurePoint(
                    summary.recorded_on,
                    count_by(summary.recorded_on),
                    "summary_record",
                    (summary.event_id,),
                )
            )
    for closure in course.closures:
        points.append(
            ClosurePoint(
                closure.closed_on, count_by(closure.closed_on), "staff", (closure.reference,)
            )
        )
    for before, after in itertools.pairwise(days):
        if (after - before).days > settings.inactivity_days:
            points.append(ClosurePoint(before, count_by(before), "inactivity"))
    if days and (as_of - days[-1]).days > settings.inactivity_days:
        points.append(ClosurePoint(days[-1], count_by(days[-1]), "inactivity"))
    delivered_on = _planned_delivered_on(course.plans, sessions)
    if delivered_on is not None:
        points.append(ClosurePoint(delivered_on, count_by(delivered_on), "planned_delivered"))

    points = sorted(set(points), key=lambda p: (p.on, p.count, p.reason, p.evidence))
    state: Literal["open", "closed"] = "open"
    if points and (not days or days[-1] <= points[-1].on):
        state = "closed"
    return CourseStatus(state=state, sessions=len(counted), closures=tuple(points))


def _planned_delivered_on(
    plans: Sequence[PlanTechnique], sessions: Sequence[Session]
) -> date | None:
    """The day every fraction group of the current plans (those no re-plan superseded) had
    delivered its planned fractions, or None."""
    superseded = {uid for p in plans for uid in p.predecessor_uids}
    targets = {
        (p.uid, group): planned
        for p in plans
        if p.uid not in superseded
        for group, planned in p.fractions_planned
        if planned > 0
    }
    if not targets:
        return None
    seen: dict[tuple[str, int], set[int | None]] = {k: set() for k in targets}
    for session in sessions:
        for fraction in session.fractions:
            plan_uid, group, number = fraction.key
            if (plan_uid, group) in seen:
                seen[(plan_uid, group)].add(number)
        if all(len(seen[k]) >= planned for k, planned in targets.items()):
            return session.day
    return None


# ---------------------------------------------------------------- unit counts


def closed_units(count: int, remainder: RemainderPolicy = "mirror_77427") -> int:
    """Units of a per-five-fraction code at a course end.

    CMS Pub 100-04 Ch. 13 s. 70: one 77427 per five fractions; 3-4 leftover fractions at the end
    earn one more, 1-2 do not (18 -> 4, 62 -> 12, 8 -> 2, 6 -> 1)."""
    full, rest = divmod(count, 5)
    if remainder == "mirror_77427":
        return full + (1 if rest >= 3 else 0)
    if remainder == "any_remainder":
        return full + (1 if rest else 0)
    return full


@dataclass(frozen=True)
class UnitBlock:
    """One earned unit: the ``index``-th (1-based), covering sessions ``first``..``last``
    (1-based positions in the counted sessions)."""

    index: int
    first: int
    last: int


def earned_blocks(
    status: CourseStatus, remainder: RemainderPolicy = "mirror_77427", minimum: int = 0
) -> list[UnitBlock]:
    """Every unit earned so far: full blocks of five as they complete, a remainder unit at each
    closure point, the running maximum over time. ``minimum``: closure points with fewer
    sessions earn nothing (77427 is not billed for a 1-2 fraction course)."""
    total = status.sessions
    earned_at: dict[int, int] = {k: 5 * k for k in range(1, total // 5 + 1)}
    for point in status.closures:
        if point.count < minimum:
            continue
        units = closed_units(point.count, remainder)
        for k in range(1, units + 1):
            earned_at[k] = min(earned_at.get(k, point.count), max(point.count, 1))
    return [
        UnitBlock(index=k, first=5 * (k - 1) + 1, last=min(earned_at[k], max(total, 1)))
        for k in sorted(earned_at)
    ]
