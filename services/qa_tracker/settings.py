"""Settings of the QA tracker (``RTOPS_QA_*`` plus the shared ``RTOPS_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import RtopsSettings


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
