"""The review policy file (YAML) and the clinic calendar it names.

Every key is optional; the defaults are the documented ones (docs/qa_tracker.md).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from services.qa_tracker.domain import ReviewPolicy, Tolerance
from shared.calendar import CalendarSpec, build_calendar


class ToleranceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    translation_mm: float = Field(gt=0)
    rotation_deg: float = Field(gt=0)


class PolicySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before_next_fraction: bool = True
    max_business_hours: float = Field(default=24.0, gt=0)
    default_tolerance: ToleranceSpec = ToleranceSpec(translation_mm=5.0, rotation_deg=3.0)
    tolerances: dict[str, ToleranceSpec] = Field(
        default_factory=lambda: {"SBRT": ToleranceSpec(translation_mm=2.0, rotation_deg=1.0)}
    )
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
    )


def load_policy(
    path: Path | None, *, zone: str, calendar: CalendarSpec | None = None
) -> ReviewPolicy:
    """The policy in ``path`` (YAML), or the defaults when no file is configured; its
    ``calendar`` section, when present, overrides the suite's ``calendar``."""
    raw = yaml.safe_load(path.read_text()) if path else None
    return build_policy(PolicySpec.model_validate(raw or {}), zone=zone, calendar=calendar)
