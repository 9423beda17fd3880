"""Staff pages of the QA tracker (``/ui``): the physician's review worklist, a fraction's
detail, the weekly compliance report (with its CSV) and the compliance trend.

Built on ``shared.ui`` (layout, sign-in, CSRF, filters). A review posted here goes through the
same use case as ``POST /v1/fractions/{id}/reviews`` (``QaService.add_review``), so it is
audited, announced and assessed exactly like one documented through the API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from services.qa_tracker import domain, report
from services.qa_tracker.overdue import status_at
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.store import AuditLog, Fraction, ReviewRow
from services.qa_tracker.store.reads import (
    evidence_of,
    physician_names,
    reviews_of,
    summary_rows,
    weekly_rows,
    worklist_page,
)
from shared.audit import record_request
from shared.auth import CLINICAL_STAFF
from shared.calendar import iso_week_bounds, iso_week_of
from shared.errors import Forbidden, NotFound, RuleViolation
from shared.ui import NavLink, Session, page_router, person_name
from shared.ui.patients import PATIENTS, timeline_router

WORKLIST = "/ui/worklist"
FRACTIONS = "/ui/fractions"
COMPLIANCE = "/ui/compliance"
TREND = "/ui/trend"
LIMIT = 300  # the most rows a page may ask for
PAGE = 100  # rows a page by default: a screenful or three; the HTML of 300 slowed first paint
TREND_WEEKS = 12
AXES = ("x", "y", "z")
WEEK = r"\d{4}-W\d{2}"

pages, router = page_router(
    Path(__file__).parent / "templates",
    nav=(
        NavLink("Review worklist", WORKLIST),
        NavLink("Weekly compliance", COMPLIANCE),
        NavLink("Trend", TREND),
        NavLink("Patient timeline", PATIENTS),
    ),
    home=WORKLIST,
)

router.include_router(timeline_router(pages))

Reader = Annotated[Session, pages.user(*CLINICAL_STAFF)]
Reviewer = Annotated[Session, pages.user("physician", csrf=True)]


@dataclass(frozen=True)
class Axis:
    name: str
    value: float | None
    over: bool


@dataclass(frozen=True)
class Row:
    fraction: Fraction
    status: str
    tolerance: domain.Tolerance
    translation: list[Axis]
    rotation: list[Axis]
    review: ReviewRow | None = None
    error: str | None = None
    comment: str = ""
    override_reason: str = ""


def axes(values: Sequence[float] | None, limit: float) -> list[Axis]:
    """A shift per axis, each marked when beyond ``limit`` (absolute)."""
    shown: list[float | None] = list(values) if values else [None, None, None]
    return [
        Axis(name, v, v is not None and abs(v) > limit)
        for name, v in zip(AXES, shown, strict=False)
    ]


def row_of(
    fraction: Fraction,
    policy: domain.ReviewPolicy,
    now: datetime,
    *,
    review: ReviewRow | None = None,
    **extra: Any,
) -> Row:
    tolerance = domain.tolerance_for(policy, technique=fraction.technique, site=fraction.site)
    return Row(
        fraction=fraction,
        status=status_at(fraction.review_status, fraction.due_at, now),
        tolerance=tolerance,
        translation=axes(fraction.translation_mm, tolerance.translation_mm),
        rotation=axes(fraction.rotation_deg, tolerance.rotation_deg),
        review=review,
        **extra,
    )


def dicom_names(user: Session) -> tuple[str, ...]:
    """Whom "my worklist" is for: the names the sign-in maps the user to; at the development
    sign-in, failing a mapping, the name typed there."""
    if user.names:
        return user.names
    return (user.user,) if user.origin == "dev" else ()


def _service(request: Request) -> QaService:
    return request.app.state.qa_service  # type: ignore[no-any-return]


# ---------------------------------------------------------------- pages


@router.get(WORKLIST, response_class=HTMLResponse)
def worklist(
    request: Request,
    user: Reader,
    scope: Literal["mine", "all"] | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT)] = PAGE,
) -> Response:
    """The review worklist: a physician's own fractions by default, everyone's for the rest;
    ``PAGE`` rows a page (``limit`` up to ``LIMIT``), "Next page" continues after the last one
    shown (``cursor``)."""
    service = _service(request)
    scope = scope or ("mine" if user.role == "physician" else "all")
    now = service.now()
    with request.app.state.session_factory.begin() as session:
        mine = physician_names(session, dicom_names(user)) if scope == "mine" else None
        try:
            page = worklist_page(session, mine, now=now, cursor=cursor, limit=limit)
        except RuleViolation:
            return pages.render(
                request,
                "error.html",
                {
                    "title": "Not a worklist page",
                    "message": "The link's page marker (cursor) is not one the worklist gave; "
                    "open the worklist again from its first page.",
                },
                session=user,
                status_code=422,
            )
        record_request(
            session,
            AuditLog,
            user.principal,
            request,
            patient_ids=[f.patient_id for f in page.fractions],
        )
        rows = [row_of(f, service.policy, now) for f in page.fractions]
        link = {"scope": scope} | ({"limit": str(limit)} if limit != PAGE else {})
        return pages.render(
            request,
            "worklist.html",
            {
                "rows": rows,
                "scope": scope,
                "mine": mine,
                "can_review": user.role == "physician",
                "total": page.total,
                "overdue": page.overdue,
                "after": page.after,
                # The page's rows are the total's first..last (the API's cursor, no offset).
                "first": max(page.total - page.after - len(rows), 0) + 1,
                "last": page.total - page.after,
                "paged": bool(cursor) or page.next_cursor is not None,
                "first_page": None if not cursor else "?" + urlencode(link),
                "next_page": (
                    "?" + urlencode(link | {"cursor": page.next_cursor})
                    if page.next_cursor
                    else None
                ),
            },
            session=user,
        )


@router.post(WORKLIST + "/{fraction_id}/review", response_class=HTMLResponse)
def review(
    request: Request,
    fraction_id: int,
    user: Reviewer,
    decision: Annotated[domain.Decision, Form()],
    comment: Annotated[str, Form(max_length=4000)] = "",
    override_reason: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    """Approve or reject from the worklist (htmx swaps the row for the answer)."""
    service = _service(request)
    factory = request.app.state.session_factory
    error, status = None, 200
    with factory() as session:
        fraction = session.get(Fraction, fraction_id)
        if fraction is None:
            raise NotFound(f"no fraction {fraction_id}")
        override_required = fraction.override_required and not fraction.override_documented
    if override_required and not override_reason.strip():
        error = "The shift exceeds tolerance: give an override reason to acknowledge it."
        status = 422
    else:
        try:
            service.add_review(
                fraction_id,
                NewReview(
                    decision=decision,
                    comment=comment.strip() or None,
                    override_reason=override_reason.strip() or None,
                    reviewed_at=None,
                ),
                # The reviewer's DICOM names come with the session (mapped at sign-in by the
                # stable identity), never from the form.
                principal=user.principal,
                resource=request.url.path,
            )
        except (RuleViolation, NotFound, Forbidden) as exc:
            error, status = str(exc), exc.status
    with factory() as session:
        fraction = session.get(Fraction, fraction_id)
        if fraction is None:
            raise NotFound(f"no fraction {fraction_id}")
        reviews = reviews_of(session, fraction_id)
        row = row_of(
            fraction,
            service.policy,
            service.now(),
            review=None if error else (reviews[-1] if reviews else None),
            error=error,
            comment=comment,
            override_reason=override_reason,
        )
        return pages.render(
            request,
            "_worklist_row.html",
            {"row": row, "can_review": True},
            session=user,
            status_code=status,
        )


# ---------------------------------------------------------------- a fraction's detail


@dataclass(frozen=True)
class RegistrationRow:
    sop_uid: str
    kind: str
    content_at: datetime
    creator: str | None
    translation: list[Axis]
    rotation: list[Axis]


@router.get(FRACTIONS + "/{fraction_id}", response_class=HTMLResponse)
def fraction_detail(request: Request, fraction_id: int, user: Reader) -> Response:
    """A fraction: its imaging, the registrations' shifts against the tolerance, its reviews
    (audited like ``GET /v1/fractions/{id}``)."""
    service = _service(request)
    with request.app.state.session_factory.begin() as session:
        fraction = session.get(Fraction, fraction_id)
        if fraction is None:
            return pages.render(
                request,
                "error.html",
                {"title": "Not found", "message": f"There is no fraction {fraction_id}."},
                session=user,
                status_code=404,
            )
        record_request(
            session, AuditLog, user.principal, request, patient_ids=[fraction.patient_id]
        )
        evidence = evidence_of(session, fraction)
        row = row_of(fraction, service.policy, service.now())
        registrations = [
            RegistrationRow(
                r.sop_uid,
                r.kind,
                r.content_at,
                r.creator,
                axes(r.translation_mm, row.tolerance.translation_mm),
                axes(r.rotation_deg, row.tolerance.rotation_deg),
            )
            for r in sorted(evidence.registrations, key=lambda r: r.content_at)
        ]
        return pages.render(
            request,
            "fraction.html",
            {
                "row": row,
                "imaging": sorted(evidence.imaging, key=lambda s: s.acquired_at),
                "registrations": registrations,
                "reviews": evidence.reviews,
            },
            session=user,
        )


# ---------------------------------------------------------------- weekly compliance


def _week_bounds(service: QaService, week: str | None) -> tuple[str, datetime, datetime]:
    """The week asked for, else the last full ISO week in the clinic's zone; ValueError for
    a week that is not one (``2026-W60``, ``soon``)."""
    zone = service.policy.calendar.zone
    if week is None:
        today = service.now().astimezone(zone).date()
        week = iso_week_of(today - timedelta(days=today.weekday() + 7))
    start, end = iso_week_bounds(week, zone)  # ValueError: not an ISO week
    return week, start, end


class BadWeek(Exception):
    pass


def _weekly(request: Request, user: Session, week: str | None) -> dict[str, Any]:
    service = _service(request)
    try:
        if week is not None and not re.fullmatch(WEEK, week):
            raise ValueError(week)
        week, start, end = _week_bounds(service, week)
    except ValueError:
        raise BadWeek(f"{week!r} is not an ISO week such as 2026-W47.") from None
    with request.app.state.session_factory.begin() as session:
        rows = summary_rows(session, start=start, end=end, now=service.now())
        record_request(session, AuditLog, user.principal, request, patient_ids=[])
    return report.weekly_body(week, start, end, domain.weekly_summary(rows))


def _bad_week(request: Request, user: Session, exc: BadWeek) -> Response:
    return pages.render(
        request,
        "error.html",
        {"title": "Not a week", "message": str(exc)},
        session=user,
        status_code=422,
    )


@router.get(COMPLIANCE, response_class=HTMLResponse)
def compliance(request: Request, user: Reader, week: str | None = None) -> Response:
    """The week's review compliance, by machine and by physician (``GET
    /v1/compliance/weekly``'s numbers), with its CSV and the neighbouring weeks."""
    try:
        body = _weekly(request, user, week)
    except BadWeek as exc:
        return _bad_week(request, user, exc)
    start = datetime.fromisoformat(body["from"])
    local = start.date()
    return pages.render(
        request,
        "compliance.html",
        {
            "report": body,
            "first_day": local,
            "last_day": local + timedelta(days=6),
            "previous": iso_week_of(local - timedelta(days=7)),
            "next": iso_week_of(local + timedelta(days=7)),
            "chart": Markup(report.weekly_chart(body["by_machine"])),  # escaped inside
            "columns": report.CSV_COLUMNS,
            "labels": report.COLUMN_LABELS,
        },
        session=user,
    )


