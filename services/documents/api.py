"""REST API of the documents service (``/v1``): plan versions with their checklists, courses
with their weekly documents, regrouping, document upload and download, signed notes, letters.
Every read and write of patient data is audited."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from services.documents.domain import PLAN_ITEMS, WEEKLY_KINDS
from services.documents.service import DocumentsService, NoteIn, Upload, is_pdf
from services.documents.store import DocumentRow, LetterRow
from shared.auth import ClinicalReader, PhysicianOnly, Principal, require_roles
from shared.errors import RtopsError, RuleViolation
from shared.params import UID_MAX_CHARS, WEEK_PATTERN
from shared.web import problem_responses

router = APIRouter(prefix="/v1", tags=["documents"])

# Documents, notes and letters are keyed by a UUID (String(36) columns).
RowUuid = Annotated[str, Path(min_length=1, max_length=36, description="a UUID")]
WEEK_MAX_CHARS = 8  # 2026-W48
# A course's plans: an initial plan, its boosts and its adaptive versions; far more is no course.
MAX_PLANS_PER_COURSE = 100

# Who files documents and corrects groupings: the clinical staff who produce them.
DocumentStaff = Annotated[
    Principal, require_roles("physician", "physicist", "dosimetrist", "admin")
]
NoteSigners = Annotated[Principal, require_roles("physician", "physicist", "admin")]
DOC_TYPES = (*PLAN_ITEMS, *WEEKLY_KINDS, "other")


class PayloadTooLarge(RtopsError):
    status = 413
    title = "Payload Too Large"


class UnsupportedMediaType(RtopsError):
    status = 415
    title = "Unsupported Media Type"


def _service(request: Request) -> DocumentsService:
    return request.app.state.documents_service  # type: ignore[no-any-return]


ServiceDep = Annotated[DocumentsService, Depends(_service)]


def _resource(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return request.url.path + query


class DocumentOut(BaseModel):
    id: str
    doc_type: str
    revision: int
    source: Literal["upload", "dicom"]
    signed_by: str | None
    signed_at: datetime | None
    filed_at: datetime
    sha256: str
    size: int


class RevisionOut(BaseModel):
    revision: int
    received_at: datetime
    approval_status: str | None
    reviewer: str | None
    reviewed_at: datetime | None
    changes: list[str] = Field(description="what this revision changed against the previous")


class PlanVersionOut(BaseModel):
    plan_uid: str
    patient_id: str
    course_id: str
    label: str | None
    version: int = Field(description="1 for the course's first plan; CONCURRENT plans share it")
    predecessor_uid: str | None
    predecessor_inferred: bool = Field(
        description="no PREDECESSOR reference: the course's previous version by date"
    )
    concurrent_uids: list[str]
    superseded_by: str | None
    approval_status: str | None
    approved_by: str | None
    approved_at: datetime | None
    intent: str | None
    site: str | None
    technique: str | None
    fractions: int | None
    prescription_gy: float | None
    machines: list[str]
    beams: list[str]
    changes: list[str] = Field(description="what changed against the predecessor")
    revisions: list[RevisionOut] = Field(description="approval status history, re-sends")
    treated: bool = Field(description="a fraction was delivered on this plan")
    fractions_delivered: int = Field(description="treatment records delivered on it")
    flags: list[str] = Field(description="unapproved, superseded, documents_incomplete")
    documents_required: list[str]
    documents_complete: bool
    missing_documents: list[str]
    documents: list[DocumentOut]


class WeekOut(BaseModel):
    week: str
    fractions: int
    present: list[str]
    missing: list[str]


class CourseOut(BaseModel):
    course_id: str
    patient_id: str
    plan_uids: list[str]
    weeks: list[WeekOut] = Field(description="per treatment week: management note, physics check")


class RegroupIn(BaseModel):
    plan_uids: list[Annotated[str, Field(min_length=1, max_length=UID_MAX_CHARS)]] = Field(
        min_length=1, max_length=MAX_PLANS_PER_COURSE, description="exactly the plans of one course"
    )
    reason: str | None = Field(default=None, max_length=2000)


class RegroupOut(BaseModel):
    regrouping_id: str
    sequence: int
    plan_uids: list[str]
    course_id: str | None


class NoteBody(BaseModel):
    patient_id: str = Field(min_length=1, max_length=64)
    course_id: str = Field(min_length=1, max_length=80)
    # years bounded as every query's (shared.params): 9999-W52 ends past the calendar
    week: str = Field(
        pattern=r"^(19|2\d)\d{2}-W(0[1-9]|[1-4]\d|5[0-3])$",
        max_length=WEEK_MAX_CHARS,
        description="ISO week",
    )
    kind: Literal["management_note", "physics_check"]
    author: str = Field(min_length=1, max_length=200)
    signed_at: datetime
    text: str | None = Field(default=None, max_length=20000)
    visit_date: date | None = None
    face_to_face: bool = True


class NoteOut(BaseModel):
    id: str
    revision: int
    voided: bool
    patient_id: str
    course_id: str
    week: str
    kind: str
    author: str
    signed_at: datetime


class LetterOut(BaseModel):
    id: str
    patient_id: str
    course_id: str
    status: Literal["draft", "approved", "sent"]
    drafted_at: datetime
    facts: dict[str, Any] = Field(description="what the letter says")
    approved_by: str | None
    approved_at: datetime | None
    transport: str | None
    attempts: int
    last_error: str | None = Field(description="why the last transmission failed")
    next_attempt_at: datetime | None
    sent_at: datetime | None
    sent_reference: str | None


def _letter(row: LetterRow) -> LetterOut:
    return LetterOut.model_validate(row, from_attributes=True)


def _document(row: DocumentRow) -> DocumentOut:
    return DocumentOut.model_validate(row, from_attributes=True)


# ---------------------------------------------------------------- plans and courses


@router.get("/plans", response_model=list[PlanVersionOut])
async def list_plans(
    request: Request,
    service: ServiceDep,
    principal: ClinicalReader,
    patient_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> list[dict[str, Any]]:
    """The patient's plan versions by course, each with its checklist and what changed."""
    return await run_in_threadpool(
        service.plan_history, patient_id, principal=principal, resource=_resource(request)
    )


