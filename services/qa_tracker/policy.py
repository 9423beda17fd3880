"""The review policy file (YAML) and the clinic calendar it names.

Every key is optional; the defaults are the documented ones (docs/qa_tracker.md).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from services.qa_tracker.domain import Coverage, Reviewers, ReviewPolicy, Tolerance
from shared.calendar import CalendarSpec, build_calendar


class ToleranceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    translation_mm: float = Field(gt=0)
    rotation_deg: float = Field(gt=0)


# A DICOM person name (PN: at most 64 characters per component group, PS3.5 table 6.2-1).
PersonName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class CoverageSpec(BaseModel):
    """``covered_by`` may review ``physician``'s fractions from ``from`` to ``to`` (clinic
    days, both included)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    physician: PersonName
    covered_by: list[PersonName] = Field(min_length=1)
    first: date = Field(alias="from")
    last: date = Field(alias="to")

    @model_validator(mode="after")
    def _ordered(self) -> CoverageSpec:
        if self.last < self.first:
            raise ValueError(f"coverage of {self.physician}: 'to' is before 'from'")
        return self


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before_next_fraction: bool = True
    max_business_hours: float = Field(default=24.0, gt=0)
    default_tolerance: ToleranceSpec = ToleranceSpec(translation_mm=5.0, rotation_deg=3.0)
    tolerances: dict[str, ToleranceSpec] = Field(
        default_factory=lambda: {"SBRT": ToleranceSpec(translation_mm=2.0, rotation_deg=1.0)}
    )
    # Minutes a review may be dated before it is recorded without a reason; further back it
    # is backdated (needs backdate_reason and documented_in, counted apart). 0: any earlier
    # time is backdated. At most 31 days, so a typo cannot switch the rule off.
    backdate_tolerance_minutes: float = Field(default=60.0, ge=0, le=31 * 24 * 60)
    # own: only the fraction's physician; covering: them or a physician in ``coverage`` that
    # day; any: any physician (the behaviour before issue 15).
    reviewers: Reviewers = Reviewers.COVERING
    coverage: list[CoverageSpec] = Field(default_factory=list)
    # Unset: the suite's clinic calendar (RTOPS_CLINIC_CALENDAR), which every service shares.
    calendar: CalendarSpec | None = None


def build_policy(
    spec: PolicySpec, *, zone: str, calendar: CalendarSpec | None = None
) -> ReviewPolicy:
    return ReviewPolicy(
        calendar=build_calendar(spec.calendar or calendar or CalendarSpec(), zone=zone),
        before_next_fraction=spec.before_next_fraction,
        max_business_hours=spec.max_business_hours,
        default_tolerance=Tolerance(**spec.default_tolerance.model_dump()),
        tolerances={k: Tolerance(**v.model_dump()) for k, v in spec.tolerances.items()},
        backdate_tolerance=timedelta(minutes=spec.backdate_tolerance_minutes),
        reviewers=spec.reviewers,
        coverage=tuple(
            Coverage(c.physician, tuple(c.covered_by), c.first, c.last) for c in spec.coverage
        ),
    )


def load_policy(
    path: Path | None, *, zone: str, calendar: CalendarSpec | None = None
) -> ReviewPolicy:
    """The policy in ``path`` (YAML), or the defaults when no file is configured; its
    ``calendar`` section, when present, overrides the suite's ``calendar``."""
    raw = yaml.safe_load(path.read_text()) if path else None
    return build_policy(PolicySpec.model_validate(raw or {}), zone=zone, calendar=calendar)
