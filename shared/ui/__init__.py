"""Staff pages on the service kit: the shared layout, sign-in, CSRF, static files and the
template filters. ``docs/pages.md`` shows how a service adds a page."""

from shared.ui.filters import clinic_time, person_name
from shared.ui.pages import NavLink, PageForbidden, PageRoute, Pages, page_router, ui_router
from shared.ui.session import CSRF_FIELD, SESSION_COOKIE, Session

__all__ = [
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "NavLink",
    "PageForbidden",
    "PageRoute",
    "Pages",
    "Session",
    "clinic_time",
    "page_router",
    "person_name",
    "ui_router",
]