@router.get("/courses", response_model=list[CourseOut])
async def list_courses(
    request: Request,
    service: ServiceDep,
    principal: ClinicalReader,
    patient_id: Annotated[str, Query(min_length=1, max_length=64)],
) -> list[dict[str, Any]]:
    return await run_in_threadpool(
        service.courses, patient_id, principal=principal, resource=_resource(request)
    )


@router.post("/courses/regroup", response_model=RegroupOut, status_code=201)
async def regroup(
    body: RegroupIn, request: Request, service: ServiceDep, principal: DocumentStaff
) -> RegroupOut:
    """Correct the grouping: exactly these plans form one course (published as
    ``rtops.documents.course.regrouped``)."""
    row = await run_in_threadpool(
        service.regroup,
        body.plan_uids,
        reason=body.reason,
        principal=principal,
        resource=_resource(request),
    )
    return RegroupOut(
        regrouping_id=row.id,
        sequence=row.sequence,
        plan_uids=row.plan_uids,
        course_id=row.course_id,
    )


# ---------------------------------------------------------------- documents


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    content = await file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(
            f"the file is larger than {limit} bytes (RTOPS_DOCUMENTS_MAX_UPLOAD_MB)"
        )
    return content


@router.post(
    "/documents",
    response_model=DocumentOut,
    status_code=201,
    responses=problem_responses(413, 415),
)
async def upload_document(
    request: Request,
    service: ServiceDep,
    principal: DocumentStaff,
    plan_uid: Annotated[str, Form(min_length=1, max_length=64)],
    doc_type: Annotated[str, Form(max_length=40, description=", ".join(DOC_TYPES))],
    file: Annotated[UploadFile, File(description="the document, PDF")],
    author: Annotated[str | None, Form(max_length=200)] = None,
    signed_by: Annotated[str | None, Form(max_length=200)] = None,
    signed_at: Annotated[datetime | None, Form()] = None,
    week: Annotated[
        str | None,
        Form(
            pattern=WEEK_PATTERN,
            max_length=WEEK_MAX_CHARS,
            description="weekly notes: the ISO week documented",
        ),
    ] = None,
) -> DocumentOut:
    """File a PDF for a plan version. The type is checked by content (a PDF named .txt is
    filed, a text file named .pdf is 415); larger than the limit is 413; an existing (plan,
    type) gets the next revision, nothing is ever replaced."""
    limit = request.app.state.max_upload_bytes
    content = await _read_limited(file, limit)
    if not is_pdf(content):
        raise UnsupportedMediaType(
            f"{file.filename or 'the file'} is not a PDF (its content does not start with "
            "%PDF-); only PDF documents are filed"
        )
    if signed_at is not None and signed_at.tzinfo is None:
        raise RuleViolation("signed_at needs a time zone offset, e.g. 2026-03-02T10:00:00-05:00")
    row = await run_in_threadpool(
        service.upload,
        Upload(
            plan_uid=plan_uid,
            doc_type=doc_type,
            author=author,
            signed_by=signed_by,
            signed_at=signed_at,
            filename=file.filename,
            content=content,
            week=week,
        ),
        principal=principal,
        resource=_resource(request),
    )
    return _document(row)


