"""Server-rendered staff pages (Jinja2 + htmx) on the service kit.

A service keeps its templates in its own folder and renders them with a ``Pages``; the shared
layout (``base.html``), the sign-in page and the error pages come from ``shared/ui/templates``.
A page route is declared on an ``APIRouter(route_class=PageRoute)`` and takes its user from
``pages.user(*roles)`` (``csrf=True`` on routes that take a form): not signed in redirects to the
sign-in page, a missing role answers a 403 page, a form without the session's CSRF token a 403
page. ``ui_router(pages)`` adds the sign-in and sign-out pages and the static files.
"""

import hmac
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import structlog
from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from shared.errors import NotFound, RtopsError
from shared.settings import ROLES, RtopsSettings
from shared.ui import filters
from shared.ui.identity import staff_identity
from shared.ui.oidc import OidcClient
from shared.ui.session import (
    CSRF_FIELD,
    CsrfError,
    Session,
    check_pre_session_token,
    check_token,
    dev_sign_in_allowed,
    end_session,
    keep_api_token,
    keep_pending,
    oidc_sign_in,
    pre_session_token,
    read_session,
    start_session,
    take_pending,
)

log = structlog.get_logger(__name__)
UI = Path(__file__).parent
SHARED_TEMPLATES = UI / "templates"
STATIC = UI / "static"
STATIC_FILES = {  # name -> media type: nothing else under /ui/static is served
    "htmx.min.js": "text/javascript",
    "rtops.js": "text/javascript",
    "rtops.css": "text/css",
}
SIGN_IN = "/ui/sign-in"
CALLBACK = "/ui/auth/callback"
SIGNED_OUT = "/ui/signed-out"
# The navigation's names for the services (RTOPS_UI_SERVICE_URLS says where each is).
SERVICE_LABELS = {
    "scp_listener": "DICOM arrivals",
    "qa_tracker": "IGRT review",
    "scheduler": "Simulation",
    "documents": "Documents",
    "billing": "Billing",
}


@dataclass(frozen=True)
class ServiceLink:
    name: str
    label: str
    href: str
    current: bool


@dataclass(frozen=True)
class NavLink:
    label: str
    href: str


@dataclass
class Pages:
    """Renders a service's templates (its ``folder`` first, then the shared ones) with the
    layout's context: the signed-in user, the CSRF token, the navigation, the filters."""

    folder: Path | None = None
    nav: Sequence[NavLink] = ()
    home: str = "/ui/"
    _envs: dict[str, Environment] = field(default_factory=dict, repr=False)

    def env(self, settings: RtopsSettings) -> Environment:
        zone = settings.clinic_timezone
        if zone not in self._envs:
            folders = [self.folder] if self.folder else []
            env = Environment(
                loader=ChoiceLoader([FileSystemLoader([*folders, SHARED_TEMPLATES])]),
                autoescape=select_autoescape(default=True, default_for_string=True),
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.filters["person_name"] = filters.person_name
            env.filters["clinic_time"] = partial(_clinic_time, zone=ZoneInfo(zone))
            env.filters["iso_instant"] = filters.iso_instant
            self._envs[zone] = env
        return self._envs[zone]

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any] | None = None,
        *,
        session: Session | None = None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        settings: RtopsSettings = request.app.state.settings
        if session is None:
            session = read_session(request, settings)
        html = (
            self.env(settings)
            .get_template(template)
            .render(
                request=request,
                session=session,
                user=session.shown_as if session else None,
                role=session.role if session else None,
                csrf_field=CSRF_FIELD,
                csrf_token=session.csrf if session else "",
                nav=self.nav,
                home=self.home,
                root=root_path_of(request),
                services=service_links(request),
                clinic_zone=settings.clinic_timezone,
                **(context or {}),
            )
        )
        return HTMLResponse(html, status_code=status_code, headers=headers)

    def user(self, *roles: str, csrf: bool = False) -> Any:
        """Dependency: the signed-in session, holding one of ``roles`` (any role when none are
        named); with ``csrf`` the request's form must carry the session's CSRF token."""

        def signed_in(request: Request) -> Session:
            session = read_session(request, request.app.state.settings)
            if session is None:
                raise SignInRequired(self)
            if roles and not session.has(*roles):
                raise PageForbidden(
                    self,
                    f"This page needs one of the roles {', '.join(roles)}; "
                    f"you are signed in as {session.role}.",
                    session,
                )
            return session

        if not csrf:
            return Depends(signed_in)

        def with_token(
            session: Annotated[Session, Depends(signed_in)],
            csrf_token: Annotated[str | None, Form()] = None,
        ) -> Session:
            try:
                check_token(session.csrf, csrf_token)
            except CsrfError as exc:
                raise PageForbidden(self, str(exc), session) from None
            return session

        return Depends(with_token)


