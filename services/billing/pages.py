"""Staff pages of the billing service (``/ui``): the charges with their holds and evidence, the
discrepancy report with the claim-file upload, and a course's charge timeline with its closing
form.

Built on ``shared.ui`` (layout, sign-in, CSRF, filters). Readable and writable by the REST
API's ``BillingStaff`` roles (billing, admin). Every page read of patient data is audited like
the API; the upload and the closing go through the same use cases as ``POST /v1/claims`` and
``POST /v1/courses/{id}/close`` (``Reconciliation.import_claims``, ``BillingService.
close_course``), so they are validated, audited and announced exactly like the API's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session as Db

from services.billing.api import MAX_CLAIM_FILE
from services.billing.assemble import assemble
from services.billing.domain.sessions import Session as TreatmentSession
from services.billing.domain.sessions import count_sessions
from services.billing.reconciliation import ClaimFileRejected, Reconciliation
from services.billing.service import BillingService
from services.billing.settings import BillingSettings
from services.billing.store import AuditLog, ChargeRow, ClaimFileRow, Course, CourseClosure, Fact
from services.billing.store.queries import ChargeFilter, charge_page, facts_of
from shared.audit import record_request
from shared.auth import BILLING_STAFF
from shared.errors import Conflict, NotFound, RuleViolation
from shared.ui import NavLink, Session, page_router, person_name
from shared.ui.forms import form_day

CHARGES = "/ui/charges"
DISCREPANCIES = "/ui/discrepancies"
COURSES = "/ui/courses"
PAGE_SIZE = 50
COURSE_CHARGES = 2000  # a course's timeline shows at most this many charges
SHOWN_DISCREPANCIES = 500

pages, router = page_router(
    Path(__file__).parent / "templates",
    nav=(NavLink("Charges", CHARGES), NavLink("Discrepancies", DISCREPANCIES)),
    home=CHARGES,
)

Staff = Annotated[Session, pages.user(*BILLING_STAFF)]
Clerk = Annotated[Session, pages.user(*BILLING_STAFF, csrf=True)]

# What a hold means and what releases it (docs/billing.md, "What is held, and why").
HOLD_TEXT = {
    "review_pending": ("IGRT review pending", "an approved review on time (QA tracker)"),
    "review_late": ("IGRT reviewed late", "a review on time; a late one is not billable"),
    "review_rejected": ("IGRT review rejected", "an approved review on time (QA tracker)"),
    "review_withdrawn": ("IGRT review withdrawn", "an approved review on time (QA tracker)"),
    "missing_management_note": (
        "No treatment-management note for the block",
        "a signed face-to-face note for that week (documents)",
    ),
    "missing_physics_check": ("No weekly physics check", "a signed physics check (documents)"),
    "missing_replan_justification": (
        "Re-plan not justified",
        "a re-plan justification naming the plan (documents)",
    ),
    "add_on_without_primary": ("Add-on without its primary code", "the planning charge"),
    "exceeds_max_units": ("Units beyond the rule's maximum", "nothing: held to show"),
    "plan_facts_missing": ("The plan was not received", "the plan's DICOM (RT Plan)"),
    "course_kind_unconfirmed": (
        "Possibly SRS/SBRT: course kind not confirmed",
        "staff confirming the kind (POST /v1/courses/{id}/kind)",
    ),
}
KIND_TEXT = {
    "missing_charge": "earned, not claimed",
    "unsupported_charge": "claimed, no evidence (or evidence on hold)",
    "excess_units": "more units claimed than earned",
    "duplicate_charge": "claimed twice",
    "wrong_modifier": "modifier differs from the practice's",
    "bundled_charge": "included in another code",
    "deleted_code": "code not valid on the date of service",
    "unknown_code": "code the rules do not know",
    "denied_line": "denied by the payer (835)",
    "adjusted_line": "adjusted by the payer (835)",
}
CLOSURE_TEXT = {
    "planned_delivered": "planned fractions delivered",
    "summary_record": "treatment summary record",
    "staff": "closed by staff",
    "inactivity": "no treatment for the inactivity period",
}
NOTE_TEXT = {
    "management_note": "Management note",
    "physics_check": "Physics check",
    "replan_justification": "Re-plan justification",
}


def _service(request: Request) -> BillingService:
    return request.app.state.billing_service  # type: ignore[no-any-return]


def _reconciliation(request: Request) -> Reconciliation:
    return request.app.state.reconciliation  # type: ignore[no-any-return]


def _settings(request: Request) -> BillingSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def code_of(cpt: str, modifiers: list[str] | tuple[str, ...]) -> str:
    """``77387`` with ``["26"]`` -> ``77387-26``, as claims write it."""
    return "-".join([cpt, *modifiers])


# ---------------------------------------------------------------- evidence, readably


@dataclass(frozen=True)
class Evidence:
    id: str
    kind: str  # record, review, document, plan, simulation, summary, closure, regrouping, event
    text: str
    at: str = ""  # ISO time or date, for the order shown


def _local(value: str | None, zone: ZoneInfo, fmt: str = "%a %d %b %H:%M") -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value).astimezone(zone).strftime(fmt)


def describe_fact(fact: Fact, zone: ZoneInfo) -> Evidence:
    """A stored fact as a billing clerk reads it: what it is, when, who."""
    p: dict[str, Any] = fact.payload
    revised = f" (revision {fact.revision})" if fact.revision > 1 else ""
    if fact.kind == "plan":
        who = person_name(p.get("reviewer_name"))
        approved = f", {p.get('approval_status', '').lower()}" if p.get("approval_status") else ""
        by = f" by {who}" if who else ""
        text = f"Plan {p.get('label') or p.get('name') or fact.key}{approved}{by}"
        return Evidence(fact.event_id, "plan", text + revised)
    if fact.kind == "record":
        numbers = ", ".join(str(n) for n in p.get("fraction_numbers") or ()) or "?"
        machine = f" on {p['machine']}" if p.get("machine") else ""
        partial = " (partial)" if p.get("partial") else ""
        when = _local(p.get("treated_at"), zone)
        text = f"Treatment record: fraction {numbers}, {when}{machine}{partial}"
        return Evidence(fact.event_id, "record", text + revised, p.get("treated_at") or "")
    if fact.kind == "assessed":
        number = p.get("fraction_number") or "?"
        status = (p.get("review_status") or "removed").replace("_", " ")
        review = p.get("review")
        if review:
            when = _local(review.get("reviewed_at"), zone)
            text = (
                f"IGRT review of fraction {number}: {review['decision']} by "
                f"{person_name(review.get('physician'))}, {when} ({status})"
            )
        else:
            text = f"IGRT review of fraction {number}: {status}"
        return Evidence(fact.event_id, "review", text + revised, p.get("treated_at") or "")
    if fact.kind == "note":
        kind = NOTE_TEXT.get(p.get("kind", ""), str(p.get("kind", "document")))
        voided = ", voided" if p.get("voided") else ""
        when = _local(p.get("signed_at"), zone, "%a %d %b")
        who = person_name(p.get("author"))
        text = f"{kind} {p.get('week', '')}, signed by {who} {when}{voided}"
        return Evidence(fact.event_id, "document", text + revised, p.get("signed_at") or "")
    if fact.kind == "simulation":
        four_d = " with 4D-CT" if p.get("four_d_ct") else ""
        cancelled = ", cancelled" if p.get("cancelled") else ""
        text = f"Simulation ({p.get('complexity', '')}){four_d} on {p.get('service_date', '')}"
        return Evidence(fact.event_id, "simulation", text + cancelled + revised)
    if fact.kind == "summary":
        status = (p.get("current_status") or "").lower().replace("_", " ")
        last = p.get("most_recent_treatment_date") or "?"
        text = f"Treatment summary record: {status}, last treatment {last}"
        return Evidence(fact.event_id, "summary", text + revised)
    if fact.kind == "regrouping":
        text = f"Course regrouped by {p.get('corrected_by', '')}: {p.get('reason') or ''}"
        return Evidence(fact.event_id, "regrouping", text.rstrip(": "))
    return Evidence(fact.event_id, "event", f"{fact.kind} {fact.key}")


def evidence_of(
    session: Db, patients: set[str], ids: set[str], zone: ZoneInfo
) -> dict[str, Evidence]:
    """The facts (and staff closures) behind evidence ids, described."""
    found: dict[str, Evidence] = {}
    events = sorted(i for i in ids if not i.startswith("closure:"))
    if events and patients:
        rows = session.scalars(
            select(Fact).where(Fact.patient_id.in_(sorted(patients)), Fact.event_id.in_(events))
        )
        for fact in rows:
            found[fact.event_id] = describe_fact(fact, zone)
    closures = [int(i.split(":", 1)[1]) for i in ids if i.removeprefix("closure:").isdigit()]
    if closures:
        for c in session.scalars(select(CourseClosure).where(CourseClosure.id.in_(closures))):
            why = f": {c.reason}" if c.reason else ""
            found[f"closure:{c.id}"] = Evidence(
                f"closure:{c.id}", "closure", f"Closed on {c.closed_on} by {c.closed_by}{why}"
            )
    return found


EVIDENCE_ORDER = (
    "plan",
    "simulation",
    "record",
    "review",
    "document",
    "summary",
    "closure",
    "regrouping",
    "event",
)


@dataclass(frozen=True)
class EvidenceList:
    """A charge's evidence, plans first, then records, reviews and documents, each in time
    order."""

    items: list[Evidence]

    def __post_init__(self) -> None:
        self.items.sort(key=lambda e: (EVIDENCE_ORDER.index(e.kind), e.at, e.text))

    @property
    def summary(self) -> str:
        counts = Counter(e.kind for e in self.items)
        words = {
            "record": "treatment record",
            "review": "review",
            "document": "document",
            "plan": "plan",
            "simulation": "simulation",
            "summary": "summary record",
            "closure": "closure",
            "regrouping": "regrouping",
            "event": "event",
        }
        order = sorted(counts, key=EVIDENCE_ORDER.index)
        return ", ".join(f"{counts[k]} {words[k]}{'' if counts[k] == 1 else 's'}" for k in order)


def _evidence_lists(session: Db, rows: list[ChargeRow], zone: ZoneInfo) -> dict[str, EvidenceList]:
    known = evidence_of(
        session, {r.patient_id for r in rows}, {e for r in rows for e in r.evidence}, zone
    )
    return {
        r.id: EvidenceList(
            [known.get(e) or Evidence(e, "event", "event not held") for e in r.evidence]
        )
        for r in rows
    }


def _course_labels(session: Db, course_ids: set[str]) -> dict[str, str]:
    """Each course's plans as staff name them (the plans' labels, latest revision)."""
    if not course_ids:
        return {}
    courses = session.execute(
        select(Course.id, Course.patient_id, Course.plan_uids).where(Course.id.in_(course_ids))
    ).all()
    uids = {u for _, _, plans in courses for u in plans}
    patients = {p for _, p, _ in courses}
    labels: dict[str, tuple[int, str]] = {}
    if uids:
        plans = session.execute(
            select(Fact.key, Fact.revision, Fact.payload).where(
                Fact.kind == "plan", Fact.patient_id.in_(patients), Fact.key.in_(uids)
            )
        )
        for key, revision, payload in plans:
            if key not in labels or revision > labels[key][0]:
                labels[key] = (revision, payload.get("label") or payload.get("name") or "")
    return {
        cid: " + ".join(labels[u][1] for u in plans if u in labels and labels[u][1]) or "course"
        for cid, _, plans in courses
    }


# ---------------------------------------------------------------- charges


@router.get(CHARGES, response_class=HTMLResponse)
def charges(
    request: Request,
    user: Staff,
    patient: str | None = None,
    status: str | None = None,
    course: str | None = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    cursor: str | None = None,
) -> Response:
    """Charges newest date of service first, with their status (a hold with its reason and
    what releases it) and evidence; the holds counted by reason above. Filters: patient ID
    (exact), status, course, dates of service (clinic dates, both included)."""
    zone = _service(request).zone
    errors: list[str] = []
    first, last = form_day(start, "from", errors), form_day(end, "to", errors)
    patient, course = (patient or "").strip(), (course or "").strip()
    status = (status or "").strip()
    if status not in ("", "hold", "ready"):
        errors.append(f"status {status!r} is not one of hold, ready")
        status = ""
    where = ChargeFilter(
        patient_id=patient or None,
        course_id=course or None,
        status=status or None,
        first_day=first,
        end_day=last + timedelta(days=1) if last else None,
    )
    rows: list[ChargeRow] = []
    next_cursor = None
    with request.app.state.session_factory.begin() as session:
        if not errors:
            try:
                rows, next_cursor = charge_page(session, where, cursor=cursor, limit=PAGE_SIZE)
            except RuleViolation as exc:
                errors.append(str(exc))
        counts = _status_counts(session, where) if not errors else []
        record_request(
            session, AuditLog, user.principal, request, patient_ids=[r.patient_id for r in rows]
        )
        evidence = _evidence_lists(session, rows, zone)
        labels = _course_labels(
            session, {r.course_id for r in rows} | ({course} if course else set())
        )
    shown = {"patient": patient, "status": status, "course": course}
    shown |= {"from": start or "", "to": end or ""}
    link = {k: v for k, v in shown.items() if v}
    holds = [(reason or "", n) for state, reason, n in counts if state == "hold"]
    return pages.render(
        request,
        "charges.html",
        {
            "rows": rows,
            "evidence": evidence,
            "labels": labels,
            "errors": errors,
            "filters": shown,
            "holds": holds,
            "held": sum(n for _, n in holds),
            "ready": sum(n for state, _, n in counts if state == "ready"),
            "hold_text": HOLD_TEXT,
            "code_of": code_of,
            "first_page": "?" + urlencode(link) if cursor else None,
            "next_page": "?" + urlencode(link | {"cursor": next_cursor}) if next_cursor else None,
            "filter_link": lambda **change: (
                "?" + urlencode({k: v for k, v in (link | change).items() if v})
            ),
        },
        session=user,
    )


def _status_counts(session: Db, where: ChargeFilter) -> list[tuple[str, str | None, int]]:
    """The charges the filter matches (status aside), by status and hold reason."""
    query = select(ChargeRow.status, ChargeRow.hold_reason, func.count()).where(
        ChargeRow.removed.is_(False)
    )
    if where.patient_id:
        query = query.where(ChargeRow.patient_id == where.patient_id)
    if where.course_id:
        query = query.where(ChargeRow.course_id == where.course_id)
    if where.first_day:
        query = query.where(ChargeRow.service_date >= where.first_day)
    if where.end_day:
        query = query.where(ChargeRow.service_date < where.end_day)
    query = query.group_by(ChargeRow.status, ChargeRow.hold_reason).order_by(
        func.count().desc(), ChargeRow.hold_reason
    )
    return [(s, r, n) for s, r, n in session.execute(query)]


# ---------------------------------------------------------------- discrepancies


@dataclass
class Upload:
    """What the last upload did: imported, refused (errors by line) or a duplicate."""

    status: int = 200
    message: str = ""
    errors: list[Any] = field(default_factory=list)
    format: str | None = None
    filename: str | None = None


def _discrepancy_page(
    request: Request,
    user: Session,
    *,
    patient: str | None = None,
    kind: str | None = None,
    start: str | None = None,
    end: str | None = None,
    upload: Upload | None = None,
    imported: int | None = None,
) -> Response:
    errors: list[str] = []
    first, last = form_day(start, "from", errors), form_day(end, "to", errors)
    patient, kind = (patient or "").strip(), (kind or "").strip()
    items: list[Any] = []
    with request.app.state.session_factory.begin() as session:
        if not errors:
            found, remittances = _reconciliation(request).discrepancies(
                session,
                patient_id=patient or None,
                first=first,
                end=last + timedelta(days=1) if last else None,
            )
            items = [*found, *remittances]
        by_kind = Counter(d.kind for d in items)
        if kind:
            items = [d for d in items if d.kind == kind]
        items.sort(key=lambda d: (d.service_date, d.patient_id, d.cpt, d.kind), reverse=True)
        shown_items = items[:SHOWN_DISCREPANCIES]
        record_request(
            session,
            AuditLog,
            user.principal,
            request,
            patient_ids=[d.patient_id for d in shown_items],
        )
        files = list(
            session.scalars(select(ClaimFileRow).order_by(ClaimFileRow.id.desc()).limit(5))
        )
        just_imported = session.get(ClaimFileRow, imported) if imported else None
    shown = {"patient": patient, "kind": kind, "from": start or "", "to": end or ""}
    return pages.render(
        request,
        "discrepancies.html",
        {
            "items": shown_items,
            "total": len(items),
            "by_kind": sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0])),
            "kinds": KIND_TEXT,
            "errors": errors,
            "filters": shown,
            "files": files,
            "upload": upload,
            "imported": just_imported,
            "code_of": code_of,
            "course_of": lambda charge_id: charge_id.split("|", 1)[0] if charge_id else None,
            "max_mib": MAX_CLAIM_FILE // (1024 * 1024),
        },
        session=user,
        status_code=upload.status if upload else 200,
    )


@router.get(DISCREPANCIES, response_class=HTMLResponse)
def discrepancies(
    request: Request,
    user: Staff,
    patient: str | None = None,
    kind: str | None = None,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    imported: int | None = None,
) -> Response:
    """The stored charges against the imported claim lines (``GET /v1/discrepancies``):
    kind, patient, CPT, date of service, rule and citation; with both dates the range is the
    window for missing charges. The claim upload above."""
    return _discrepancy_page(
        request, user, patient=patient, kind=kind, start=start, end=end, imported=imported
    )


@router.post(DISCREPANCIES + "/claims", response_class=HTMLResponse)
async def upload_claims(
    request: Request,
    user: Clerk,
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """A claim file (CSV, HL7 DFT^P03, X12 837P/837I or 835) through the use case of ``POST
    /v1/claims``: all of it or nothing; every error by line; the same file twice refused."""
    if file is None or not file.filename:
        upload = Upload(422, "Choose a claim file to upload.")
        return await run_in_threadpool(_discrepancy_page, request, user, upload=upload)
    content = await file.read(MAX_CLAIM_FILE + 1)
    name = file.filename
    if len(content) > MAX_CLAIM_FILE:
        upload = Upload(413, f"{name} is larger than {MAX_CLAIM_FILE // 2**20} MiB; split it.")
        return await run_in_threadpool(_discrepancy_page, request, user, upload=upload)
    try:
        imported = await run_in_threadpool(
            _reconciliation(request).import_claims,
            content,
            content_type=file.content_type or None,
            filename=name,
            principal=user.principal,
            resource=request.url.path,
        )
    except ClaimFileRejected as exc:
        upload = Upload(
            422,
            f"{name} was rejected: {len(exc.errors)} error(s). Nothing of it was stored; "
            "correct the lines below and upload it again.",
            errors=list(exc.errors),
            format=exc.format,
            filename=name,
        )
        return await run_in_threadpool(_discrepancy_page, request, user, upload=upload)
    except Conflict as exc:
        upload = Upload(409, f"{name} is a duplicate: {exc}. Nothing was stored again.")
        return await run_in_threadpool(_discrepancy_page, request, user, upload=upload)
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}{DISCREPANCIES}?imported={imported.id}", status_code=303)


# ---------------------------------------------------------------- a course's timeline


@dataclass(frozen=True)
class Step:
    """One line of a course's timeline: a session delivered, a charge or a closure point."""

    day: date
    order: int  # sessions first, then charges, then closures on a day
    kind: str
    session: TreatmentSession | None = None
    number: int | None = None
    charge: ChargeRow | None = None
    closure: dict[str, Any] | None = None


