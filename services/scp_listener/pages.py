"""Staff pages of the DICOM SCP (``/ui``): what IT looks at when "a linac's objects stopped
arriving": what arrived (by device and kind), the devices in the registry and when each last
sent, and the recent refusals and failed stores with their reasons.

Built on ``shared.ui``. Readable by the REST API's ``DeviceOperator`` roles
(``DEVICE_OPERATIONS``); a page that shows patient data (or the objects of a patient) is
audited like the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Query, Request, Response
from fastapi.responses import HTMLResponse
from pydicom.uid import UID

from services.scp_listener import sop
from services.scp_listener.devices import Device, DeviceRegistry
from services.scp_listener.metrics import Problem, RecentProblems
from services.scp_listener.store import (
    AuditLog,
    DicomObject,
    Outbox,
    arrival_counts,
    device_activity,
    received_objects,
)
from shared.audit import record_request
from shared.auth import DEVICE_OPERATIONS
from shared.calendar import local_midnight
from shared.errors import RuleViolation
from shared.outbox import outbox_depth
from shared.pagination import page_of
from shared.ui import NavLink, Session, page_router
from shared.ui.forms import form_day

ARRIVALS = "/ui/arrivals"
DEVICES = "/ui/devices"
PROBLEMS = "/ui/problems"
PAGE_SIZE = 50

pages, router = page_router(
    Path(__file__).parent / "templates",
    nav=(
        NavLink("Arrivals", ARRIVALS),
        NavLink("Devices", DEVICES),
        NavLink("Problems", PROBLEMS),
    ),
    home=ARRIVALS,
)

Operator = Annotated[Session, pages.user(*DEVICE_OPERATIONS)]

# Status words of a failed C-STORE, as the problems page explains them.
STATUS_TEXT = {
    0xC210: "Cannot understand: the object could not be decoded or its attributes read",
    0xA900: "Dataset does not match SOP class: the object is not what it was sent as",
    0xA700: "Out of resources: storage failed in rtops; the device should retry",
    0x0110: "Processing failure: a fault in rtops, not in the object (see the log)",
    0x0122: "SOP class not supported: rtops does not keep this kind of object",
    0x0124: "Not authorized: the device was removed from the registry",
}
REASON_TEXT = {
    "unknown_calling_ae": "unknown calling AE title",
    "wrong_called_ae": "wrong called AE title",
    "too_many_associations": "too many associations",
    "sop_class_not_supported": "SOP class not supported",
    "transfer_syntax_not_supported": "no transfer syntax in common",
    "presentation_context_refused": "presentation context refused",
    "cannot_understand": "cannot understand",
    "dataset_does_not_match_sop_class": "dataset does not match SOP class",
    "out_of_resources": "out of resources",
    "internal_error": "internal error",
}


def kind_name(uid: str) -> str:
    return sop.NAMES.get(uid) or getattr(UID(uid), "name", "") or uid


def _zone(request: Request) -> ZoneInfo:
    return ZoneInfo(request.app.state.settings.clinic_timezone)


def _registry(request: Request) -> DeviceRegistry:
    return request.app.state.device_registry  # type: ignore[no-any-return]


# ---------------------------------------------------------------- arrivals


@router.get(ARRIVALS, response_class=HTMLResponse)
def arrivals(
    request: Request,
    user: Operator,
    device: str | None = None,
    kind: str | None = None,
    patient: str | None = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    cursor: str | None = None,
) -> Response:
    """What arrived, newest first, counted by device and kind; filters are exact (the device's
    AE title, the SOP class, the patient ID) and the dates are clinic dates, both included."""
    zone = _zone(request)
    errors: list[str] = []
    first, last = form_day(start, "from", errors), form_day(end, "to", errors)
    device, kind, patient = (device or "").strip(), (kind or "").strip(), (patient or "").strip()
    filters = {
        "patient_id": patient or None,
        "calling_ae": device or None,
        "sop_class_uid": kind or None,
        "received_from": local_midnight(first, zone) if first else None,
        "received_to": local_midnight(last + timedelta(days=1), zone) if last else None,
    }
    query = received_objects(**filters)
    rows: list[DicomObject] = []
    next_cursor = None
    with request.app.state.session_factory.begin() as session:
        if not errors:
            try:
                rows, next_cursor = page_of(
                    session, query, [DicomObject.id], cursor=cursor, limit=PAGE_SIZE
                )
            except RuleViolation as exc:
                errors.append(str(exc))
        counts = arrival_counts(session, **filters) if not errors else []
        record_request(
            session, AuditLog, user.principal, request, patient_ids=[r.patient_id for r in rows]
        )
        known = {c.calling_ae for c in counts} | set(_registry(request).devices)
        choices = sorted(known | ({device} if device else set()))
        shown = {"device": device, "kind": kind, "patient": patient}
        shown |= {"from": start or "", "to": end or ""}
        return pages.render(
            request,
            "arrivals.html",
            {
                "rows": rows,
                "counts": counts,
                "total": sum(c.objects for c in counts),
                "next_cursor": next_cursor,
                "first_page": not cursor,
                "errors": errors,
                "filters": shown,
                "devices": choices,
                "kinds": sorted(sop.NAMES.items(), key=lambda kv: kv[1]),
                "kind_name": kind_name,
                "registry": _registry(request).devices,
            },
            session=user,
        )


# ---------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceRow:
    ae_title: str
    device: Device | None  # None: sent objects but is no longer in the registry
    last_received_at: datetime | None
    today: int


@router.get(DEVICES, response_class=HTMLResponse)
def devices(request: Request, user: Operator) -> Response:
    """The registry in force, each device's last object and today's count (clinic day)."""
    zone = _zone(request)
    today = local_midnight(datetime.now(zone).date(), zone)
    registry = _registry(request).devices
    with request.app.state.session_factory() as session:
        activity = device_activity(session, today)
    rows = [
        DeviceRow(
            ae,
            registry.get(ae),
            activity[ae].last_received_at if ae in activity else None,
            activity[ae].objects_since if ae in activity else 0,
        )
        for ae in [*sorted(registry), *sorted(set(activity) - set(registry))]
    ]
    return pages.render(
        request,
        "devices.html",
        # The file name and the setting, not a server path (it would show the machine layout).
        {"rows": rows, "today": today, "path": _registry(request).path.name},
        session=user,
    )


# ---------------------------------------------------------------- problems


@router.get(PROBLEMS, response_class=HTMLResponse)
def problems(request: Request, user: Operator, device: str | None = None) -> Response:
    """Recent refused associations, refused contexts and failed stores (of every SCP process:
    the workers send theirs to this one; newest first), and the events waiting for NATS."""
    recent: RecentProblems = request.app.state.problems
    items: list[Problem] = recent.newest_first()
    device = (device or "").strip()
    if device:
        items = [p for p in items if p.calling_ae == device]
    depth = outbox_depth(request.app.state.session_factory, Outbox)
    with request.app.state.session_factory.begin() as session:
        # The objects named are a patient's: the read is audited (no patient ID is known).
        record_request(session, AuditLog, user.principal, request, patient_ids=[])
    context: dict[str, Any] = {
        "items": items,
        "recent": recent,
        "device": device,
        "outbox_depth": depth,
        "status_text": STATUS_TEXT,
        "reason_text": REASON_TEXT,
        "scp_ae_title": request.app.state.settings.scp_ae_title,
    }
    return pages.render(request, "problems.html", context, session=user)