@router.get(COMPLIANCE + ".csv")
def compliance_csv(request: Request, user: Reader, week: str | None = None) -> Response:
    """The week's report as CSV: the API's ``Accept: text/csv`` answer, with the page's
    session instead of a bearer token."""
    try:
        body = _weekly(request, user, week)
    except BadWeek as exc:
        return _bad_week(request, user, exc)
    return Response(
        report.weekly_csv(body),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{body["week"]}.csv"'},
    )


# ---------------------------------------------------------------- the trend


@router.get(TREND, response_class=HTMLResponse)
def trend(request: Request, user: Reader) -> Response:
    """Compliance over the last 12 full ISO weeks, by machine and by physician."""
    service = _service(request)
    zone = service.policy.calendar.zone
    now = service.now()
    weeks = report.last_weeks(now.astimezone(zone).date(), TREND_WEEKS)
    bounds = [(week, *iso_week_bounds(week, zone)) for week in weeks]
    with request.app.state.session_factory.begin() as session:
        rows = weekly_rows(session, bounds, now=now)
        record_request(session, AuditLog, user.principal, request, patient_ids=[])
    result = report.trend(rows, weeks)
    # The chart's legend writes names as people do; the table does the same with the filter.
    by_physician = {person_name(n) or n: v for n, v in result.by_physician.items()}
    charts = {
        "machine": report.trend_chart("Compliance by machine", weeks, result.by_machine),
        "physician": report.trend_chart("Compliance by physician", weeks, by_physician),
    }
    return pages.render(
        request,
        "trend.html",
        {
            "trend": result,
            "groups": [
                ("By machine", result.by_machine, Markup(charts["machine"])),  # escaped inside
                ("By physician", result.by_physician, Markup(charts["physician"])),
            ],
        },
        session=user,
    )
