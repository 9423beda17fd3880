"""REST API of the billing service (``/v1``): charges with their holds and evidence, courses,
closing a course, confirming its kind, and the CSV and HL7 DFT^P03 exports. Roles: billing and
admin; every read is audited."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from services.billing import export as hl7_export
from services.billing.claims.csvfile import COLUMNS as CLAIM_CSV_COLUMNS
from services.billing.reconciliation import ClaimFileRejected, Reconciliation
from services.billing.service import BillingService
from services.billing.store import AuditLog, ChargeRow, Course
from services.billing.store.queries import ChargeFilter, charge_page, course_page
from shared.audit import record_request
from shared.auth import BillingStaff
from shared.errors import NotFound
from shared.pagination import Page
from shared.params import CursorQuery, PatientIdQuery, TimeRange, TimeRangeDep
from shared.web import problem

router = APIRouter(prefix="/v1", tags=["billing"])

# A course id is "course:" + a plan UID (64, VR UI): the course column's String(100).
COURSE_ID_MAX_CHARS = 100
CourseIdPath = Annotated[str, Path(min_length=1, max_length=COURSE_ID_MAX_CHARS)]


def _service(request: Request) -> BillingService:
    return request.app.state.billing_service  # type: ignore[no-any-return]


def _factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


def _reconciliation(request: Request) -> Reconciliation:
    return request.app.state.reconciliation  # type: ignore[no-any-return]


ServiceDep = Annotated[BillingService, Depends(_service)]
ReconciliationDep = Annotated[Reconciliation, Depends(_reconciliation)]
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
    kind: str = Field(
        description="as billed: conventional, srs or sbrt (after the limits: SRS "
        "in more than one session bills as SBRT, SBRT beyond five as conventional)"
    )
    kind_confirmed: Literal["conventional", "srs", "sbrt"] | None = Field(
        description="the kind staff confirmed (POST /v1/courses/{id}/kind); null: not set"
    )
    kind_candidate: dict[str, Any] | None = Field(
        description="why the plan facts make the course possibly stereotactic (suggested kind, "
        "fractions planned, dose per fraction, threshold, cranial site, plans); null: they do "
        "not, and the course is conventional unless staff set a kind"
    )
    kind_status: Literal["default", "unconfirmed", "confirmed"] = Field(
        description="unconfirmed: a candidate whose kind-dependent charges (delivery, "
        "management, image guidance) are held as course_kind_unconfirmed"
    )
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


class KindIn(BaseModel):
    kind: Literal["conventional", "srs", "sbrt"]
    reason: str | None = Field(default=None, max_length=2000)


def _course(row: Course) -> CourseOut:
    if row.kind_confirmed:
        status = "confirmed"
    elif row.kind_candidate:
        status = "unconfirmed"
    else:
        status = "default"
    return CourseOut.model_validate(
        {
            **{k: getattr(row, k) for k in CourseOut.model_fields if k != "kind_status"},
            "kind_status": status,
        }
    )


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
    patient_id: PatientIdQuery = None,
    course_id: Annotated[str | None, Query(min_length=1, max_length=COURSE_ID_MAX_CHARS)] = None,
    status: Literal["ready", "hold"] | None = None,
    limit: Limit = 100,
    cursor: CursorQuery = None,
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


# The claim CSV that POST /v1/claims reads (claim_id = the course), then what identifies the
# charge; readers of that format ignore the further columns.
EXPORT_COLUMNS = (
    *CLAIM_CSV_COLUMNS,
    "charge_id",
    "course_id",
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
    patient_id: PatientIdQuery = None,
) -> Response:
    """Ready charges not exported before, oldest first, as the claim CSV ``POST /v1/claims``
    reads (``claim_id`` is the course; modifiers joined by ``:``) with the charge's id, course,
    rule and rules version after it; they are marked exported. A charge on hold is never
    exported; an exported charge that later goes to hold or disappears is voided
    (``rtops.billing.charge.voided``)."""
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
                r.course_id,
                r.patient_id,
                r.service_date.isoformat(),
                r.cpt,
                ":".join(r.modifiers),
                r.units,
                r.id,
                r.course_id,
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


@router.get(
    "/charges/export.hl7",
    response_class=Response,
    responses={200: {"content": {hl7_export.MEDIA_TYPE: {}}}},
)
def export_charges_hl7(
    principal: BillingStaff,
    service: ServiceDep,
    request: Request,
    span: TimeRangeDep,
    patient_id: PatientIdQuery = None,
) -> Response:
    """The same selection as ``export.csv`` (ready charges not exported before; they are marked
    exported, once, whichever format took them) as an HL7 v2.5 batch of DFT^P03 messages: one
    message per patient (PID-3), one FT1 per charge (FT1-4 date of service, FT1-6 ``CG``, FT1-7
    CPT/HCPCS, FT1-10 units, FT1-26 modifiers, FT1-2 the charge id); ``POST /v1/claims``
    reads it back."""
    first, end = _days(span, service)
    rows = service.export(
        ChargeFilter(patient_id=patient_id, first_day=first, end_day=end),
        principal=principal,
        resource=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
    )
    now = service.now().astimezone(service.zone)
    body = hl7_export.dft_p03(rows, at=now, export_id=uuid.uuid4().hex[:14].upper())
    return Response(
        body,
        media_type=hl7_export.MEDIA_TYPE,
        headers={
            "Content-Disposition": (
                f'attachment; filename="charges-{now.strftime("%Y%m%dT%H%M%S")}.hl7"'
            )
        },
    )


@router.get("/courses", response_model=Page[CourseOut])
def list_courses(
    principal: BillingStaff,
    factory: FactoryDep,
    request: Request,
    patient_id: PatientIdQuery = None,
    status: Literal["open", "closed"] | None = None,
    limit: Limit = 100,
    cursor: CursorQuery = None,
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
    course_id: CourseIdPath, principal: BillingStaff, factory: FactoryDep, request: Request
) -> CourseOut:
    with factory.begin() as session:
        row = session.get(Course, course_id)
        if row is None:
            raise NotFound(f"no course {course_id!r}; GET /v1/courses lists them")
        record_request(session, AuditLog, principal, request, patient_ids=[row.patient_id])
        return _course(row)


@router.post("/courses/{course_id}/close", response_model=CourseOut)
def close_course(
    course_id: CourseIdPath,
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


@router.post("/courses/{course_id}/kind", response_model=CourseOut)
def set_course_kind(
    course_id: CourseIdPath,
    body: KindIn,
    principal: BillingStaff,
    service: ServiceDep,
    request: Request,
) -> CourseOut:
    """Confirm a course's kind (``conventional``, ``srs`` or ``sbrt``): DICOM does not say,
    and billing never guesses it. The course is evaluated again: charges held as
    ``course_kind_unconfirmed`` are released under the kind's codes (77427/77431 or
    77432/77435, 77371-77373, no IGRT with SRS/SBRT); exported charges that change are voided.
    Kept under the course id: a regrouping that keeps the id keeps the kind. Setting the same
    kind again changes nothing."""
    row = service.set_course_kind(
        course_id,
        kind=body.kind,
        reason=body.reason,
        principal=principal,
        resource=request.url.path,
    )
    return _course(row)


# ---------------------------------------------------------------- claims and discrepancies

MAX_CLAIM_FILE = 64 * 1024 * 1024


class ImportedOut(BaseModel):
    id: int
    format: str
    lines: int = Field(description="claim lines stored")
    remittances: int = Field(description="denied or adjusted 835 lines stored")
    patients: int


class DiscrepancyOut(BaseModel):
    kind: str = Field(
        description="missing_charge, unsupported_charge, excess_units, duplicate_charge, "
        "wrong_modifier, bundled_charge, deleted_code, unknown_code; from an 835: "
        "denied_line, adjusted_line"
    )
    patient_id: str
    cpt: str
    service_date: date
    rule: str | None
    citation: str | None
    claim_id: str | None = None
    line: int | None = Field(default=None, description="line or segment in the claim file")
    charge_id: str | None = None
    units: int = 0
    detail: str = ""


@router.post(
    "/claims",
    response_model=ImportedOut,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "maxLength": MAX_CLAIM_FILE,
                            }
                        },
                        "required": ["file"],
                    }
                },
                "text/csv": {"schema": {"type": "string", "maxLength": MAX_CLAIM_FILE}},
                "application/edi-x12": {"schema": {"type": "string", "maxLength": MAX_CLAIM_FILE}},
                "x-application/hl7-v2+er7": {
                    "schema": {"type": "string", "maxLength": MAX_CLAIM_FILE}
                },
            },
            "required": True,
        }
    },
)
async def post_claims(
    principal: BillingStaff, reconciliation: ReconciliationDep, request: Request
) -> Any:
    """Import claim lines: CSV (``claim_id,patient_id,service_date,cpt,modifiers,units``),
    HL7 v2 DFT^P03, X12 5010 837P / 837I, or an 835 remittance; as a multipart upload (field
    ``file``) or the raw body. The format is told by the content. A file with any error is a
    422 listing every error by line, and nothing of it is stored; the same file twice is 409."""
    content_type = request.headers.get("content-type", "")
    filename: str | None = None
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return problem(
                422,
                "Claim file rejected",
                "send the file in the multipart field 'file'",
                instance=request.url.path,
                errors=[],
            )
        content = await upload.read()
        filename, content_type = upload.filename, upload.content_type or ""
    else:
        content = await request.body()
    if len(content) > MAX_CLAIM_FILE:
        return problem(
            413,
            "Claim file too large",
            f"at most {MAX_CLAIM_FILE // (1024 * 1024)} MiB; split the file",
            instance=request.url.path,
        )
    try:
        imported = await run_in_threadpool(
            reconciliation.import_claims,
            content,
            content_type=content_type or None,
            filename=filename,
            principal=principal,
            resource=request.url.path,
        )
    except ClaimFileRejected as exc:
        return problem(
            422,
            "Claim file rejected",
            f"{len(exc.errors)} error(s); nothing of the file was stored",
            instance=request.url.path,
            format=exc.format,
            errors=[{"line": e.line, "segment": e.segment, "reason": e.reason} for e in exc.errors],
        )
    return ImportedOut(**imported.__dict__)


@router.get("/discrepancies")
def discrepancies(
    principal: BillingStaff,
    service: ServiceDep,
    reconciliation: ReconciliationDep,
    factory: FactoryDep,
    request: Request,
    span: TimeRangeDep,
    patient_id: PatientIdQuery = None,
) -> dict[str, list[DiscrepancyOut]]:
    """The charges billing derived against the claim lines imported, for dates of service in
    ``from``/``to``: each discrepancy with its kind, rule and citation; an 835's denied and
    adjusted lines after them. With both ``from`` and ``to``, ``missing_charge`` is limited to
    that period (the claim file's)."""
    first, end = _days(span, service)
    with factory.begin() as session:
        found, remittances = reconciliation.discrepancies(
            session, patient_id=patient_id, first=first, end=end
        )
        record_request(
            session,
            AuditLog,
            principal,
            request,
            patient_ids=[d.patient_id for d in found] + [r.patient_id for r in remittances],
        )
    items = [DiscrepancyOut.model_validate(d, from_attributes=True) for d in found]
    items += [DiscrepancyOut(**r.__dict__, rule=None, citation=None) for r in remittances]
    return {"items": items}
