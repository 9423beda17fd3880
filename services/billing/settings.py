"""Settings of the billing service (``RTOPS_BILLING_*`` plus the shared ``RTOPS_*``).

One billing deployment bills for one practice: its place of service, which components it
bills, its default payer and the counting conventions the domain takes as arguments
(``services.billing.domain.BillingSettings``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from shared.settings import RtopsSettings

if TYPE_CHECKING:
    from services.billing.domain import BillingSettings as EngineSettings
    from services.billing.domain import Payer, RuleSet


class PayerSpec(BaseModel):
    """The payer a course is billed to (``services.billing.domain.Payer``)."""

    id: str = Field(default="medicare", description="selects the rules file's payer windows")
    medicare: bool = True
    legacy_freestanding_codes: Literal["g_codes", "cpt"] = "g_codes"
    management_service_date: Literal["block_end", "block_start"] = "block_end"


class BillingSettings(RtopsSettings):
    billing_http_host: str = "0.0.0.0"
    billing_http_port: int = Field(default=8004, description="REST API")
    billing_rules: Path | None = Field(
        default=None, description="charge rules YAML; unset means the bundled rules file"
    )
    billing_place_of_service: Literal["freestanding", "hospital"] = Field(
        default="freestanding",
        description="freestanding: split codes billed global; hospital: -26 / -TC lines",
    )
    billing_components: frozenset[Literal["professional", "technical"]] = Field(
        default=frozenset({"professional", "technical"}),
        description='components this practice bills, JSON: ["professional"] for a hospital '
        'physician group, ["technical"] for the hospital',
    )
    billing_payer: PayerSpec = Field(
        default_factory=PayerSpec,
        description='JSON: the payer courses are billed to, e.g. {"id": "bcbs_nc", '
        '"medicare": false, "legacy_freestanding_codes": "cpt"}',
    )
    billing_bid_break_h: float = Field(
        default=6.0, gt=0, description="a same-day break at least this long starts a new session"
    )
    billing_count_partial_fractions: bool = Field(
        default=True, description="an interrupted, never completed fraction counts"
    )
    billing_inactivity_days: int = Field(
        default=30, ge=1, description="a course with no treatment for this long has ended"
    )
    billing_physics_remainder_policy: Literal["mirror_77427", "any_remainder", "none"] = Field(
        default="mirror_77427", description="77336 units for the fractions after the last five"
    )
    billing_dosimetry_units_per: Literal["beam", "plan"] = Field(
        default="beam", description="77300 units per therapeutic beam or per plan"
    )
    billing_management_note_grace_days: int = Field(
        default=0,
        ge=0,
        description="a management note this many days outside a 77427 block still documents it",
    )
    billing_stereotactic_dose_per_fraction_gy: float = Field(
        default=6.0,
        gt=0,
        description="a course of at most 5 planned fractions with this dose per fraction (Gy) "
        "or more is possibly SRS/SBRT: its kind-dependent charges wait for staff to confirm "
        "the kind (POST /v1/courses/{id}/kind)",
    )
    billing_course_gap_days: int = Field(
        default=30, ge=0, description="plans without references further apart start a new course"
    )
    billing_sweep_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="how often open courses are re-evaluated (a course ends after "
        "billing_inactivity_days without any event)",
    )

    def engine_settings(self) -> EngineSettings:
        from services.billing.domain import BillingSettings as EngineSettings

        return EngineSettings(
            zone=ZoneInfo(self.clinic_timezone),
            place_of_service=self.billing_place_of_service,
            bills=frozenset(self.billing_components),
            bid_break=timedelta(hours=self.billing_bid_break_h),
            count_partial_fractions=self.billing_count_partial_fractions,
            inactivity_days=self.billing_inactivity_days,
            physics_remainder_policy=self.billing_physics_remainder_policy,
            dosimetry_units_per=self.billing_dosimetry_units_per,
            management_note_grace_days=self.billing_management_note_grace_days,
            stereotactic_dose_per_fraction_gy=self.billing_stereotactic_dose_per_fraction_gy,
        )

    def payer(self) -> Payer:
        from services.billing.domain import Payer

        return Payer(**self.billing_payer.model_dump())

    def rules(self) -> RuleSet:
        from services.billing.domain import load_bundled_rules, parse_rules

        if self.billing_rules is None:
            return load_bundled_rules()
        return parse_rules(self.billing_rules.read_text())
