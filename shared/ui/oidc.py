"""Production sign-in for the staff pages: the OIDC authorization-code flow with PKCE (RFC 7636,
S256) against the issuer the APIs trust; authlib builds the grant URI and the code challenge,
the token request is a plain form POST.

``/ui/sign-in`` sends the browser to the provider with a fresh state, nonce and code verifier,
kept in a signed, short-lived cookie; ``/ui/auth/callback`` checks the state, redeems the code
with the verifier, verifies the ID token (issuer, audience = our client id, nonce, signature
from the provider's JWKS) and starts the session. Roles are those the APIs grant the access token
(so a page never grants more than the API), or, for an opaque access token, the ID token's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from shared.auth import MAX_USER_CHARS, Authenticator, display_name_of, roles_in, stable_id
from shared.errors import RtopsError, TransientError, Unauthorized
from shared.settings import RtopsSettings

DISCOVERY = "/.well-known/openid-configuration"
TIMEOUT_S = 10.0
ALGORITHMS = ["RS256", "ES256", "PS256"]


@dataclass(frozen=True)
class SignedIn:
    """What the provider said about the user, verified: ``user`` is the stable identity
    (``shared.auth.stable_id`` of ``subject`` at ``issuer``), ``display`` the name shown."""

    subject: str
    issuer: str
    user: str
    display: str
    roles: list[str]
    claims: dict[str, Any]
    access_token: str
    expires_at: float


class OidcClient:
    """One per process: the provider's metadata and keys are fetched once and cached."""

    def __init__(self, settings: RtopsSettings) -> None:
        self._settings = settings
        self._metadata: dict[str, Any] | None = None
        self._jwks: Any = None
        self._lock = threading.RLock()

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                issuer = str(self._settings.oidc_issuer).rstrip("/")
                try:
                    answer = httpx.get(issuer + DISCOVERY, timeout=TIMEOUT_S)
                    answer.raise_for_status()
                    metadata = answer.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise TransientError(
                        f"the identity provider's discovery document is unreachable: {exc}"
                    ) from exc
                # OIDC Discovery 1.0 section 4.3: the issuer must be the one asked.
                if str(metadata.get("issuer", "")).rstrip("/") != issuer:
                    raise RtopsError(
                        f"the discovery document names issuer {metadata.get('issuer')!r}, "
                        f"not RTOPS_OIDC_ISSUER={self._settings.oidc_issuer!r}"
                    )
                self._metadata = metadata
            return self._metadata

    def begin(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """The provider's authorization URL, and what the callback must find again."""
        verifier = generate_token(64)  # RFC 7636 4.1: 43 to 128 characters
        nonce, state = generate_token(32), generate_token(32)
        url = prepare_grant_uri(
            self.metadata()["authorization_endpoint"],
            client_id=self._settings.oidc_client_id,
            response_type="code",
            redirect_uri=redirect_uri,
            scope=self._settings.oidc_scopes,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return url, {"state": state, "nonce": nonce, "verifier": verifier}

    def finish(
        self,
        redirect_uri: str,
        code: str,
        pending: dict[str, str],
        authenticator: Authenticator,
    ) -> SignedIn:
        """Redeems ``code`` and verifies what comes back; ``Unauthorized`` when anything is off."""
        s = self._settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending["verifier"],
            "client_id": str(s.oidc_client_id),
        }
        # A confidential client authenticates with HTTP Basic (RFC 6749 2.3.1); a public one
        # only names itself, PKCE binding the code to this browser's sign-in.
        auth = (str(s.oidc_client_id), s.oidc_client_secret) if s.oidc_client_secret else None
        try:
            answer = httpx.post(
                self.metadata()["token_endpoint"], data=form, auth=auth, timeout=TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            raise TransientError(f"the identity provider is unreachable: {exc}") from exc
        try:
            token = answer.json() if answer.is_success else None
        except ValueError:
            token = None
        if not answer.is_success or not isinstance(token, dict):
            raise Unauthorized(
                f"the identity provider refused the code ({answer.status_code}): "
                f"{answer.text[:200]}"
            )
        claims = self._id_claims(str(token.get("id_token") or ""), pending["nonce"])
        access = str(token.get("access_token") or "")
        try:  # the roles the APIs will grant this token, so a page never grants more
            roles = set(authenticator.verify(access).roles)
        except RtopsError:  # an opaque access token: the ID token's roles stand alone
            roles = set(roles_in(claims, self._settings.roles_claim))
        subject, issuer = claims["sub"], str(claims["iss"])
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_USER_CHARS:
            raise Unauthorized(
                f"the ID token's subject (sub) must be a string of 1 to {MAX_USER_CHARS} characters"
            )
        # Identity is the subject at this issuer; preferred_username and email are the user's
        # to change (OIDC Core 5.7), so they are only shown.
        display = display_name_of(claims) or str(claims.get("email") or "")
        expires_at = time.time() + float(token.get("expires_in") or 300)
        return SignedIn(
            subject,
            issuer,
            stable_id(subject, issuer),
            display,
            sorted(roles),
            claims,
            access,
            expires_at,
        )

    def _id_claims(self, id_token: str, nonce: str) -> dict[str, Any]:
        import jwt

        if not id_token:
            raise Unauthorized("the identity provider sent no ID token (is 'openid' a scope?)")
        s = self._settings
        with self._lock:
            if self._jwks is None:
                self._jwks = jwt.PyJWKClient(self.metadata()["jwks_uri"])
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token).key
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=ALGORITHMS,
                audience=s.oidc_client_id,
                issuer=self.metadata()["issuer"],
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise TransientError(f"the identity provider's keys are unreachable: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid ID token: {exc}") from exc
        if claims.get("nonce") != nonce:  # OIDC Core 3.1.3.7 (11): replay protection
            raise Unauthorized("the ID token's nonce is not this sign-in's")
        return claims

    def end_session_url(self, post_logout_redirect_uri: str) -> str | None:
        """RP-initiated logout (OIDC RP-Initiated Logout 1.0), where the provider offers it."""
        try:
            endpoint = self.metadata().get("end_session_endpoint")
        except RtopsError:
            return None
        if not endpoint:
            return None
        query = httpx.QueryParams(
            client_id=self._settings.oidc_client_id or "",
            post_logout_redirect_uri=post_logout_redirect_uri,
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"
