"""REST API of the QA tracker (``/v1``): fractions and their reviews, the flag worklist, and
the weekly compliance report (JSON, CSV or a printable HTML page)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker import domain
from services.qa_tracker.assessment import review_facts
from services.qa_tracker.overdue import status_at
from services.qa_tracker.report import weekly_body, weekly_csv, weekly_html
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.store import AuditLog, Fraction, ReviewRow
from services.qa_tracker.store.reads import (
    FractionFilter,
    evidence_of,
    fraction_page,
    summary_rows,
)
from shared.audit import record_request
from shared.auth import ClinicalReader, PhysicianOnly
from shared.calendar import iso_week_bounds
from shared.errors import NotFound, RuleViolation
from shared.pagination import Page
from shared.params import WEEK_PATTERN, CursorQuery, PatientIdQuery, RowId, TimeRangeDep

router = APIRouter(prefix="/v1", tags=["qa"])
StatusName = Literal[
    "pending", "reviewed_on_time", "reviewed_late", "reviewed_backdated", "overdue", "not_imaged"
]


def _service(request: Request) -> QaService:
    return request.app.state.qa_service  # type: ignore[no-any-return]


def _factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


ServiceDep = Annotated[QaService, Depends(_service)]
FactoryDep = Annotated[sessionmaker[Session], Depends(_factory)]


class FractionOut(BaseModel):
    id: int
    patient_id: str
    plan_uid: str | None
    fraction_number: int | None
    treated_at: datetime
    machine: str | None
    imaged: bool
    review_status: StatusName
    due_at: datetime | None
    correction_mm: float | None = Field(description="largest translation over the axes")
    override_required: bool
    override_documented: bool
    rejected: bool
    physician: str | None


class ReviewIn(BaseModel):
    decision: domain.Decision
    comment: str | None = Field(default=None, max_length=4000)
    override_reason: str | None = Field(
        default=None,
        max_length=4000,
        description="the physician's acknowledgment of a correction beyond tolerance",
    )
    reviewed_at: AwareDatetime | None = Field(
        default=None,
        description="default now; an earlier time records a review documented elsewhere "
        "(further back than the policy's backdate tolerance, default 60 minutes, it needs "
        "backdate_reason and documented_in); never in the future",
    )
    backdate_reason: str | None = Field(
        default=None, max_length=4000, description="why a backdated review is documented late"
    )
    documented_in: str | None = Field(
        default=None,
        max_length=200,
        description='the system a backdated review was first documented in, e.g. "ARIA"',
    )


class ReviewOut(BaseModel):
    id: int
    decision: str
    comment: str | None
    override_reason: str | None
    reviewed_at: datetime = Field(description="when the review says it happened")
    recorded_at: datetime = Field(description="when rtops recorded it (the server's clock)")
    backdated: bool = Field(
        description="documented by a person more than the backdate tolerance after reviewed_at"
    )
    backdate_reason: str | None
    documented_in: str | None
    physician: str = Field(description="the reviewer's DICOM person name, or stable identity")
    recorded_by: str | None = Field(description="the stable identity that recorded it")
    source: str


def review_out(row: ReviewRow, policy: domain.ReviewPolicy) -> ReviewOut:
    facts = review_facts(row)
    return ReviewOut.model_validate(
        {
            **{k: getattr(row, k) for k in ReviewOut.model_fields if k != "backdated"},
            "backdated": domain.is_backdated(facts.reviewed_at, facts.recorded_at, policy),
        }
    )


class ImagingOut(BaseModel):
    series_uid: str
    classification: str
    acquired_at: datetime
    instance_count: int
    machine: str | None


class RegistrationOut(BaseModel):
    sop_uid: str
    kind: str
    content_at: datetime
    creator: str | None
    translation_mm: list[float] | None
    rotation_deg: list[float] | None


class FractionDetail(FractionOut):
    next_fraction_at: datetime | None
    therapist_override: bool
    partial: bool
    imaging: list[ImagingOut]
    registrations: list[RegistrationOut]
    reviews: list[ReviewOut]


def _out(fraction: Fraction, now: datetime) -> dict[str, Any]:
    translation = fraction.translation_mm
    return {
        "id": fraction.id,
        "patient_id": fraction.patient_id,
        "plan_uid": fraction.plan_uid,
        "fraction_number": fraction.fraction_number,
        "treated_at": fraction.treated_at,
        "machine": fraction.machine,
        "imaged": fraction.imaged,
        "review_status": status_at(fraction.review_status, fraction.due_at, now),
        "due_at": fraction.due_at,
        "correction_mm": max(abs(v) for v in translation) if translation else None,
        "override_required": fraction.override_required,
        "override_documented": fraction.override_documented,
        "rejected": fraction.rejected,
        "physician": fraction.physician,
    }


# Treatment Machine Name is SH (16 characters, PS3.5 table 6.2-1); the column holds 64.
MachineQuery = Annotated[
    str | None, Query(max_length=64, description="treatment machine name (300A,00B2)")
]


@router.get("/fractions", response_model=Page[FractionOut])
def list_fractions(
    principal: ClinicalReader,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
    treated: TimeRangeDep,
    patient_id: PatientIdQuery = None,
    status: StatusName | None = None,
    machine: MachineQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: CursorQuery = None,
) -> Page[FractionOut]:
    """Treated fractions, newest first; ``next_cursor`` continues the listing."""
    now = service.now()
    where = FractionFilter(patient_id, treated.start, treated.end, status, machine)
    with factory.begin() as session:
        page, next_cursor = fraction_page(session, where, now=now, cursor=cursor, limit=limit)
        record_request(
            session, AuditLog, principal, request, patient_ids=[f.patient_id for f in page]
        )
        items = [FractionOut(**_out(f, now)) for f in page]
    return Page[FractionOut](items=items, next_cursor=next_cursor)


@router.get("/fractions/{fraction_id}", response_model=FractionDetail)
def get_fraction(
    fraction_id: RowId,
    principal: ClinicalReader,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
) -> FractionDetail:
    now = service.now()
    with factory.begin() as session:
        fraction = session.get(Fraction, fraction_id)
        if fraction is None:
            raise NotFound(f"no fraction {fraction_id}")
        record_request(session, AuditLog, principal, request, patient_ids=[fraction.patient_id])
        evidence = evidence_of(session, fraction)
        return FractionDetail(
            **_out(fraction, now),
            next_fraction_at=fraction.next_fraction_at,
            therapist_override=fraction.therapist_override,
            partial=fraction.partial,
            imaging=[ImagingOut.model_validate(s, from_attributes=True) for s in evidence.imaging],
            registrations=[
                RegistrationOut.model_validate(r, from_attributes=True)
                for r in evidence.registrations
            ],
            reviews=[review_out(r, service.policy) for r in evidence.reviews],
        )


@router.post("/fractions/{fraction_id}/reviews", response_model=ReviewOut, status_code=201)
def post_review(
    fraction_id: RowId,
    body: ReviewIn,
    principal: PhysicianOnly,
    service: ServiceDep,
    request: Request,
) -> ReviewOut:
    """Document a physician's review of the fraction's images and shifts. 403 when the review
    policy's ``reviewers`` setting does not let this physician review this fraction."""
    review = service.add_review(
        fraction_id,
        NewReview(
            decision=body.decision,
            comment=body.comment,
            override_reason=body.override_reason,
            reviewed_at=body.reviewed_at,
            backdate_reason=body.backdate_reason,
            documented_in=body.documented_in,
        ),
        principal=principal,
        resource=request.url.path,
    )
    return review_out(review, service.policy)


