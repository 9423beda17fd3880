"""Staff pages of the documents service (``/ui``): a patient's plan version history with what
changed and each version's document checklist with its upload form; the letters to approve with
the PDF beside them.

Built on ``shared.ui`` (layout, sign-in, CSRF, filters). Reads as the REST API's readers
(clinical staff); uploads as its document staff; approving a letter as a physician. Every page
read of patient data is audited, and writes go through the same use cases as the API
(``DocumentsService.upload``, ``approve_letter``), so they are validated, audited and announced
exactly like it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse

from services.documents.domain import PLAN_ITEMS, WEEKLY_KINDS
from services.documents.service import DocumentsService, NoteIn, Upload, is_pdf
from shared.auth import CLINICAL_STAFF
from shared.errors import Conflict, Forbidden, NotFound, RuleViolation
from shared.ui import NavLink, Session, page_router

PLANS = "/ui/plans"
LETTERS = "/ui/letters"
DOCUMENT_STAFF = ("physician", "physicist", "dosimetrist", "admin")

pages, router = page_router(
    Path(__file__).parent / "templates",
    nav=(NavLink("Plan versions", PLANS), NavLink("Letters", LETTERS)),
    home=PLANS,
)

Reader = Annotated[Session, pages.user(*CLINICAL_STAFF)]
Filer = Annotated[Session, pages.user(*DOCUMENT_STAFF, csrf=True)]
Approver = Annotated[Session, pages.user("physician", csrf=True)]
Signer = Annotated[Session, pages.user("physician", "physicist", "admin", csrf=True)]

ITEM_TEXT = {
    "written_directive": "Written directive (prescription)",
    "dosimetry_plan_report": "Dosimetry plan report",
    "physics_plan_qa": "Physics plan QA report",
    "patient_qa_measurement": "Patient-specific QA measurement",
    "plan_approval": "Plan approval",
    "management_note": "Treatment-management note",
    "physics_check": "Weekly physics chart check",
    "other": "Other",
}
NOTE_SIGNERS = {"management_note": "physician", "physics_check": "physicist"}
FLAG_TEXT = {
    "unapproved": "treated while not approved",
    "superseded": "treated after a later version existed",
    "documents_incomplete": "treated with documents missing",
}


def _service(request: Request) -> DocumentsService:
    return request.app.state.documents_service  # type: ignore[no-any-return]


def _resource(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return request.url.path + query


def _pdf(content: bytes, name: str) -> Response:
    return Response(
        content,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )


# ---------------------------------------------------------------- plan versions


def _plans_page(
    request: Request,
    user: Session,
    patient: str,
    *,
    error: str | None = None,
    error_plan: str | None = None,
    filed: str | None = None,
    signed: str | None = None,
    status_code: int = 200,
) -> Response:
    service = _service(request)
    versions: list[dict[str, Any]] = []
    weeks: dict[str, list[dict[str, Any]]] = {}
    if patient:
        versions = service.plan_history(
            patient, principal=user.principal, resource=_resource(request)
        )
        weeks = {
            c["course_id"]: c["weeks"]
            for c in service.courses(patient, principal=user.principal, resource=_resource(request))
        }
    courses: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for version in versions:
        courses[version["course_id"]].append(version)
    if error_plan not in {v["plan_uid"] for v in versions}:
        error_plan = None  # not on this page: the error shows above
    return pages.render(
        request,
        "plans.html",
        {
            "patient": patient,
            "courses": dict(courses),
            "weeks": weeks,
            "items": ITEM_TEXT,
            "flag_text": FLAG_TEXT,
            "upload_types": (*PLAN_ITEMS[:4], "plan_approval", *WEEKLY_KINDS, "other"),
            "can_file": user.has(*DOCUMENT_STAFF),
            "can_sign": [k for k, role in NOTE_SIGNERS.items() if user.has(role, "admin")],
            "signed": signed,
            "error": error,
            "error_plan": error_plan,
            "filed": filed,
        },
        session=user,
        status_code=status_code,
    )


@router.get(PLANS, response_class=HTMLResponse)
def plans(
    request: Request,
    user: Reader,
    patient: Annotated[str, Query(max_length=64)] = "",
    filed: Annotated[str | None, Query(max_length=64)] = None,
    signed: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """A patient's plan versions by course: what changed against the predecessor, approval
    history, treated or not, flags, and the document checklist with the upload form."""
    return _plans_page(request, user, patient.strip(), filed=filed, signed=signed)


@router.post(PLANS + "/{plan_uid}/documents", response_class=HTMLResponse)
async def upload_document(
    request: Request,
    plan_uid: str,
    user: Filer,
    patient: Annotated[str, Form(max_length=64)] = "",
    doc_type: Annotated[str, Form(max_length=40)] = "",
    signed_by: Annotated[str, Form(max_length=200)] = "",
    signed_at: Annotated[str, Form(max_length=40)] = "",
    week: Annotated[str, Form(max_length=8)] = "",
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """File a PDF for the version (``DocumentsService.upload``, as ``POST /v1/documents``)."""

    async def again(message: str, status: int) -> Response:
        return await run_in_threadpool(
            _plans_page,
            request,
            user,
            patient,
            error=message,
            error_plan=plan_uid,
            status_code=status,
        )

    if file is None or not file.filename:
        return await again("Choose a PDF to file.", 422)
    limit = request.app.state.max_upload_bytes
    content = await file.read(limit + 1)
    if len(content) > limit:
        return await again(f"{file.filename} is larger than {limit // 2**20} MiB.", 413)
    if not is_pdf(content):
        return await again(f"{file.filename} is not a PDF; only PDF documents are filed.", 415)
    when: datetime | None = None
    if signed_at.strip():
        try:
            # A datetime-local field: clinic time.
            when = datetime.fromisoformat(signed_at.strip()).replace(tzinfo=_service(request).zone)
        except ValueError:
            return await again(f"signed at {signed_at!r} is not a date and time.", 422)
    try:
        row = await run_in_threadpool(
            _service(request).upload,
            Upload(
                plan_uid=plan_uid,
                doc_type=doc_type,
                author=user.principal.user,
                signed_by=signed_by.strip() or None,
                signed_at=when,
                filename=file.filename,
                content=content,
                week=week.strip() or None,
            ),
            principal=user.principal,
            resource=request.url.path,
        )
    except (RuleViolation, NotFound) as exc:
        return await again(str(exc), 422)
    root = request.scope.get("root_path", "")
    query = urlencode({"patient": row.patient_id, "filed": row.id})
    return RedirectResponse(f"{root}{PLANS}?{query}#plan-{plan_uid}", status_code=303)


@router.post("/ui/courses/{course_id}/notes", response_class=HTMLResponse)
def sign_note(
    request: Request,
    course_id: str,
    user: Signer,
    patient: Annotated[str, Form(max_length=64)] = "",
    week: Annotated[str, Form(max_length=8)] = "",
    kind: Annotated[str, Form(max_length=40)] = "",
    text: Annotated[str, Form(max_length=20000)] = "",
) -> Response:
    """A signed weekly entry (``DocumentsService.add_note``, as ``POST /v1/notes``): the
    signer is the signed-in user, now."""
    service = _service(request)
    if not re.fullmatch(r"\d{4}-W(0[1-9]|[1-4]\d|5[0-3])", week):
        return _plans_page(
            request,
            user,
            patient,
            error=f"week {week!r} is not an ISO week (2026-W10).",
            status_code=422,
        )
    names = user.names
    try:
        service.add_note(
            NoteIn(
                patient_id=patient,
                course_id=course_id,
                week=week,
                kind=kind,
                author=names[0] if names else user.principal.user,
                signed_at=service.now(),
                text=text.strip() or None,
            ),
            principal=user.principal,
            resource=request.url.path,
        )
    except (RuleViolation, Forbidden) as exc:
        return _plans_page(
            request,
            user,
            patient,
            error=str(exc),
            status_code=403 if isinstance(exc, Forbidden) else 422,
        )
    root = request.scope.get("root_path", "")
    query = urlencode({"patient": patient, "signed": f"{kind}:{week}"})
    return RedirectResponse(f"{root}{PLANS}?{query}", status_code=303)


@router.get("/ui/documents/{document_id}", response_class=Response)
def document(request: Request, document_id: str, user: Reader) -> Response:
    try:
        row, content = _service(request).document(
            document_id, principal=user.principal, resource=request.url.path
        )
    except NotFound as exc:
        return pages.render(
            request,
            "error.html",
            {"title": "Not found", "message": str(exc)},
            session=user,
            status_code=404,
        )
    return _pdf(content, f"{row.doc_type}-r{row.revision}.pdf")


# ---------------------------------------------------------------- letters


def _letters_page(
    request: Request,
    user: Session,
    status: str,
    selected: str | None,
    *,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    service = _service(request)
    rows = service.letters(
        None, status or None, principal=user.principal, resource=_resource(request)
    )
    current = next((r for r in rows if r.id == selected), rows[0] if rows else None)
    return pages.render(
        request,
        "letters.html",
        {
            "letters": rows,
            "current": current,
            "status": status,
            "can_approve": user.has("physician"),
            "error": error,
        },
        session=user,
        status_code=status_code,
    )


@router.get(LETTERS, response_class=HTMLResponse)
def letters(
    request: Request,
    user: Reader,
    status: Annotated[str, Query(pattern="^(draft|approved|sent|)$")] = "draft",
    letter: Annotated[str | None, Query(max_length=36)] = None,
) -> Response:
    """Letters to the referring providers (drafts first: the physician's queue), the chosen
    one's PDF beside the list, its transmission state and the approve button."""
    return _letters_page(request, user, status, letter)


@router.get(LETTERS + "/{letter_id}/pdf", response_class=Response)
def letter_pdf(request: Request, letter_id: str, user: Reader) -> Response:
    try:
        _, content = _service(request).letter_pdf(
            letter_id, principal=user.principal, resource=request.url.path
        )
    except NotFound as exc:
        return pages.render(
            request,
            "error.html",
            {"title": "Not found", "message": str(exc)},
            session=user,
            status_code=404,
        )
    return _pdf(content, f"letter-{letter_id}.pdf")


@router.post(LETTERS + "/{letter_id}/approve", response_class=HTMLResponse)
def approve(request: Request, letter_id: str, user: Approver) -> Response:
    """Approve (``DocumentsService.approve_letter``) and send at once; a failed transmission
    shows on the letter and is retried."""
    service = _service(request)
    try:
        service.approve_letter(letter_id, principal=user.principal, resource=request.url.path)
    except (NotFound, Conflict) as exc:
        return _letters_page(
            request,
            user,
            "draft",
            letter_id,
            error=str(exc),
            status_code=404 if isinstance(exc, NotFound) else 409,
        )
    service.send_letter(letter_id)
    root = request.scope.get("root_path", "")
    query = urlencode({"status": "", "letter": letter_id})
    return RedirectResponse(f"{root}{LETTERS}?{query}", status_code=303)
