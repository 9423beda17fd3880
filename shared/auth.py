"""Bearer-token authentication with rtops roles.

Production verifies JWTs from the hospital's OIDC issuer (JWKS URL, issuer and audience in
settings). The embedded setup signs its own HS256 tokens with a key: ``RTOPS_DEV_SIGNING_KEY``
(the key itself, 32 bytes or more) or the file ``RTOPS_DEV_SIGNING_KEY_FILE`` (default
``var/jwt.key``, which ``rtops run`` creates); ``rtops token --role ROLE --user NAME`` prints
one that the running suite accepts.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.errors import Forbidden, TransientError, Unauthorized
from shared.settings import ROLES, RtopsSettings, SettingError, StaffIdentity

DEV_ISSUER = "rtops-embedded"


@dataclass(frozen=True)
class Principal:
    """Who calls. ``user`` is the stable identity that audit rows and ownership columns
    record: the token's ``sub`` (OIDC Core 2: "locally unique and never reassigned within the
    Issuer"), qualified by the issuer for an external identity provider (``stable_id``). It is
    never a claim the user may edit: ``preferred_username`` and ``name`` are for display only
    (OIDC Core 5.7), and so is ``display_name``. ``names``: the DICOM person names the user
    appears under in plans and records, from the identity mapping keyed by the stable identity
    (``shared.ui.identity``); empty when the user is not mapped."""

    user: str
    roles: frozenset[str]
    subject: str = ""
    issuer: str = DEV_ISSUER
    display_name: str = ""
    names: tuple[str, ...] = ()

    @property
    def shown_as(self) -> str:
        """The name to show people: the display name, else the stable identity."""
        return self.display_name or self.user


def stable_id(subject: str, issuer: str) -> str:
    """The audited identity of ``subject`` at ``issuer``: the embedded signer's subjects stay
    plain (``rtops token --user olga`` is ``olga``, as before), an external provider's are
    ``<issuer>#<sub>``, so two providers' subjects never meet in one audit trail."""
    return subject if issuer == DEV_ISSUER else f"{issuer.rstrip('/')}#{subject}"


def display_name_of(claims: dict[str, Any]) -> str:
    """``name``, else ``preferred_username``, else empty: shown, never audited or compared."""
    for claim in ("name", "preferred_username"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_DISPLAY_CHARS]
    return ""


# The development signer's tokens live at most a working day and a half: `rtops token --hours`
# and the staff pages stay under it, and a token that claims longer (a 100-year token was
# accepted before issue 15) is refused even when its signature is good.
DEV_TOKEN_MAX_LIFETIME = timedelta(hours=36)
# A user name is written into audit rows and into DICOM-facing fields (a PN component group is
# at most 64 characters, DICOM PS3.5 table 6.2-1): longer is refused at the edge, not at the
# database.
MAX_USER_CHARS = 64
# A display name is shown only; longer ones are cut, not refused.
MAX_DISPLAY_CHARS = 200
# The audit trail's user column holds 200 characters: "<issuer>#<sub>" must fit.
MAX_ISSUER_CHARS = 200 - MAX_USER_CHARS - 1

KEY_MIN_BYTES = 32  # HS256: a key shorter than the hash (RFC 7518 3.2) is refused


def signing_key_file(settings: RtopsSettings) -> Path:
    return settings.dev_signing_key_file or settings.var_dir / "jwt.key"


def _looks_like_path(value: str) -> bool:
    # Keys from secrets.token_urlsafe or base64 never hold a dot, nor start with ~ or ./.
    return (
        value.startswith(("~", "./", "../"))
        or bool(re.search(r"[/\\][^/\\]*\.[A-Za-z0-9]{1,8}$", value))
        or bool(re.fullmatch(r"[\w-]+\.(key|pem|txt|secret|jwt)", value))
        or ((os.sep in value or "/" in value) and Path(value).expanduser().is_file())
    )


def inline_signing_key(settings: RtopsSettings) -> str | None:
    """``RTOPS_DEV_SIGNING_KEY``, checked: it is the key itself, never a path."""
    key = settings.dev_signing_key
    if not key:
        return None
    if _looks_like_path(key):
        raise SettingError(
            f"RTOPS_DEV_SIGNING_KEY={key!r} looks like a path, but it is the key itself: set "
            f"RTOPS_DEV_SIGNING_KEY_FILE={key} instead (and unset RTOPS_DEV_SIGNING_KEY)"
        )
    size = len(key.encode())
    if size < KEY_MIN_BYTES:
        if "/" in key:
            raise SettingError(
                f"RTOPS_DEV_SIGNING_KEY={key!r} is {size} bytes and looks like a path: it is the "
                f"key itself; to name a key file set RTOPS_DEV_SIGNING_KEY_FILE={key} instead"
            )
        raise SettingError(
            f"RTOPS_DEV_SIGNING_KEY is {size} bytes; an HS256 key needs at least "
            f"{KEY_MIN_BYTES} (python -c 'import secrets; print(secrets.token_urlsafe(48))'), "
            "or unset it to use the key file (RTOPS_DEV_SIGNING_KEY_FILE, default var/jwt.key)"
        )
    return key


def read_key_file(path: Path) -> str:
    key = path.read_text().strip()
    if len(key.encode()) < KEY_MIN_BYTES:
        raise SettingError(
            f"the signing key in {path} is {len(key.encode())} bytes; an HS256 key needs at "
            f"least {KEY_MIN_BYTES}: delete the file (`rtops run` makes a new one; earlier "
            "tokens stop working) or write a longer key into it"
        )
    return key