def service_links(request: Request) -> list[ServiceLink]:
    """The suite's services with pages, for the layout's service switcher: where each is
    (``RTOPS_UI_SERVICE_URLS``), this one marked."""
    settings: RtopsSettings = request.app.state.settings
    runtime = getattr(request.app.state, "runtime", None)
    current = runtime.service if runtime is not None else None
    return [
        ServiceLink(name, SERVICE_LABELS.get(name, name), url.rstrip("/") + "/ui/", name == current)
        for name, url in settings.ui_service_urls.items()
    ]


def _clinic_time(value: Any, fmt: str = "%a %d %b %H:%M", *, zone: ZoneInfo) -> str:
    return filters.clinic_time(value, zone, fmt)


class PageError(Exception):
    """Raised by a page's dependencies; ``PageRoute`` answers it with an HTML response."""

    def __init__(self, pages: Pages, message: str = "", session: Session | None = None) -> None:
        super().__init__(message)
        self.pages = pages
        self.session = session

    def response(self, request: Request) -> Response:
        raise NotImplementedError


class SignInRequired(PageError):
    def response(self, request: Request) -> Response:
        target = _here(request)
        if request.method != "GET":
            target = self.pages.home
        location = f"{root_path_of(request)}{SIGN_IN}?next={quote(_local(target), safe='')}"
        if request.headers.get("hx-request"):
            return Response(status_code=200, headers={"HX-Redirect": location})
        return RedirectResponse(location, status_code=303)


class PageForbidden(PageError):
    def response(self, request: Request) -> Response:
        return self.pages.render(
            request,
            "forbidden.html",
            {"message": str(self)},
            session=self.session,
            status_code=403,
        )