@router.get("/documents/{document_id}/content")
async def document_content(
    document_id: RowUuid, request: Request, service: ServiceDep, principal: ClinicalReader
) -> Response:
    row, content = await run_in_threadpool(
        service.document, document_id, principal=principal, resource=_resource(request)
    )
    return Response(
        content,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="{row.doc_type}-r{row.revision}.pdf"',
            "Digest": f"sha-256={row.sha256}",
        },
    )


# ---------------------------------------------------------------- notes


@router.post("/notes", response_model=NoteOut, status_code=201)
async def add_note(
    body: NoteBody, request: Request, service: ServiceDep, principal: NoteSigners
) -> NoteOut:
    """A signed weekly entry: the physician's management note or the physicist's chart check
    (published as ``rtops.documents.note.signed``; billing holds 77427 / 77336 without)."""
    row = await run_in_threadpool(
        service.add_note,
        NoteIn(**body.model_dump()),
        principal=principal,
        resource=_resource(request),
    )
    return NoteOut.model_validate(row, from_attributes=True)


@router.post("/notes/{note_id}/void", response_model=NoteOut)
async def void_note(
    note_id: RowUuid, request: Request, service: ServiceDep, principal: NoteSigners
) -> NoteOut:
    """A note signed in error is voided: its next revision, published with ``voided``."""
    row = await run_in_threadpool(
        service.void_note, note_id, principal=principal, resource=_resource(request)
    )
    return NoteOut.model_validate(row, from_attributes=True)


# ---------------------------------------------------------------- letters


@router.get("/letters", response_model=list[LetterOut])
async def list_letters(
    request: Request,
    service: ServiceDep,
    principal: ClinicalReader,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    status: Literal["draft", "approved", "sent"] | None = None,
) -> list[LetterOut]:
    rows = await run_in_threadpool(
        service.letters, patient_id, status, principal=principal, resource=_resource(request)
    )
    return [_letter(r) for r in rows]


@router.get("/letters/{letter_id}/pdf")
async def letter_pdf(
    letter_id: RowUuid, request: Request, service: ServiceDep, principal: ClinicalReader
) -> Response:
    _, content = await run_in_threadpool(
        service.letter_pdf, letter_id, principal=principal, resource=_resource(request)
    )
    return Response(
        content,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="letter-{letter_id}.pdf"'},
    )


@router.post("/letters/{letter_id}/approve", response_model=LetterOut)
async def approve_letter(
    letter_id: RowUuid, request: Request, service: ServiceDep, principal: PhysicianOnly
) -> LetterOut:
    """draft -> approved; the letter is sent at once, and retried until it is."""
    await run_in_threadpool(
        service.approve_letter, letter_id, principal=principal, resource=_resource(request)
    )
    await run_in_threadpool(service.send_letter, letter_id)
    row = await run_in_threadpool(
        service.letter, letter_id, principal=principal, resource=_resource(request)
    )
    return _letter(row)