def _sessions(request: Request, session: Db, course: Course) -> list[TreatmentSession]:
    """The course's treatment sessions as the engine counts them (from the stored facts)."""
    settings = _settings(request)
    zone = _service(request).zone
    assembled = assemble(
        course.patient_id,
        facts_of(session, patient_id=course.patient_id),
        {},
        zone=zone,
        gap_days=settings.billing_course_gap_days,
    )
    facts = next((c for c in assembled.courses if c.course_id == course.id), None)
    if facts is None:
        return []
    return list(count_sessions(facts.records, settings.engine_settings()))


def _course_context(request: Request, user: Session, course_id: str) -> dict[str, Any] | None:
    service = _service(request)
    zone = service.zone
    with request.app.state.session_factory.begin() as session:
        course = session.get(Course, course_id)
        if course is None:
            return None
        record_request(session, AuditLog, user.principal, request, patient_ids=[course.patient_id])
        rows, more = charge_page(
            session, ChargeFilter(course_id=course_id), cursor=None, limit=COURSE_CHARGES
        )
        treated = _sessions(request, session, course)
        evidence = _evidence_lists(session, rows, zone)
        closure_ids = {e for c in course.closures for e in c["evidence"]}
        closure_evidence = evidence_of(session, {course.patient_id}, closure_ids, zone)
        labels = _course_labels(session, {course_id})
        plans = _plan_labels(session, course)
    steps = [Step(s.day, 0, "session", session=s, number=i) for i, s in enumerate(treated, start=1)]
    steps += [Step(r.service_date, 1, "charge", charge=r) for r in rows]
    steps += [Step(date.fromisoformat(c["on"]), 2, "closure", closure=c) for c in course.closures]
    steps.sort(key=lambda s: (s.day, s.order, s.number or 0, s.charge.cpt if s.charge else ""))
    held = [r for r in rows if r.status == "hold"]
    return {
        "course": course,
        "label": labels.get(course_id, "course"),
        "plans": plans,
        "steps": steps,
        "evidence": evidence,
        "closure_evidence": closure_evidence,
        "charges": len(rows),
        "held": len(held),
        "more": more is not None,
        "today": service.today(),
        "hold_text": HOLD_TEXT,
        "closure_text": CLOSURE_TEXT,
        "code_of": code_of,
        "fraction_numbers": _fraction_numbers,
        "plan_names": {uid: label for uid, label in plans},
    }