class PageRoute(APIRoute):
    """A route whose sign-in, role and CSRF failures are HTML pages, not problem+json."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except PageError as exc:
                return exc.response(request)

        return page_handler


def root_path_of(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _here(request: Request) -> str:
    """This request's page, relative to the service's root path."""
    path = request.url.path
    root = root_path_of(request)
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    return path + (f"?{request.url.query}" if request.url.query else "")


def _local(target: str | None) -> str:
    """Only a path on this site (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/ui/"
    return target


def ui_router(pages: Pages) -> APIRouter:
    """The sign-in and sign-out pages, ``/ui/`` (to the service's home page) and the static
    files, rendered with the service's ``pages`` (its navigation)."""
    router = APIRouter(route_class=PageRoute, include_in_schema=False, tags=["pages"])

    @router.get(SIGN_IN, response_class=HTMLResponse)
    def sign_in_form(request: Request, next: str | None = None) -> Response:
        settings: RtopsSettings = request.app.state.settings
        target = _local(next or pages.home)
        if oidc_sign_in(settings):
            url, pending = _oidc(request).begin(_absolute(request, CALLBACK))
            response = RedirectResponse(url, status_code=303)
            keep_pending(response, request, settings, {**pending, "next": target})
            return response
        if not dev_sign_in_allowed(settings):
            return _no_sign_in(pages, request)
        cookies = Response()
        token = pre_session_token(request, cookies, settings)
        body = pages.render(
            request,
            "sign_in.html",
            {"roles": ROLES, "next": target, "signin_token": token},
            session=None,
        )
        for value in cookies.headers.getlist("set-cookie"):
            body.headers.append("set-cookie", value)
        return body

    @router.post(SIGN_IN, response_class=HTMLResponse)
    def sign_in(
        request: Request,
        name: Annotated[str, Form(min_length=1, max_length=200)],
        role: Annotated[str, Form()],
        csrf_token: Annotated[str | None, Form()] = None,
        next: Annotated[str | None, Form()] = None,
    ) -> Response:
        settings: RtopsSettings = request.app.state.settings
        if not dev_sign_in_allowed(settings):
            return _no_sign_in(pages, request)
        try:
            check_pre_session_token(request, settings, csrf_token)
        except CsrfError as exc:
            raise PageForbidden(pages, str(exc)) from None
        name = name.strip()
        if role not in ROLES or not name:
            return pages.render(
                request,
                "sign_in.html",
                {
                    "roles": ROLES,
                    "next": _local(next),
                    "signin_token": csrf_token,
                    "error": "Give your name and one of the roles.",
                },
                session=None,
                status_code=422,
            )
        identity = staff_identity(settings, name)
        response = RedirectResponse(root_path_of(request) + _local(next or pages.home), 303)
        start_session(
            response,
            request,
            settings,
            user=name,
            roles=[role],
            names=identity.dicom_names,
            npi=identity.npi,
        )
        return response

    @router.get(CALLBACK, response_class=HTMLResponse, name="oidc_callback")
    def oidc_callback(
        request: Request,
        code: str | None = None,
        state: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
        iss: str | None = None,
        session_state: str | None = None,
    ) -> Response:
        settings: RtopsSettings = request.app.state.settings
        if not oidc_sign_in(settings):
            return _no_sign_in(pages, request)
        pending = take_pending(request, settings)
        if error:
            return _sign_in_failed(
                pages,
                request,
                f"The identity provider did not sign you in: {error_description or error}.",
                401,
            )
        if pending is None or not state or not code:
            return _sign_in_failed(
                pages,
                request,
                "This sign-in is not the one this browser started, or it took "
                "longer than ten minutes. Start again.",
                400,
            )
        if not hmac.compare_digest(pending.get("state", ""), state):  # RFC 6749 10.12
            return _sign_in_failed(
                pages,
                request,
                "The sign-in's state does not match this browser's. Start again.",
                400,
            )
        try:
            who = _oidc(request).finish(
                _absolute(request, CALLBACK), code, pending, request.app.state.authenticator
            )
        except RtopsError as exc:
            log.warning("oidc sign-in refused", reason=str(exc))
            return _sign_in_failed(pages, request, f"Sign-in refused: {exc}", exc.status)
        if not who.roles:
            return _sign_in_failed(
                pages,
                request,
                f"{who.display or who.subject} is signed in at the identity provider but holds "
                "no rtops role "
                f"(claim {settings.roles_claim!r}); ask IT to grant one of {', '.join(ROLES)}.",
                403,
            )
        # Keyed by the subject, never by preferred_username or email (the user's to change).
        identity = staff_identity(settings, who.subject, who.issuer, who.claims)
        response = RedirectResponse(root_path_of(request) + _local(pending.get("next")), 303)
        start_session(
            response,
            request,
            settings,
            user=who.user,
            roles=who.roles,
            names=identity.dicom_names,
            npi=identity.npi,
            origin="oidc",
            display=who.display,
            subject=who.subject,
            issuer=who.issuer,
        )
        keep_api_token(response, request, settings, who.access_token, who.expires_at)
        log.info("signed in", user=who.user, roles=who.roles, mapped=bool(identity.dicom_names))
        return response

    @router.get("/ui/sign-out", response_class=HTMLResponse)
    def sign_out_form(request: Request) -> Response:
        return pages.render(request, "sign_out.html")

    @router.post("/ui/sign-out")
    def sign_out(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        settings: RtopsSettings = request.app.state.settings
        session = read_session(request, settings)
        if session is not None:
            try:
                check_token(session.csrf, csrf_token)
            except CsrfError as exc:
                raise PageForbidden(pages, str(exc), session) from None
        target = root_path_of(request) + SIGN_IN
        if oidc_sign_in(settings):
            done = _absolute(request, SIGNED_OUT)
            target = _oidc(request).end_session_url(done) or done
        response = RedirectResponse(target, status_code=303)
        end_session(response)
        return response

    @router.get(SIGNED_OUT, response_class=HTMLResponse)
    def signed_out(request: Request) -> Response:
        return pages.render(request, "sign_out.html", session=None)

    @router.get("/ui/")
    def home(request: Request) -> Response:
        target = pages.home if pages.home != "/ui/" else SIGN_IN
        return RedirectResponse(root_path_of(request) + target, status_code=303)

    @router.get("/ui/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name}")
        return FileResponse(
            STATIC / name,
            media_type=STATIC_FILES[name],
            headers={"Cache-Control": "no-cache"},
        )

    return router


def _oidc(request: Request) -> OidcClient:
    state = request.app.state
    if getattr(state, "oidc", None) is None:
        state.oidc = OidcClient(state.settings)
    return state.oidc  # type: ignore[no-any-return]


def _absolute(request: Request, path: str) -> str:
    """``path`` on this service as the browser reaches it (scheme and host from the request,
    which uvicorn takes from X-Forwarded-* behind a trusted proxy; the root path kept)."""
    return f"{request.url.scheme}://{request.url.netloc}{root_path_of(request)}{path}"


def page_router(templates: Path, *, nav: Sequence[NavLink], home: str) -> tuple[Pages, APIRouter]:
    """A service's ``Pages`` (its templates, its navigation, its home page) and the router its
    pages go on, which already serves sign-in, sign-out and the static files."""
    pages = Pages(templates, nav=nav, home=home)
    router = APIRouter(route_class=PageRoute, include_in_schema=False, tags=["pages"])
    router.include_router(ui_router(pages))
    return pages, router


def _no_sign_in(pages: Pages, request: Request) -> Response:
    return pages.render(
        request,
        "error.html",
        {
            "title": "Sign-in not available",
            "message": "An OIDC issuer is configured (RTOPS_OIDC_ISSUER) but no client for the "
            "staff pages (RTOPS_OIDC_CLIENT_ID), so neither sign-in works: the development "
            "sign-in is refused wherever an issuer is set. Use the REST API with a bearer "
            "token meanwhile.",
        },
        session=None,
        status_code=501,
    )


def _sign_in_failed(pages: Pages, request: Request, message: str, status: int) -> Response:
    return pages.render(
        request,
        "error.html",
        {"title": "Not signed in", "message": message, "retry": SIGN_IN},
        session=None,
        status_code=status,
    )
