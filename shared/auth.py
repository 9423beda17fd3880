"""Bearer-token authentication with rtops roles.

Production verifies JWTs from the hospital's OIDC issuer (JWKS URL, issuer and audience in
settings). The embedded setup signs its own HS256 tokens with a key kept in ``var/jwt.key``;
``rtops token --role ROLE --user NAME`` prints one that the running suite accepts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, TransientError, Unauthorized
from shared.settings import ROLES, RtopsSettings

DEV_ISSUER = "rtops-embedded"


@dataclass(frozen=True)
class Principal:
    user: str
    roles: frozenset[str]


def dev_signing_key(settings: RtopsSettings) -> str:
    if settings.dev_signing_key:
        return settings.dev_signing_key
    path = settings.var_dir / "jwt.key"
    if not path.exists():
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def issue_dev_token(
    settings: RtopsSettings, *, user: str, roles: list[str], ttl: timedelta = timedelta(hours=12)
) -> str:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; choose from {', '.join(ROLES)}")
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user,
        "iss": DEV_ISSUER,
        "aud": settings.oidc_audience,
        "iat": now,
        "exp": now + ttl,
    }
    *parents, leaf = settings.roles_claim.split(".")  # the nesting _roles() reads
    node = claims
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = roles
    import jwt  # PyJWT pulls in cryptography (~9 MB): loaded on first use only

    return jwt.encode(claims, dev_signing_key(settings), algorithm="HS256")


class Authenticator:
    def __init__(self, settings: RtopsSettings) -> None:
        self._settings = settings
        if settings.oidc_jwks_url and not settings.oidc_issuer:
            raise ValueError(
                "RTOPS_OIDC_JWKS_URL is set but RTOPS_OIDC_ISSUER is not: set the "
                "issuer so that tokens from other issuers are refused"
            )
        self._jwks = None
        if settings.oidc_jwks_url:
            import jwt

            self._jwks = jwt.PyJWKClient(settings.oidc_jwks_url)

    def verify(self, token: str) -> Principal:
        import jwt

        s = self._settings
        try:
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["RS256", "ES256", "PS256"],
                    audience=s.oidc_audience,
                    issuer=s.oidc_issuer,
                    options={"require": ["exp", "sub"]},
                )
            else:
                claims = jwt.decode(
                    token,
                    dev_signing_key(s),
                    algorithms=["HS256"],
                    audience=s.oidc_audience,
                    issuer=DEV_ISSUER,
                    options={"require": ["exp", "sub"]},
                )
        except jwt.PyJWKClientConnectionError as exc:
            raise TransientError(f"the identity provider's keys are unreachable: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from exc
        user = claims.get("preferred_username") or claims["sub"]
        return Principal(user=str(user), roles=frozenset(_roles(claims, s.roles_claim)))


def _roles(claims: dict[str, Any], claim: str) -> list[str]:
    value: Any = claims
    for part in claim.split("."):  # Keycloak keeps roles under e.g. realm_access.roles
        value = value.get(part, []) if isinstance(value, dict) else []
    return [r for r in value if r in ROLES] if isinstance(value, list) else []


_bearer = HTTPBearer(auto_error=False)


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthorized("send 'Authorization: Bearer <token>'; `rtops token` prints one")
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.verify(credentials.credentials)


def require_roles(*roles: str) -> Any:
    """Dependency: the caller must hold one of ``roles``."""

    def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.roles & set(roles):
            raise Forbidden(
                f"this needs one of the roles {', '.join(roles)}; "
                f"{principal.user} has {', '.join(sorted(principal.roles)) or 'none'}"
            )
        return principal

    return Depends(check)


# Named role groups: one place says who may read clinical data, who documents what.
CLINICAL_STAFF: tuple[str, ...] = ("physician", "therapist", "physicist", "dosimetrist", "admin")
# Who checks what the devices sent (the SCP's object index: operations, not patient care).
DEVICE_OPERATIONS: tuple[str, ...] = ("therapist", "physicist", "dosimetrist", "admin")
# Who may open a stored record itself (a plan, a report), not only read about it.
RECORD_READERS: tuple[str, ...] = ("physician", "physicist", "dosimetrist", "admin")
PHYSICS: tuple[str, ...] = ("physicist", "dosimetrist", "admin")
BILLING_STAFF: tuple[str, ...] = ("billing", "admin")
SCHEDULING_STAFF: tuple[str, ...] = ("scheduler", "therapist", "admin")

ClinicalReader = Annotated[Principal, require_roles(*CLINICAL_STAFF)]
DeviceOperator = Annotated[Principal, require_roles(*DEVICE_OPERATIONS)]
RecordReader = Annotated[Principal, require_roles(*RECORD_READERS)]
PhysicianOnly = Annotated[Principal, require_roles("physician")]
PhysicsStaff = Annotated[Principal, require_roles(*PHYSICS)]
BillingStaff = Annotated[Principal, require_roles(*BILLING_STAFF)]
SchedulingStaff = Annotated[Principal, require_roles(*SCHEDULING_STAFF)]
AdminOnly = Annotated[Principal, require_roles("admin")]