@router.get("/flags")
def flags(
    principal: ClinicalReader,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
    status: Literal["open"] = "open",
) -> dict[str, Any]:
    """The worklist of problems, grouped by physician: overdue reviews, overrides required
    but not documented, and rejected reviews without a later approval."""
    with factory.begin() as session:
        groups = service.open_flags(session)
        record_request(
            session,
            AuditLog,
            principal,
            request,
            patient_ids=[flag.patient_id for items in groups.values() for flag in items],
        )
    return {
        "status": status,
        "physicians": [
            {"physician": name, "flags": [flag.model_dump(mode="json") for flag in items]}
            for name, items in sorted(groups.items())
        ],
    }


@router.get("/compliance/weekly", response_model=None)
def weekly(
    principal: ClinicalReader,
    service: ServiceDep,
    factory: FactoryDep,
    request: Request,
    week: Annotated[str, Query(pattern=WEEK_PATTERN, max_length=8, examples=["2026-W48"])],
    machine: MachineQuery = None,
    physician: Annotated[
        str | None,
        Query(
            max_length=200,  # a DICOM name (PN, 64 per component group) or a stable identity
            description="the reviewing physician's DICOM person name",
        ),
    ] = None,
) -> Any:
    """The week's compliance; ``Accept: text/csv`` gives CSV, ``text/html`` a printable page."""
    zone = service.policy.calendar.zone
    try:
        start, end = iso_week_bounds(week, zone)
    except (ValueError, OverflowError) as exc:
        raise RuleViolation(str(exc)) from exc
    with factory.begin() as session:
        rows = summary_rows(
            session, start=start, end=end, now=service.now(), machine=machine, physician=physician
        )
        record_request(session, AuditLog, principal, request, patient_ids=[])
    body = weekly_body(week, start, end, domain.weekly_summary(rows))
    accept = request.headers.get("accept", "")
    if "text/csv" in accept:
        return Response(
            weekly_csv(body),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{week}.csv"'},
        )
    if "text/html" in accept:
        return HTMLResponse(weekly_html(body))
    return body
