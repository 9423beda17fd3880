"""Staff pages of the QA tracker (``/ui``): the physician's review worklist.

Built on ``shared.ui`` (layout, sign-in, CSRF, filters). A review posted here goes through the
same use case as ``POST /v1/fractions/{id}/reviews`` (``QaService.add_review``), so it is
audited, announced and assessed exactly like one documented through the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse

from services.qa_tracker import domain
from services.qa_tracker.overdue import status_at
from services.qa_tracker.service import NewReview, QaService
from services.qa_tracker.store import AuditLog, Fraction, ReviewRow
from services.qa_tracker.store.reads import physician_names, reviews_of, worklist_fractions
from shared.audit import record_request
from shared.auth import CLINICAL_STAFF
from shared.errors import NotFound, RuleViolation
from shared.ui import NavLink, PageRoute, Pages, Session, ui_router

WORKLIST = "/ui/worklist"
LIMIT = 300
AXES = ("x", "y", "z")

pages = Pages(
    Path(__file__).parent / "templates",
    nav=(NavLink("Review worklist", WORKLIST),),
    home=WORKLIST,
)
router = APIRouter(route_class=PageRoute, include_in_schema=False, tags=["pages"])
router.include_router(ui_router(pages))

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


def row_of(
    fraction: Fraction,
    policy: domain.ReviewPolicy,
    now: datetime,
    *,
    review: ReviewRow | None = None,
    **extra: Any,
) -> Row:
    tolerance = domain.tolerance_for(policy, technique=fraction.technique, site=fraction.site)

    def axes(values: list[float] | None, limit: float) -> list[Axis]:
        values = list(values) if values else [None, None, None]  # type: ignore[list-item]
        return [
            Axis(name, v, v is not None and abs(v) > limit)
            for name, v in zip(AXES, values, strict=False)
        ]

    return Row(
        fraction=fraction,
        status=status_at(fraction.review_status, fraction.due_at, now),
        tolerance=tolerance,
        translation=axes(fraction.translation_mm, tolerance.translation_mm),
        rotation=axes(fraction.rotation_deg, tolerance.rotation_deg),
        review=review,
        **extra,
    )


def _service(request: Request) -> QaService:
    return request.app.state.qa_service  # type: ignore[no-any-return]


# ---------------------------------------------------------------- pages


@router.get(WORKLIST, response_class=HTMLResponse)
def worklist(
    request: Request, user: Reader, scope: Literal["mine", "all"] | None = None
) -> Response:
    """The review worklist: a physician's own fractions by default, everyone's for the rest."""
    service = _service(request)
    scope = scope or ("mine" if user.role == "physician" else "all")
    now = service.now()
    with request.app.state.session_factory.begin() as session:
        mine = physician_names(session, user.user) if scope == "mine" else None
        fractions = worklist_fractions(session, mine, limit=LIMIT)
        record_request(
            session,
            AuditLog,
            user.principal,
            request,
            patient_ids=[f.patient_id for f in fractions],
        )
        rows = [row_of(f, service.policy, now) for f in fractions]
        return pages.render(
            request,
            "worklist.html",
            {
                "rows": rows,
                "scope": scope,
                "mine": mine,
                "can_review": user.role == "physician",
                "overdue": sum(r.status == "overdue" for r in rows),
                "limit": LIMIT,
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
    error = None
    with factory() as session:
        fraction = session.get(Fraction, fraction_id)
        if fraction is None:
            raise NotFound(f"no fraction {fraction_id}")
        override_required = fraction.override_required and not fraction.override_documented
    if override_required and not override_reason.strip():
        error = "The shift exceeds tolerance: give an override reason to acknowledge it."
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
                principal=user.principal,
                resource=request.url.path,
            )
        except (RuleViolation, NotFound) as exc:
            error = str(exc)
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
            status_code=422 if error else 200,
        )
