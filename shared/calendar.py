"""The clinic calendar every service shares: its zone, working days, public holidays (the
``holidays`` package) plus the clinic's own closures, business-hour arithmetic and ISO weeks.

Pure over its inputs: no clock. ``clinic_calendar(settings)`` builds the calendar from the
shared settings (``RTOPS_CLINIC_TIMEZONE``, ``RTOPS_CLINIC_CALENDAR``).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shared.settings import RtopsSettings

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ClinicCalendar:
    """When the clinic works: its zone, its working weekdays (0 = Monday) and closed days."""

    zone: ZoneInfo
    # Any container of dates: a frozenset, or a ``holidays`` calendar (which computes the
    # years it is asked about, so a long-running service never runs out of holidays).
    closed_days: Container[date] = frozenset()
    workdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.workdays and day not in self.closed_days

    def local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.zone).date()

    def midnight(self, day: date) -> datetime:
        return local_midnight(day, self.zone)

    def next_business_day(self, day: date) -> date:
        """The first business day after ``day``."""
        day += timedelta(days=1)
        while not self.is_business_day(day):
            day += timedelta(days=1)
        return day

    def business_days(self, start: date, end: date) -> list[date]:
        """Business days in [start, end)."""
        days, day = [], start
        while day < end:
            if self.is_business_day(day):
                days.append(day)
            day += timedelta(days=1)
        return days

    def add_business_hours(self, start: datetime, hours: float) -> datetime:
        return add_business_hours(start, hours, self)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def add_business_hours(start: datetime, hours: float, calendar: ClinicCalendar) -> datetime:
    """``start`` plus ``hours`` of business time: time passes only on business days (whole
    days, in the clinic's zone). A start on a closed day counts from the next business day's
    midnight. Friday 10:00 + 24 h is Monday 10:00; with Monday a holiday, Tuesday 10:00."""
    local = start.astimezone(calendar.zone)
    remaining = timedelta(hours=hours)
    day = local.date()
    cursor = local
    while True:
        if calendar.is_business_day(day):
            day_end = local_midnight(day + timedelta(days=1), calendar.zone)
            available = day_end - cursor
            if remaining <= available:
                return (cursor + remaining).astimezone(start.tzinfo)
            remaining -= available
        day += timedelta(days=1)
        cursor = local_midnight(day, calendar.zone)


def iso_week_bounds(week: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``YYYY-Www`` to [Monday 00:00, next Monday 00:00) in the clinic's zone."""
    try:
        year, number = week.split("-W")
        monday = date.fromisocalendar(int(year), int(number), 1)
    except ValueError as exc:
        raise ValueError(f"week {week!r} is not an ISO week such as 2026-W48") from exc
    start = local_midnight(monday, zone)
    return start, local_midnight(monday + timedelta(days=7), zone)


def iso_week_of(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


class CalendarSpec(BaseModel):
    """The calendar as configured (YAML or the ``RTOPS_CLINIC_CALENDAR`` JSON)."""

    model_config = ConfigDict(extra="forbid")

    holidays_country: str | None = Field(default="US", description="None: no public holidays")
    holidays_subdivision: str | None = None
    closed_days: list[date] = Field(default_factory=list, description="extra clinic closures")
    workdays: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])


class _ClosedDays(Container[date]):
    def __init__(self, public: Container[date] | None, extra: frozenset[date]) -> None:
        self._public = public
        self._extra = extra

    def __contains__(self, day: object) -> bool:
        return day in self._extra or (self._public is not None and day in self._public)


def build_calendar(spec: CalendarSpec, *, zone: str) -> ClinicCalendar:
    import holidays  # computes each year's holidays on first use

    public = (
        holidays.country_holidays(spec.holidays_country, subdiv=spec.holidays_subdivision)
        if spec.holidays_country
        else None
    )
    return ClinicCalendar(
        zone=ZoneInfo(zone),
        closed_days=_ClosedDays(public, frozenset(spec.closed_days)),
        workdays=frozenset(WEEKDAYS.index(d) for d in spec.workdays),
    )


def clinic_calendar(settings: RtopsSettings) -> ClinicCalendar:
    """The clinic's calendar from the shared settings."""
    return build_calendar(settings.clinic_calendar, zone=settings.clinic_timezone)
