"""The review policy file (YAML) and the clinic calendar it names.

Every key is optional; the defaults are the documented ones (docs/qa_tracker.md).
"""

from __future__ import annotations

from collections.abc import Container
from datetime import date
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import holidays
import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.qa_tracker.domain import ClinicCalendar, ReviewPolicy, Tolerance

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ToleranceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    translation_mm: float = Field(gt=0)
    rotation_deg: float = Field(gt=0)


class CalendarSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holidays_country: str | None = Field(default="US", description="None: no public holidays")
    holidays_subdivision: str | None = None
    closed_days: list[date] = Field(default_factory=list, description="extra clinic closures")
    workdays: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"])


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before_next_fraction: bool = True
    max_business_hours: float = Field(default=24.0, gt=0)
    default_tolerance: ToleranceSpec = ToleranceSpec(translation_mm=5.0, rotation_deg=3.0)
    tolerances: dict[str, ToleranceSpec] = Field(
        default_factory=lambda: {"SBRT": ToleranceSpec(translation_mm=2.0, rotation_deg=1.0)}
    )
    calendar: CalendarSpec = CalendarSpec()


class _ClosedDays(Container[date]):
    def __init__(self, public: Container[date] | None, extra: frozenset[date]) -> None:
        self._public = public
        self._extra = extra

    def __contains__(self, day: object) -> bool:
        return day in self._extra or (self._public is not None and day in self._public)


def build_policy(spec: PolicySpec, *, zone: str) -> ReviewPolicy:
    cal = spec.calendar
    public = (
        holidays.country_holidays(cal.holidays_country, subdiv=cal.holidays_subdivision)
        if cal.holidays_country
        else None
    )
    return ReviewPolicy(
        calendar=ClinicCalendar(
            zone=ZoneInfo(zone),
            closed_days=_ClosedDays(public, frozenset(cal.closed_days)),
            workdays=frozenset(WEEKDAYS.index(d) for d in cal.workdays),
        ),
        before_next_fraction=spec.before_next_fraction,
        max_business_hours=spec.max_business_hours,
        default_tolerance=Tolerance(**spec.default_tolerance.model_dump()),
        tolerances={k: Tolerance(**v.model_dump()) for k, v in spec.tolerances.items()},
    )


def load_policy(path: Path | None, *, zone: str) -> ReviewPolicy:
    """The policy in ``path`` (YAML), or the defaults when no file is configured."""
    raw = yaml.safe_load(path.read_text()) if path else None
    return build_policy(PolicySpec.model_validate(raw or {}), zone=zone)
