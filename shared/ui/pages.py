"""Server-rendered staff pages (Jinja2 + htmx) on the service kit.

A service keeps its templates in its own folder and renders them with a ``Pages``; the shared
layout (``base.html``), the sign-in page and the error pages come from ``shared/ui/templates``.
A page route is declared on an ``APIRouter(route_class=PageRoute)`` and takes its user from
``pages.user(*roles)`` (``csrf=True`` on routes that take a form): not signed in redirects to the
sign-in page, a missing role answers a 403 page, a form without the session's CSRF token a 403
page. ``ui_router(pages)`` adds the sign-in and sign-out pages and the static files.
"""

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape

from shared.errors import NotFound
from shared.settings import ROLES, RtopsSettings
from shared.ui import filters
from shared.ui.session import (
    CSRF_FIELD,
    CsrfError,
    Session,
    check_pre_session_token,
    check_token,
    dev_sign_in_allowed,
    end_session,
    pre_session_token,
    read_session,
    start_session,
)

UI = Path(__file__).parent
SHARED_TEMPLATES = UI / "templates"
STATIC = UI / "static"
STATIC_FILES = {  # name -> media type: nothing else under /ui/static is served
    "htmx.min.js": "text/javascript",
    "rtops.js": "text/javascript",
    "rtops.css": "text/css",
}
SIGN_IN = "/ui/sign-in"


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
                user=session.user if session else None,
                role=session.role if session else None,
                csrf_field=CSRF_FIELD,
                csrf_token=session.csrf if session else "",
                nav=self.nav,
                home=self.home,
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
            if roles and session.role not in roles:
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
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = request.headers.get("hx-current-url") or self.pages.home
        location = f"{SIGN_IN}?next={quote(_local(target), safe='')}"
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
        if not dev_sign_in_allowed(settings):
            return _no_dev_sign_in(pages, request)
        cookies = Response()
        token = pre_session_token(request, cookies, settings)
        body = pages.render(
            request,
            "sign_in.html",
            {"roles": ROLES, "next": _local(next or pages.home), "signin_token": token},
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
            return _no_dev_sign_in(pages, request)
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
        response = RedirectResponse(_local(next or pages.home), status_code=303)
        start_session(response, request, settings, user=name, role=role)
        return response

    @router.get("/ui/sign-out", response_class=HTMLResponse)
    def sign_out_form(request: Request) -> Response:
        return pages.render(request, "sign_out.html")

    @router.post("/ui/sign-out")
    def sign_out(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        session = read_session(request, request.app.state.settings)
        if session is not None:
            try:
                check_token(session.csrf, csrf_token)
            except CsrfError as exc:
                raise PageForbidden(pages, str(exc), session) from None
        response = RedirectResponse(SIGN_IN, status_code=303)
        end_session(response)
        return response

    @router.get("/ui/")
    def home() -> Response:
        return RedirectResponse(pages.home if pages.home != "/ui/" else SIGN_IN, status_code=303)

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


def page_router(templates: Path, *, nav: Sequence[NavLink], home: str) -> tuple[Pages, APIRouter]:
    """A service's ``Pages`` (its templates, its navigation, its home page) and the router its
    pages go on, which already serves sign-in, sign-out and the static files."""
    pages = Pages(templates, nav=nav, home=home)
    router = APIRouter(route_class=PageRoute, include_in_schema=False, tags=["pages"])
    router.include_router(ui_router(pages))
    return pages, router


def _no_dev_sign_in(pages: Pages, request: Request) -> Response:
    return pages.render(
        request,
        "error.html",
        {
            "title": "Sign-in not available",
            "message": "An OIDC issuer is configured (RTOPS_OIDC_ISSUER), so the development "
            "sign-in is refused. Sign-in through the hospital's identity provider comes in a "
            "later release; use the REST API with a bearer token meanwhile.",
        },
        session=None,
        status_code=501,
    )
