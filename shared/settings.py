"""Settings every rtops process shares, read from ``RTOPS_*`` environment variables.

Nothing is instantiated at import time: each service builds its own settings object in its
composition root, so tests can pass overrides without touching the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.calendar import CalendarSpec

Role = Literal[
    "physician", "therapist", "physicist", "dosimetrist", "scheduler", "billing", "admin"
]
ROLES: tuple[str, ...] = (
    "physician",
    "therapist",
    "physicist",
    "dosimetrist",
    "scheduler",
    "billing",
    "admin",
)


class SettingError(ValueError):
    """A setting's value cannot work. The message names the setting and what to do; a service
    that meets one at start prints it as one line and exits (no traceback)."""


class StaffIdentity(BaseModel):
    """Who a signed-in user is in the department's DICOM: the person names their fractions and
    plans carry ("Oncologist^Olga"), and their NPI where known."""

    dicom_names: list[str] = Field(default_factory=list)
    npi: str | None = None


# The development ports of ``make run``; a service not built yet is simply absent.
DEV_SERVICE_URLS: dict[str, str] = {
    "scp_listener": "http://localhost:8000",
    "qa_tracker": "http://localhost:8001",
    "scheduler": "http://localhost:8002",
    "documents": "http://localhost:8003",
    "billing": "http://localhost:8004",
}


class RtopsSettings(BaseSettings):
    """The settings every service understands; a service subclasses it for its own."""

    model_config = SettingsConfigDict(env_prefix="RTOPS_", extra="ignore")

    var_dir: Path = Field(
        default=Path("var"),
        description="runtime state: SQLite files, object "
        "store, embedded NATS store, development signing key",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset means one SQLite file per service under var_dir. "
        "On PostgreSQL every service keeps its tables in its own schema.",
    )
    database_schema_prefix: str = Field(
        default="",
        description="PostgreSQL: each service's schema is this prefix + the service's name",
    )
    nats_url: str | None = Field(
        default=None, description="external NATS; unset means the embedded server of make run"
    )
    # NATS credentials and TLS (docs/security_nats.md). Unset user: connect without
    # credentials (an external NATS without authorization, as CI's); `rtops run` sets each
    # service's own user and password for the embedded server.
    nats_user: str | None = Field(
        default=None, description="this service's NATS user (production: from a Secret)"
    )
    nats_password: SecretStr | None = Field(
        default=None, description="the NATS user's password (production: from a Secret)"
    )
    nats_tls_ca: Path | None = Field(
        default=None, description="CA bundle (PEM) that signed the NATS server's certificate"
    )
    nats_tls_cert: Path | None = Field(
        default=None, description="client certificate (PEM) for a NATS that verifies clients"
    )
    nats_tls_key: Path | None = Field(default=None, description="the client certificate's key")
    stream_name: str = "RTOPS"
    subject_prefix: str = Field(
        default="rtops",
        description="first token of every NATS subject; lets two suites "
        "(say production and training) share one NATS",
    )
    stream_replicas: int = Field(default=1, description="3 on a production JetStream cluster")
    duplicate_window_s: float = Field(
        default=600.0, description="JetStream de-duplication window for Nats-Msg-Id"
    )
    clinic_timezone: str = Field(
        default="America/New_York",
        description="IANA zone for DICOM dates and times that carry no UTC offset",
    )
    clinic_calendar: CalendarSpec = Field(
        default_factory=CalendarSpec,
        description="JSON: holidays_country (default US; null for none), holidays_subdivision, "
        "closed_days (dates), workdays (default mon..fri)",
    )
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Authentication. With oidc_jwks_url unset, tokens are HS256-signed with a key kept in
    # var_dir (the embedded setup); `rtops token` signs with the same key.
    oidc_issuer: str | None = None
    oidc_jwks_url: str | None = None
    oidc_audience: str = "rtops"
    roles_claim: str = Field(default="roles", description="JWT claim listing rtops roles")
    dev_signing_key: str | None = Field(
        default=None,
        description="the HS256 key itself (at least 32 bytes) for the embedded setup; unset "
        "means the key in dev_signing_key_file. A path here is refused: use "
        "dev_signing_key_file",
    )
    dev_signing_key_file: Path | None = Field(
        default=None,
        description="file holding the embedded setup's HS256 key; default var_dir/jwt.key, "
        "created by `rtops run` (mode 0600)",
    )

    # Staff pages (shared/ui). Production sign-in is the OIDC authorization-code flow with
    # PKCE against oidc_issuer; it is on when oidc_client_id is set too.
    oidc_client_id: str | None = Field(
        default=None,
        description="the staff pages' OIDC client id; with oidc_issuer, /ui/sign-in signs in "
        "through the identity provider (authorization code + PKCE)",
    )
    oidc_client_secret: str | None = Field(
        default=None, description="for a confidential client; a public client leaves it unset"
    )
    oidc_scopes: str = "openid profile email"
    oidc_names_claim: str = Field(
        default="dicom_names",
        description="ID-token claim with the user's DICOM person names (a list or one name)",
    )
    oidc_npi_claim: str = Field(default="npi", description="ID-token claim with the user's NPI")
    ui_session_key: str | None = Field(
        default=None,
        description="key signing the pages' session cookie (at least 32 bytes, the same in "
        "every service); required with OIDC sign-in; unset in the embedded setup means a key "
        "derived from the development signing key",
    )
    ui_identities: dict[str, StaffIdentity] = Field(
        default_factory=dict,
        description='JSON: user -> {"dicom_names": [...], "npi": "..."}; the user is the OIDC '
        "sub (or <issuer>#<sub>), or the name given at the development sign-in; never a "
        "username or email, which users can change",
    )
    ui_service_urls: dict[str, str] = Field(
        default_factory=lambda: dict(DEV_SERVICE_URLS),
        description="JSON: service -> the base URL its pages and API are reached at (a full "
        'URL, or a path such as "/qa" on one host); the pages\' navigation and the patient '
        "timeline use them",
    )
    ui_api_urls: dict[str, str] = Field(
        default_factory=dict,
        description="JSON: service -> the base URL a service calls another's API at, server "
        "side (the patient timeline; in Kubernetes the cluster-internal Service URL); a "
        "service not named here is called at its RTOPS_UI_SERVICE_URLS address",
    )
    root_path: str = Field(
        default="",
        description='the path this service is served under behind a proxy ("/qa"); its '
        "pages' links carry it",
    )

    def resolved_nats_url(self) -> str:
        """The NATS URL: the setting, else what the embedded server wrote under var_dir."""
        if self.nats_url:
            return self.nats_url
        url_file = self.var_dir / "nats" / "url"
        if url_file.exists():
            return url_file.read_text().strip()
        return "nats://127.0.0.1:4222"


S = TypeVar("S", bound=RtopsSettings)


def settings_or_exit(cls: type[S], service: str) -> S:
    """``cls()`` from the environment, or one line per invalid setting on stderr and exit
    status 2 (no traceback): what a service's ``__main__`` calls first."""
    import sys

    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        for error in exc.errors():
            name = "_".join(str(part) for part in error["loc"][:1]).upper()
            print(
                f"{service}: {prefix}{name}: {error['msg']} (got {error.get('input')!r})",
                file=sys.stderr,
            )
        raise SystemExit(2) from None
