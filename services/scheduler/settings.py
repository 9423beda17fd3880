"""Settings of the scheduler (``RTOPS_SCHEDULER_*`` plus the shared ``RTOPS_*``).

Durations, the urgency targets, the per-site prerequisites (implant-to-simulation gap, eGFR)
and the therapists a simulation needs are local choices (field-notes 4.4: "the gap after an
implant is a local choice ... must be configurable per site"), so all of them live here and
reach the rules as a plain ``domain.Policy``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from services.scheduler.domain import Durations, Policy, SitePolicy, UrgencyTarget
from shared.settings import RtopsSettings

DEFAULT_RESOURCES = Path(__file__).parent / "resources.yaml"


class SiteSpec(BaseModel):
    implant_gap_days: int = Field(default=7, ge=0)
    egfr_required: bool = False


class UrgencySpec(BaseModel):
    target_business_days: int = Field(ge=0)
    weight: float = Field(gt=0, description="batch mode: cost of a day's wait")


def _sites() -> dict[str, SiteSpec]:
    # Prostate: SpaceOAR / fiducials a week before (field-notes 4.4 [S14]: 1-2 weeks changes
    # rectal dosimetry at the first fraction); contrast-enhanced abdominal and pelvic CTs ask
    # for kidney function first (ACR Manual on Contrast Media 2023, "Post-contrast AKI").
    return {
        "prostate": SiteSpec(implant_gap_days=7, egfr_required=True),
        "pelvis": SiteSpec(implant_gap_days=7, egfr_required=True),
        "abdomen": SiteSpec(implant_gap_days=1, egfr_required=True),
        "liver": SiteSpec(implant_gap_days=1, egfr_required=True),
        "pancreas": SiteSpec(implant_gap_days=1, egfr_required=True),
    }


def _urgency() -> dict[str, UrgencySpec]:
    return {
        "emergent": UrgencySpec(target_business_days=1, weight=10.0),
        "urgent": UrgencySpec(target_business_days=3, weight=3.0),
        "routine": UrgencySpec(target_business_days=10, weight=1.0),
    }


class SchedulerSettings(RtopsSettings):
    scheduler_http_host: str = "0.0.0.0"
    scheduler_http_port: int = Field(default=8002, description="REST API")
    scheduler_resources: Path | None = Field(
        default=DEFAULT_RESOURCES,
        description="YAML of rooms, therapists, proceduralists and device types loaded when "
        "the database has no resources yet; unset (empty) loads nothing",
    )
    scheduler_therapists_per_simulation: int = Field(default=2, ge=1)
    scheduler_base_minutes: int = Field(default=30, ge=5, description="a plain simulation CT")
    scheduler_mask_minutes: int = Field(
        default=20, ge=0, description="added when a device is fabricated for the patient"
    )
    scheduler_four_d_minutes: int = Field(default=15, ge=0, description="added for a 4D-CT")
    scheduler_contrast_minutes: int = Field(default=15, ge=0, description="added for IV contrast")
    scheduler_procedure_minutes: int = Field(
        default=30, ge=5, description="a fiducial / SpaceOAR placement in a proceduralist block"
    )
    scheduler_slot_step_minutes: int = Field(default=15, ge=5, description="slot grid")
    scheduler_horizon_days: int = Field(
        default=90, ge=1, description="how far ahead the slot search looks (calendar days)"
    )
    scheduler_default_site: SiteSpec = Field(
        default_factory=SiteSpec, description="JSON: the prerequisites of a site not listed"
    )
    scheduler_sites: dict[str, SiteSpec] = Field(
        default_factory=_sites,
        description='JSON: site -> {"implant_gap_days": N, "egfr_required": bool}',
    )
    scheduler_egfr_max_age_days: int = Field(
        default=30, ge=1, description="an eGFR older than this is not recent"
    )
    scheduler_egfr_min: float = Field(
        default=30.0,
        ge=0,
        description="mL/min/1.73 m2; below it IV contrast waits for a physician (ACR Manual on "
        "Contrast Media 2023: eGFR < 30 is the risk threshold)",
    )
    scheduler_urgency: dict[str, UrgencySpec] = Field(
        default_factory=_urgency,
        description="JSON: urgency -> target business days and batch weight",
    )

    scheduler_batch_time_limit_s: float = Field(
        default=20.0, gt=0, description="batch mode: CP-SAT's time limit"
    )
    scheduler_batch_workers: int = Field(default=2, ge=1, description="batch mode: CP-SAT threads")

    def policy(self) -> Policy:
        return Policy(
            therapists_needed=self.scheduler_therapists_per_simulation,
            durations=Durations(
                base=self.scheduler_base_minutes,
                mask=self.scheduler_mask_minutes,
                four_d=self.scheduler_four_d_minutes,
                contrast=self.scheduler_contrast_minutes,
                procedure=self.scheduler_procedure_minutes,
            ),
            step_minutes=self.scheduler_slot_step_minutes,
            horizon_days=self.scheduler_horizon_days,
            default_site=SitePolicy(**self.scheduler_default_site.model_dump()),
            sites={
                k.lower(): SitePolicy(**v.model_dump()) for k, v in self.scheduler_sites.items()
            },
            egfr_max_age_days=self.scheduler_egfr_max_age_days,
            egfr_min=self.scheduler_egfr_min,
            urgency={
                k: UrgencyTarget(v.target_business_days, v.weight)
                for k, v in self.scheduler_urgency.items()
            },
        )
