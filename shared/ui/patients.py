"""The patient timeline page (``/ui/patients/{patient_id}``), which any service's pages can
serve: it gathers what every service's API says about the patient (``shared.ui.timeline``)
with the signed-in user's token, and audits the page read in the hosting service's log."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse

from shared.audit import record_request
from shared.settings import ROLES, RtopsSettings
from shared.ui.pages import SERVICE_LABELS, PageRoute, Pages, SignInRequired, root_path_of
from shared.ui.session import Session, api_token
from shared.ui.timeline import gather_timeline

PATIENTS = "/ui/patients"
PATIENT_ID = r"^[^/\\]{1,64}$"  # DICOM LO (PS3.5 6.2): 64 characters, no path separators


def api_bases(request: Request) -> dict[str, str]:
    """Where the server calls each service: RTOPS_UI_API_URLS, else the pages' address
    (a path such as "/qa" on the host this request came to)."""
    settings: RtopsSettings = request.app.state.settings
    here = f"{request.url.scheme}://{request.url.netloc}"
    bases = {}
    for name, url in settings.ui_service_urls.items():
        base = settings.ui_api_urls.get(name, url)
        bases[name] = base if "://" in base else here + base
    return bases


def _audit(request: Request, user: Session, patient_id: str) -> None:
    runtime = request.app.state.runtime
    with runtime.factory.begin() as session:
        record_request(
            session, runtime.tables.audit_log, user.principal, request, patient_ids=[patient_id]
        )


def timeline_router(pages: Pages) -> APIRouter:
    router = APIRouter(route_class=PageRoute, include_in_schema=False, tags=["pages"])
    # Every role: each section shows what that service's API lets this user read.
    anyone = pages.user(*ROLES)

    @router.get(PATIENTS, response_class=HTMLResponse)
    def find(
        request: Request,
        user: Session = anyone,
        patient_id: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        if patient_id and patient_id.strip():
            target = f"{root_path_of(request)}{PATIENTS}/{quote(patient_id.strip(), safe='')}"
            return RedirectResponse(target, status_code=303)
        return pages.render(request, "timeline.html", {"timeline": None}, session=user)

    @router.get(PATIENTS + "/{patient_id}", response_class=HTMLResponse)
    async def timeline(
        request: Request,
        patient_id: Annotated[str, Path(pattern=PATIENT_ID)],
        user: Session = anyone,
    ) -> Response:
        settings: RtopsSettings = request.app.state.settings
        token = api_token(request, settings, user)
        if token is None:  # the provider's access token expired: a new sign-in renews it
            raise SignInRequired(pages)
        found = await gather_timeline(
            patient_id,
            api_bases(request),
            SERVICE_LABELS,
            token,
            mounts=getattr(request.app.state, "http_mounts", None),
        )
        await run_in_threadpool(_audit, request, user, patient_id)
        return pages.render(
            request,
            "timeline.html",
            {
                "timeline": found,
                "days": found.days(settings.clinic_timezone),
                "labels": SERVICE_LABELS,
            },
            session=user,
        )

    return router
