"""Settings of the QA tracker (``RTOPS_QA_*`` plus the shared ``RTOPS_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from shared.settings import RtopsSettings

if TYPE_CHECKING:
    from services.qa_tracker.domain import ReviewPolicy


class QaSettings(RtopsSettings):
    qa_http_host: str = "0.0.0.0"
    qa_http_port: int = Field(default=8001, description="REST API")
    qa_policy: Path | None = Field(
        default=None, description="review policy YAML; unset means the documented defaults"
    )
    qa_imaging_devices: dict[str, str] = Field(
        default_factory=dict,
        description='imaging device -> the linac it belongs to, e.g. {"XVI1": "Agility1"}',
    )
    qa_sweep_interval_s: float = Field(
        default=60.0, description="how often overdue reviews and the daily digest are checked"
    )
    qa_digest_hour: int = Field(
        default=7, ge=0, le=23, description="clinic hour from which the daily digest is sent"
    )

    def review_policy(self) -> ReviewPolicy:
        """The policy file's rules on the suite's clinic calendar (the file's own calendar
        section, when it has one, wins)."""
        from services.qa_tracker.policy import load_policy

        return load_policy(self.qa_policy, zone=self.clinic_timezone, calendar=self.clinic_calendar)
