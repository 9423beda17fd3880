"""REST API of the billing service (``/v1``): charges with their holds and evidence, courses,
closing a course, and the CSV export. Roles: billing and admin; every read is audited."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from services.billing.service import BillingService
from services.billing.store import AuditLog, ChargeRow, Course
from services.billing.store.queries import ChargeFilter, charge_page, course_page
from shared.audit import record_request
from shared.auth import BillingStaff
from shared.errors import NotFound
from shared.pagination import Page
from shared.params import TimeRange, TimeRangeDep

router = APIRouter(prefix="/v1", tags=["billing"])


def _service(request: Request) -> BillingService:
    return request.app.state.billing_service  # type: ignore[no-any-return]


def _factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


ServiceDep = Annotated[BillingService, Depends(_service)]
FactoryDep = Annotated[sessionmaker[Session], Depends(_factory)]
Limit = Annotated[int, Query(ge=1, le=500)]


class ChargeOut(BaseModel):
    id: str = Field(description="deterministic: course|code|occurrence|modifiers")
    patient_id: str
    course_id: str
    cpt: str
    modifiers: list[str]
    units: int
    service_date: date
    period_start: date
    period_end: date
    status: Literal["ready", "hold"]
    hold_reason: str | None
    evidence: list[str] = Field(description="ids of the events behind the charge")
    rule: str
    citation: str
    rules_version: str
    exported: bool
    exported_at: datetime | None


class ClosureOut(BaseModel):
    on: date
    fractions: int = Field(description="fractions delivered by then")
    reason: Literal["planned_delivered", "summary_record", "staff", "inactivity"]
    evidence: list[str]


class CourseOut(BaseModel):
    id: str
    patient_id: str
    plan_uids: list[str]
    corrected: bool = Field(description="grouped by a staff correction")
    kind: str
    status: Literal["open", "closed"]
    fractions_delivered: int = Field(description="treatment sessions counted (external beam)")
    first_session: date | None
    last_session: date | None
    closures: list[ClosureOut]
    unresolved: list[dict[str, Any]] = Field(
        description="occurrences no rule codes: reported, never guessed"
    )
    bundled: list[dict[str, Any]] = Field(description="charges a bundle includes in another")


class CloseIn(BaseModel):
    closed_on: date | None = Field(
        default=None, description="the course's last day; default today (clinic time)"
    )
    reason: str | None = Field(default=None, max_length=2000)


def _charge(row: ChargeRow) -> ChargeOut:
    return ChargeOut.model_validate(row, from_attributes=True)


def _course(row: Course) -> CourseOut:
    return CourseOut.model_validate(row, from_attributes=True)


def _days(span: TimeRange, service: BillingService) -> tuple[date | None, date | None]:
    """A time range as dates of service in the clinic's zone: [first, end)."""

    def day(moment: datetime | None, *, end: bool) -> date | None:
        if moment is None:
            return None
        local = moment.astimezone(service.zone)
        # An end at local midnight excludes that day; any later time includes it.
        return local.date() + timedelta(days=1) if end and local.time() != time(0) else local.date()

    return day(span.start, end=False), day(span.end, end=True)


@router.get("/charges", response_model=Page[ChargeOut])
def list_charges(
    principal: BillingStaff,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
    span: TimeRangeDep,
    patient_id: str | None = None,
    course_id: str | None = None,
    status: Literal["ready", "hold"] | None = None,
    limit: Limit = 100,
    cursor: str | None = None,
) -> Page[ChargeOut]:
    """Charges by date of service (``from``/``to``), newest first; ``next_cursor`` continues."""
    first, end = _days(span, service)
    where = ChargeFilter(patient_id, course_id, status, first, end)
    with factory.begin() as session:
        rows, next_cursor = charge_page(session, where, cursor=cursor, limit=limit)
        record_request(
            session, AuditLog, principal, request, patient_ids=[r.patient_id for r in rows]
        )
        items = [_charge(r) for r in rows]
    return Page[ChargeOut](items=items, next_cursor=next_cursor)


EXPORT_COLUMNS = (
    "charge_id",
    "patient_id",
    "course_id",
    "service_date",
    "cpt",
    "modifiers",
    "units",
    "rule",
    "rules_version",
)


@router.get(
    "/charges/export.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def export_charges(
    principal: BillingStaff,
    service: ServiceDep,
    request: Request,
    span: TimeRangeDep,
    patient_id: str | None = None,
) -> Response:
    """Ready charges not exported before, as CSV (modifiers joined by ``;``), oldest first;
    they are marked exported. A charge on hold is never exported; an exported charge that later
    goes to hold or disappears is voided (``rtops.billing.charge.voided``)."""
    first, end = _days(span, service)
    rows = service.export(
        ChargeFilter(patient_id=patient_id, first_day=first, end_day=end),
        principal=principal,
        resource=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    for r in rows:
        writer.writerow(
            (
                r.id,
                r.patient_id,
                r.course_id,
                r.service_date.isoformat(),
                r.cpt,
                ";".join(r.modifiers),
                r.units,
                r.rule,
                r.rules_version,
            )
        )
    stamp = service.now().astimezone(service.zone).strftime("%Y%m%dT%H%M%S")
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="charges-{stamp}.csv"'},
    )


@router.get("/courses", response_model=Page[CourseOut])
def list_courses(
    principal: BillingStaff,
    factory: FactoryDep,
    request: Request,
    patient_id: str | None = None,
    status: Literal["open", "closed"] | None = None,
    limit: Limit = 100,
    cursor: str | None = None,
) -> Page[CourseOut]:
    """Courses with their fractions delivered and status (open or closed, with each closure
    point and why)."""
    with factory.begin() as session:
        rows, next_cursor = course_page(
            session, patient_id=patient_id, status=status, cursor=cursor, limit=limit
        )
        record_request(
            session, AuditLog, principal, request, patient_ids=[r.patient_id for r in rows]
        )
        items = [_course(r) for r in rows]
    return Page[CourseOut](items=items, next_cursor=next_cursor)


@router.get("/courses/{course_id}", response_model=CourseOut)
def get_course(
    course_id: str, principal: BillingStaff, factory: FactoryDep, request: Request
) -> CourseOut:
    with factory.begin() as session:
        row = session.get(Course, course_id)
        if row is None:
            raise NotFound(f"no course {course_id!r}; GET /v1/courses lists them")
        record_request(session, AuditLog, principal, request, patient_ids=[row.patient_id])
        return _course(row)


@router.post("/courses/{course_id}/close", response_model=CourseOut)
def close_course(
    course_id: str,
    principal: BillingStaff,
    service: ServiceDep,
    request: Request,
    body: CloseIn | None = None,
) -> CourseOut:
    """End a course (staff closure): a 3-4 fraction remainder of 77427 is earned now; treatment
    after ``closed_on`` reopens the course and is charged as the difference."""
    body = body or CloseIn()
    row = service.close_course(
        course_id,
        closed_on=body.closed_on,
        reason=body.reason,
        principal=principal,
        resource=request.url.path,
    )
    return _course(row)