def _plan_labels(session: Db, course: Course) -> list[tuple[str, str]]:
    latest: dict[str, tuple[int, str]] = {}
    if course.plan_uids:
        for key, revision, payload in session.execute(
            select(Fact.key, Fact.revision, Fact.payload).where(
                Fact.kind == "plan",
                Fact.patient_id == course.patient_id,
                Fact.key.in_(course.plan_uids),
            )
        ):
            if key not in latest or revision > latest[key][0]:
                latest[key] = (revision, payload.get("label") or payload.get("name") or "")
    return [(uid, latest[uid][1] if uid in latest else "") for uid in course.plan_uids]


def _fraction_numbers(s: TreatmentSession, plans: dict[str, str]) -> str:
    """ "fraction 3 (PROST)", "fractions 3 (PROST), 3 (BOOST)"."""
    parts = []
    for f in s.fractions:
        number = f.key[2] if f.key[2] is not None else "?"
        label = plans.get(f.plan_uid or "", "") if f.plan_uid else ""
        parts.append(f"{number} ({label})" if label else str(number))
    return ("fraction " if len(parts) == 1 else "fractions ") + ", ".join(parts)


def _course_page(
    request: Request,
    user: Session,
    course_id: str,
    *,
    error: str | None = None,
    closed: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    context = _course_context(request, user, course_id)
    if context is None:
        return pages.render(
            request,
            "error.html",
            {"title": "Not found", "message": f"There is no course {course_id!r}."},
            session=user,
            status_code=404,
        )
    context |= {"error": error, "closed": closed, "form": form or {}}
    return pages.render(
        request, "course.html", context, session=user, status_code=422 if error else 200
    )


@router.get(COURSES + "/{course_id}", response_class=HTMLResponse)
def course_timeline(
    request: Request, course_id: str, user: Staff, closed: str | None = None
) -> Response:
    """A course's charge timeline: sessions delivered, charges in date order with their
    status, closure points; and the form that closes the course."""
    return _course_page(request, user, course_id, closed=closed)


@router.post(COURSES + "/{course_id}/close", response_class=HTMLResponse)
def close_course(
    request: Request,
    course_id: str,
    user: Clerk,
    closed_on: Annotated[str, Form(max_length=20)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Close the course (``BillingService.close_course``, as ``POST /v1/courses/{id}/close``);
    back to its timeline, which shows the closure point and what it earned."""
    errors: list[str] = []
    day = form_day(closed_on, "closed on", errors)
    form = {"closed_on": closed_on, "reason": reason}
    if errors:
        return _course_page(request, user, course_id, error=errors[0], form=form)
    try:
        course = _service(request).close_course(
            course_id,
            closed_on=day,
            reason=reason.strip() or None,
            principal=user.principal,
            resource=request.url.path,
        )
    except (RuleViolation, NotFound) as exc:
        return _course_page(request, user, course_id, error=str(exc), form=form)
    root = request.scope.get("root_path", "")
    on = day or _service(request).today()
    target = f"{root}{COURSES}/{quote(course.id, safe='')}?closed={on.isoformat()}"
    return RedirectResponse(target, status_code=303)
