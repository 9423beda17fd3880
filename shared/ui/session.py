"""The staff pages' session: a signed, HttpOnly, SameSite=Lax cookie holding who signed in, the
role chosen, and a per-session CSRF token that every form carries in a hidden field.

Only the embedded setup signs people in here (the development sign-in page); its key is derived
from the development signing key (``shared.auth.dev_signing_key``). With an OIDC issuer
configured no session is accepted: production sign-in (authorization code + PKCE) comes later.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from shared.auth import Principal, dev_signing_key
from shared.settings import ROLES, RtopsSettings

SESSION_COOKIE = "rtops_session"
PRE_SESSION_COOKIE = "rtops_signin"  # carries the sign-in form's CSRF token before a session
MAX_AGE_S = 12 * 3600  # a clinic shift; the same lifetime as `rtops token`
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str

    @property
    def principal(self) -> Principal:
        return Principal(user=self.user, roles=frozenset({self.role}))


class CsrfError(Exception):
    """A form without the session's CSRF token (forged, or from an expired session)."""


def _serializer(settings: RtopsSettings, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(dev_signing_key(settings), salt=f"rtops.ui.{purpose}")


def dev_sign_in_allowed(settings: RtopsSettings) -> bool:
    """The development sign-in works only in the embedded setup (no OIDC issuer)."""
    return not settings.oidc_issuer and not settings.oidc_jwks_url


def read_session(request: Request, settings: RtopsSettings) -> Session | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or not dev_sign_in_allowed(settings):
        return None
    try:
        data = _serializer(settings, "session").loads(raw, max_age=MAX_AGE_S)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("r") not in ROLES or not data.get("u"):
        return None
    return Session(user=str(data["u"]), role=str(data["r"]), csrf=str(data.get("c", "")))


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
    response: Response, request: Request, settings: RtopsSettings, *, user: str, role: str
) -> Session:
    session = Session(user=user, role=role, csrf=secrets.token_urlsafe(32))
    value = _serializer(settings, "session").dumps({"u": user, "r": role, "c": session.csrf})
    _cookie(response, request, SESSION_COOKIE, value)
    response.delete_cookie(PRE_SESSION_COOKIE, path="/")
    return session


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


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
