"""The staff pages' session: a signed, HttpOnly, SameSite=Lax cookie holding who signed in, the
role chosen, and a per-session CSRF token that every form carries in a hidden field.

The cookie is signed with ``RTOPS_UI_SESSION_KEY`` (the same in every service, so one sign-in
serves every service's pages), or in the embedded setup with a key derived from the development
signing key (``shared.auth.dev_signing_key``). Who may start a session: the development sign-in
page in the embedded setup, the OIDC callback (``shared.ui.oidc``) in production; a session
made by the one is refused by the other.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from shared.auth import DEV_ISSUER, KEY_MIN_BYTES, Principal, dev_signing_key
from shared.settings import ROLES, RtopsSettings, SettingError

SESSION_COOKIE = "rtops_session"
PRE_SESSION_COOKIE = "rtops_signin"  # the sign-in form's CSRF token, or a pending OIDC sign-in
TOKEN_COOKIE = "rtops_api_token"
PENDING_MAX_AGE_S = 600  # an OIDC sign-in left at the identity provider longer starts over
TOKEN_MARGIN_S = 30  # a token about to expire is not forwarded
MAX_AGE_S = 12 * 3600  # a clinic shift; the same lifetime as `rtops token`
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Session:
    """Who signed in: ``user`` the stable identity audited and owning what they do (the
    development sign-in name, or ``<issuer>#<sub>``: ``shared.auth.stable_id``), ``display``
    the name shown (empty: ``user``), ``roles`` (rtops roles, in ``ROLES`` order), the DICOM
    person ``names`` and ``npi`` they appear under (empty: not mapped), and how (``origin``:
    "dev" or "oidc")."""

    user: str
    roles: tuple[str, ...]
    csrf: str
    names: tuple[str, ...] = ()
    npi: str | None = None
    origin: str = "dev"
    display: str = ""
    subject: str = ""
    issuer: str = DEV_ISSUER

    @property
    def shown_as(self) -> str:
        return self.display or self.user

    @property
    def role(self) -> str:
        """The role the pages are shown for: the first of ``roles`` in ``ROLES`` order."""
        return self.roles[0]

    def has(self, *roles: str) -> bool:
        return bool(set(roles) & set(self.roles))

    @property
    def principal(self) -> Principal:
        return Principal(
            user=self.user,
            roles=frozenset(self.roles),
            subject=self.subject or self.user,
            issuer=self.issuer,
            display_name=self.display,
            names=self.names,
        )


class CsrfError(Exception):
    """A form without the session's CSRF token (forged, or from an expired session)."""


def session_key(settings: RtopsSettings) -> str:
    if settings.ui_session_key:
        return settings.ui_session_key
    if oidc_sign_in(settings):
        raise SettingError(
            "RTOPS_UI_SESSION_KEY is not set: OIDC sign-in needs a session key shared by every "
            "service (python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return dev_signing_key(settings)


def check_session_settings(settings: RtopsSettings) -> None:
    """At start: ``SettingError`` for page settings that cannot work."""
    key = settings.ui_session_key
    if key is not None and len(key.encode()) < KEY_MIN_BYTES:
        raise SettingError(
            f"RTOPS_UI_SESSION_KEY is {len(key.encode())} bytes; it needs at least "
            f"{KEY_MIN_BYTES} (python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if oidc_sign_in(settings):
        session_key(settings)


def _serializer(settings: RtopsSettings, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(session_key(settings), salt=f"rtops.ui.{purpose}")


def dev_sign_in_allowed(settings: RtopsSettings) -> bool:
    """The development sign-in works only in the embedded setup (no OIDC issuer)."""
    return not settings.oidc_issuer and not settings.oidc_jwks_url


def oidc_sign_in(settings: RtopsSettings) -> bool:
    """Production sign-in: an issuer and the pages' client id are configured."""
    return bool(settings.oidc_issuer and settings.oidc_client_id)


def _origin_allowed(settings: RtopsSettings) -> str | None:
    if dev_sign_in_allowed(settings):
        return "dev"
    return "oidc" if oidc_sign_in(settings) else None


def read_session(request: Request, settings: RtopsSettings) -> Session | None:
    raw = request.cookies.get(SESSION_COOKIE)
    origin = _origin_allowed(settings)
    if not raw or origin is None:
        return None
    try:
        data = _serializer(settings, "session").loads(raw, max_age=MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not data.get("u") or data.get("o", "dev") != origin:
        return None
    roles = tuple(r for r in ROLES if r in (data.get("r") or ()))
    if not roles:
        return None
    if origin == "oidc" and not data.get("i"):
        # Made before issue 15, when "u" was the provider's username: sign in again.
        return None
    return Session(
        user=str(data["u"]),
        roles=roles,
        csrf=str(data.get("c", "")),
        names=tuple(str(n) for n in data.get("n") or ()),
        npi=data.get("p"),
        origin=origin,
        display=str(data.get("d") or ""),
        subject=str(data.get("s") or data["u"]),
        issuer=str(data.get("i") or DEV_ISSUER),
    )


def _cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def start_session(
    response: Response,
    request: Request,
    settings: RtopsSettings,
    *,
    user: str,
    roles: Sequence[str],
    names: Sequence[str] = (),
    npi: str | None = None,
    origin: str = "dev",
    display: str = "",
    subject: str | None = None,
    issuer: str = DEV_ISSUER,
) -> Session:
    """``user``: the stable identity (``shared.auth.stable_id``), ``display`` the name shown."""
    ordered = tuple(r for r in ROLES if r in roles)
    session = Session(
        user=user,
        roles=ordered,
        csrf=secrets.token_urlsafe(32),
        names=tuple(names),
        npi=npi,
        origin=origin,
        display=display,
        subject=subject or user,
        issuer=issuer,
    )
    value = _serializer(settings, "session").dumps(
        {
            "u": user,
            "r": list(ordered),
            "c": session.csrf,
            "n": list(names),
            "p": npi,
            "o": origin,
            "d": display,
            "s": session.subject,
            "i": issuer,
        }
    )
    _cookie(response, request, SESSION_COOKIE, value)
    response.delete_cookie(PRE_SESSION_COOKIE, path="/")
    return session


def end_session(response: Response) -> None:
    for name in (SESSION_COOKIE, TOKEN_COOKIE):
        response.delete_cookie(name, path="/", httponly=True, samesite="lax")


def keep_api_token(
    response: Response, request: Request, settings: RtopsSettings, token: str, expires_at: float
) -> None:
    """The identity provider's access token, for the pages that ask other services' APIs on
    the user's behalf (the patient timeline). Its own cookie: the session stays small."""
    value = _serializer(settings, "token").dumps({"t": token, "e": expires_at})
    _cookie(response, request, TOKEN_COOKIE, value)


def api_token(request: Request, settings: RtopsSettings, session: Session) -> str | None:
    """A bearer token the services' APIs accept for ``session``'s user, or None when the
    identity provider's token has expired (signing in again renews it). The embedded setup
    signs a short one with the development key, as ``rtops token`` does."""
    if session.origin == "dev":
        from shared.auth import issue_dev_token

        return issue_dev_token(
            settings, user=session.user, roles=list(session.roles), ttl=timedelta(minutes=5)
        )
    try:
        data = _serializer(settings, "token").loads(
            request.cookies.get(TOKEN_COOKIE, ""), max_age=MAX_AGE_S
        )
    except BadSignature:
        return None
    if not isinstance(data, dict) or float(data.get("e") or 0) < time.time() + TOKEN_MARGIN_S:
        return None
    return str(data["t"])


def keep_pending(
    response: Response, request: Request, settings: RtopsSettings, pending: dict[str, str]
) -> None:
    """What the OIDC callback must find again: state, nonce, PKCE verifier, the page asked."""
    _cookie(response, request, PRE_SESSION_COOKIE, _serializer(settings, "oidc").dumps(pending))


def take_pending(request: Request, settings: RtopsSettings) -> dict[str, str] | None:
    try:
        data = _serializer(settings, "oidc").loads(
            request.cookies.get(PRE_SESSION_COOKIE, ""), max_age=PENDING_MAX_AGE_S
        )
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None


def pre_session_token(request: Request, response: Response, settings: RtopsSettings) -> str:
    """The sign-in form's CSRF token: kept in its own signed cookie (there is no session yet)."""
    serializer = _serializer(settings, "signin")
    raw = request.cookies.get(PRE_SESSION_COOKIE)
    if raw:
        try:
            return str(serializer.loads(raw, max_age=MAX_AGE_S))
        except BadSignature:
            pass
    token = secrets.token_urlsafe(32)
    _cookie(response, request, PRE_SESSION_COOKIE, serializer.dumps(token))
    return token


def check_pre_session_token(request: Request, settings: RtopsSettings, sent: str | None) -> None:
    raw = request.cookies.get(PRE_SESSION_COOKIE)
    try:
        expected = str(_serializer(settings, "signin").loads(raw or "", max_age=MAX_AGE_S))
    except BadSignature:
        raise CsrfError("the sign-in form expired; load it again") from None
    check_token(expected, sent)


def check_token(expected: str, sent: str | None) -> None:
    if not expected or not sent or not hmac.compare_digest(expected, sent):
        raise CsrfError("this form is not from your current session; reload the page")
