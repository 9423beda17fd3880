"""Settings of the documents service (``RTOPS_DOCUMENTS_*`` plus the shared ``RTOPS_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from services.documents.domain import ChecklistPolicy
from services.documents.letters import LetterRenderer
from services.documents.transport import (
    Hl7Parties,
    MllpTransport,
    OutboxFolder,
    SmtpTransport,
    Transport,
    parse_endpoint,
)
from shared.settings import RtopsSettings, SettingError


class DocumentsSettings(RtopsSettings):
    documents_http_host: str = "0.0.0.0"
    documents_http_port: int = Field(default=8003, description="REST API")
    documents_checklist: Path | None = Field(
        default=None,
        description="required-documents YAML (base items and rules per site and technique); "
        "unset means the defaults",
    )
    documents_max_upload_mb: float = Field(
        default=25.0, gt=0, description="largest document accepted, MiB (413 beyond)"
    )
    documents_course_gap_days: int = Field(
        default=30, ge=0, description="plans without references further apart start a new course"
    )
    documents_scp_url: str | None = Field(
        default=None,
        description="the SCP's API, where Encapsulated PDFs are fetched from; unset: the SCP's "
        "address in RTOPS_UI_API_URLS / RTOPS_UI_SERVICE_URLS (rtops run fills it)",
    )
    documents_scp_token_file: Path | None = Field(
        default=None,
        description="file holding the bearer token for the SCP's API (production: a token of "
        "the identity provider, refreshed by whoever writes the file); unset: the embedded "
        "setup signs its own",
    )
    documents_letter_template: Path | None = Field(
        default=None, description="Jinja2 HTML template of the referring-provider letter"
    )
    documents_letter_font: Path | None = Field(
        default=None, description="TTF font for letters (unset: Helvetica, Latin-1)"
    )
    documents_department_name: str = "Radiation Oncology"
    documents_department_contact: str = Field(
        default="the radiation oncology department",
        description="the contact line of letters (phone, address)",
    )
    documents_transport: Literal["outbox", "mllp", "smtp"] = Field(
        default="outbox", description="how approved letters are sent"
    )
    documents_outbox_dir: Path | None = Field(
        default=None, description="outbox transport folder; unset means <var_dir>/letters"
    )
    documents_mllp_endpoint: str | None = Field(
        default=None, description="the EMR's MLLP listener, host:port (mllp transport)"
    )
    documents_hl7_parties: Hl7Parties = Field(
        default_factory=Hl7Parties, description="JSON: MSH-3/4/5/6 of the MDM^T02"
    )
    documents_smtp_url: str | None = Field(
        default=None, description="smtp://, smtp+starttls:// or smtps://user:pass@host:port"
    )
    documents_smtp_from: str = "rtops@localhost"
    documents_smtp_to: str | None = None
    documents_send_interval_s: float = Field(
        default=30.0, gt=0, description="how often approved letters are (re)sent"
    )
    documents_retry_max_s: float = Field(
        default=3600.0, gt=0, description="longest wait between two attempts of one letter"
    )

    def scp_url(self) -> str:
        return (
            self.documents_scp_url
            or self.ui_api_urls.get("scp_listener")
            or self.ui_service_urls.get("scp_listener")
            or "http://localhost:8000"
        ).rstrip("/")

    def checklist_policy(self) -> ChecklistPolicy:
        if self.documents_checklist is None:
            return ChecklistPolicy()
        try:
            data = yaml.safe_load(self.documents_checklist.read_text()) or {}
            return ChecklistPolicy.model_validate(data)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise SettingError(f"RTOPS_DOCUMENTS_CHECKLIST: {exc}") from exc

    def renderer(self) -> LetterRenderer:
        return LetterRenderer(
            self.documents_letter_template,
            department_name=self.documents_department_name,
            font=self.documents_letter_font,
        )

    def transport(self) -> Transport:
        if self.documents_transport == "mllp":
            if not self.documents_mllp_endpoint:
                raise SettingError(
                    "RTOPS_DOCUMENTS_TRANSPORT=mllp needs RTOPS_DOCUMENTS_MLLP_ENDPOINT (host:port)"
                )
            try:
                host, port = parse_endpoint(self.documents_mllp_endpoint)
            except ValueError as exc:
                raise SettingError(f"RTOPS_DOCUMENTS_MLLP_ENDPOINT: {exc}") from exc
            return MllpTransport(host, port, parties=self.documents_hl7_parties)
        if self.documents_transport == "smtp":
            if not (self.documents_smtp_url and self.documents_smtp_to):
                raise SettingError(
                    "RTOPS_DOCUMENTS_TRANSPORT=smtp needs RTOPS_DOCUMENTS_SMTP_URL and "
                    "RTOPS_DOCUMENTS_SMTP_TO"
                )
            try:
                return SmtpTransport(
                    self.documents_smtp_url,
                    sender=self.documents_smtp_from,
                    recipient=self.documents_smtp_to,
                )
            except ValueError as exc:
                raise SettingError(f"RTOPS_DOCUMENTS_SMTP_URL: {exc}") from exc
        return OutboxFolder(self.documents_outbox_dir or self.var_dir / "letters")
