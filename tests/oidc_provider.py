"""A small OpenID Connect provider for tests: discovery, an authorization endpoint with PKCE
(S256 only), a token endpoint, JWKS and RP-initiated logout, signing RS256 tokens with a key
made per provider. It runs on real HTTP (uvicorn in a thread) so that the service under test
talks to it exactly as to a hospital's provider.

``provider.users`` holds who can sign in (name -> extra claims of the ID and access tokens:
``sub`` is ``sub-<name>`` unless given, ``preferred_username`` the name unless given, so a
user may claim another's username, as providers let users do); ``provider.auto``
names the user the authorization endpoint signs in without a form (None shows a form).
Knobs for the failure cases: ``wrong_nonce``, ``access_roles`` (roles put in the access token
instead of the user's own).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from tests.support import wait_for

CLIENT_ID = "rtops-pages"
AUDIENCE = "rtops"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    user: str


@dataclass
class Provider:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    auto: str | None = None
    wrong_nonce: bool = False
    access_roles: list[str] | None = None
    client_secret: str | None = None
    grants: dict[str, Grant] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(4)
        self.app = self._build()

    # ------------------------------------------------------------------ tokens
    def sign(self, claims: dict[str, Any]) -> str:
        now = int(time.time())
        body = {"iss": self.url, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})

    def _jwk(self) -> dict[str, Any]:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    # ------------------------------------------------------------------ app
    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "end_session_endpoint": f"{self.url}/logout",
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }

        @app.get("/jwks")
        def jwks() -> dict[str, Any]:
            return {"keys": [self._jwk()]}

        @app.get("/authorize", response_model=None)
        def authorize(request: Request) -> HTMLResponse | RedirectResponse:
            q = request.query_params
            if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                raise HTTPException(400, "PKCE with S256 is required")
            if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
                raise HTTPException(400, "unknown client or response type")
            if self.auto is not None:
                return self._grant(dict(q), self.auto)
            hidden = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in q.items())
            options = "".join(f"<option>{u}</option>" for u in self.users)
            return HTMLResponse(
                f'<!doctype html><html lang="en"><title>Hospital sign-in</title><main>'
                f'<form method="post" action="/authorize">{hidden}'
                f'<label>User <select name="user">{options}</select></label>'
                f"<button>Sign in</button></form></main></html>"
            )

        @app.post("/authorize")
        async def authorize_form(request: Request) -> RedirectResponse:
            form = dict((await request.form()).items())
            return self._grant({k: str(v) for k, v in form.items()}, str(form["user"]))

        @app.post("/token")
        def token(
            request: Request,
            grant_type: Annotated[str, Form()],
            code: Annotated[str, Form()],
            redirect_uri: Annotated[str, Form()],
            code_verifier: Annotated[str, Form()],
            client_id: Annotated[str, Form()],
        ) -> JSONResponse:
            self.token_requests.append(
                {
                    "code": code,
                    "client_id": client_id,
                    "authorization": request.headers.get("authorization", ""),
                }
            )
            grant = self.grants.pop(code, None)  # a code is good once (RFC 6749 4.1.2)
            if grant_type != "authorization_code" or grant is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            if self.client_secret is not None:
                expected = base64.b64encode(f"{CLIENT_ID}:{self.client_secret}".encode())
                if request.headers.get("authorization") != f"Basic {expected.decode()}":
                    return JSONResponse({"error": "invalid_client"}, status_code=401)
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            if challenge != grant.challenge or redirect_uri != grant.redirect_uri:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            claims = self.users[grant.user]
            roles = claims.get("roles", [])
            nonce = "not-" + grant.nonce if self.wrong_nonce else grant.nonce
            id_token = self.sign(
                {
                    "sub": f"sub-{grant.user}",
                    "aud": client_id,
                    "nonce": nonce,
                    "preferred_username": grant.user,
                    **claims,
                }
            )
            access = self.sign(
                {
                    "sub": f"sub-{grant.user}",
                    "aud": AUDIENCE,
                    "preferred_username": grant.user,
                    # The user's claims as in the ID token (a name, preferred_username, DICOM
                    # names): an API sees who the pages see.
                    **{k: v for k, v in claims.items() if k not in ("roles", "email")},
                    "roles": roles if self.access_roles is None else self.access_roles,
                }
            )
            return JSONResponse(
                {
                    "access_token": access,
                    "id_token": id_token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                }
            )

        @app.get("/logout")
        def logout(request: Request) -> RedirectResponse:
            return RedirectResponse(request.query_params["post_logout_redirect_uri"], 303)

        return app

    def _grant(self, q: dict[str, str], user: str) -> RedirectResponse:
        code = secrets.token_urlsafe(16)
        self.grants[code] = Grant(
            q["client_id"], q["redirect_uri"], q["code_challenge"], q.get("nonce", ""), user
        )
        query = urlencode({"code": code, "state": q.get("state", "")})
        return RedirectResponse(f"{q['redirect_uri']}?{query}", status_code=303)


class RunningProvider:
    """``Provider`` on real HTTP, on a free loopback port."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.server = uvicorn.Server(
            uvicorn.Config(provider.app, host="127.0.0.1", port=0, log_config=None)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, message="OIDC provider startup")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        provider.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