def create_key_file(path: Path) -> str:
    """A new random key in ``path`` (mode 0600); an existing file is kept (two processes
    creating it at once agree on one key: the file appears whole, by a hard link)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_urlsafe(48).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return read_key_file(path)


def check_signing_key(settings: RtopsSettings) -> None:
    """At start: ``SettingError`` now for a key setting that cannot work."""
    if inline_signing_key(settings) is None and settings.dev_signing_key_file is not None:
        path = settings.dev_signing_key_file
        if not path.is_file():
            raise SettingError(f"RTOPS_DEV_SIGNING_KEY_FILE={path}: no such file")
        read_key_file(path)


def dev_signing_key(settings: RtopsSettings, *, create: bool = True) -> str:
    """The embedded setup's HS256 key: ``RTOPS_DEV_SIGNING_KEY`` itself, else the file
    ``RTOPS_DEV_SIGNING_KEY_FILE`` (default ``var_dir/jwt.key``), created on first use when it
    is the default one and ``create``."""
    key = inline_signing_key(settings)
    if key is not None:
        return key
    path = signing_key_file(settings)
    if path.is_file():
        return read_key_file(path)
    if settings.dev_signing_key_file is not None:
        raise SettingError(f"RTOPS_DEV_SIGNING_KEY_FILE={path}: no such file")
    if not create:
        raise SettingError(f"no signing key at {path}")
    return create_key_file(path)


def issue_dev_token(
    settings: RtopsSettings, *, user: str, roles: list[str], ttl: timedelta = timedelta(hours=12)
) -> str:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; choose from {', '.join(ROLES)}")
    if ttl > DEV_TOKEN_MAX_LIFETIME:
        hours = DEV_TOKEN_MAX_LIFETIME.total_seconds() / 3600
        raise SettingError(
            f"a token of the embedded signer lives at most {hours:g} hours; ask for less "
            "(rtops token --hours) and ask again when it expires"
        )
    if not 0 < len(user) <= MAX_USER_CHARS:
        raise SettingError(f"a user name has 1 to {MAX_USER_CHARS} characters")
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user,
        "iss": DEV_ISSUER,
        "aud": settings.oidc_audience,
        "iat": now,
        "exp": now + ttl,
    }
    *parents, leaf = settings.roles_claim.split(".")  # the nesting roles_in() reads
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
        if settings.oidc_issuer and len(settings.oidc_issuer.rstrip("/")) > MAX_ISSUER_CHARS:
            raise ValueError(
                f"RTOPS_OIDC_ISSUER is longer than {MAX_ISSUER_CHARS} characters: audit rows "
                "record users as <issuer>#<sub> in 200 characters"
            )
        self._jwks = None
        if settings.oidc_jwks_url:
            import jwt

            self._jwks = jwt.PyJWKClient(settings.oidc_jwks_url)
        else:
            check_signing_key(settings)

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
                    options={"require": ["exp", "iat", "sub"]},
                )
                lifetime = int(claims["exp"]) - int(claims["iat"])
                if lifetime > DEV_TOKEN_MAX_LIFETIME.total_seconds():
                    raise Unauthorized(
                        f"the token lives {lifetime // 3600} hours; the embedded signer's "
                        f"tokens live at most {DEV_TOKEN_MAX_LIFETIME.total_seconds() // 3600:g}"
                    )
        except jwt.PyJWKClientConnectionError as exc:
            raise TransientError(f"the identity provider's keys are unreachable: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid bearer token: {exc}") from exc
        except (TypeError, ValueError, OverflowError) as exc:  # iat/exp that are not numbers
            raise Unauthorized(f"invalid bearer token: {exc}") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_USER_CHARS:
            raise Unauthorized(
                f"the token's subject (sub) must be a string of 1 to {MAX_USER_CHARS} characters"
            )
        # jwt.decode checked iss against the one issuer this deployment trusts.
        issuer = str(claims["iss"]) if self._jwks is not None else DEV_ISSUER
        identity = mapped_identity(s, subject, issuer, claims)
        return Principal(
            user=stable_id(subject, issuer),
            roles=frozenset(roles_in(claims, s.roles_claim)),
            subject=subject,
            issuer=issuer,
            display_name=display_name_of(claims),
            names=tuple(identity.dicom_names),
        )


def mapped_identity(
    settings: RtopsSettings, subject: str, issuer: str, claims: dict[str, Any] | None = None
) -> StaffIdentity:
    """The DICOM person names and NPI of a user: the verified token's claims
    (``RTOPS_OIDC_NAMES_CLAIM``, ``RTOPS_OIDC_NPI_CLAIM``: claims the provider's administrators
    set, not the user) win, else ``RTOPS_UI_IDENTITIES`` under one of ``stable_keys``."""
    mapped = next(
        (
            settings.ui_identities[k]
            for k in stable_keys(subject, issuer)
            if k in settings.ui_identities
        ),
        StaffIdentity(),
    )
    claims = claims or {}
    names = _names(claims.get(settings.oidc_names_claim)) or mapped.dicom_names
    npi = claims.get(settings.oidc_npi_claim) or mapped.npi
    return StaffIdentity(dicom_names=names, npi=str(npi) if npi else None)


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def stable_keys(subject: str, issuer: str) -> list[str]:
    """The keys ``RTOPS_UI_IDENTITIES`` may use for a user: the stable identity, or the bare
    ``sub`` (never reassigned by the one issuer the suite trusts); never a user name or an
    e-mail address, which the user may change at the provider."""
    return list(dict.fromkeys([stable_id(subject, issuer), subject]))


def roles_in(claims: dict[str, Any], claim: str) -> list[str]:
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
                f"{principal.shown_as} has {', '.join(sorted(principal.roles)) or 'none'}"
            )
        return principal

    # Read by the authorization-matrix test, which derives who may call each route from it.
    check.rtops_roles = frozenset(roles)  # type: ignore[attr-defined]
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
