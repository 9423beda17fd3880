"""Use cases of the documents service, one transaction each.

Events in (plans, treatment records, Encapsulated PDFs) are stored as facts; then each patient
whose facts changed is derived again from everything stored, in the same transaction: courses
(``shared.courses``), version history (``domain.version_history``), flags for delivered
fractions not judged yet, and the referring-provider letter of a course whose first fraction
was delivered. What changed is queued in the outbox. A redelivered event is claimed once in the
inbox and changes nothing; a letter is drafted once per course.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.documents import domain
from services.documents.domain import (
    PLAN_ITEMS,
    WEEKLY_KINDS,
    ChecklistPolicy,
    PlanSnapshot,
    Version,
)
from services.documents.letters import LetterRenderer, facts_from_json, facts_to_json
from services.documents.store import (
    AuditLog,
    DocumentRow,
    FileRow,
    LetterRow,
    NoteRow,
    PlanRevisionRow,
    PlanRow,
    ProcessedEvent,
    RecordRow,
    ReferralRow,
    RegroupingRow,
    VersionRow,
)
from services.documents.transport import Outgoing, TransmissionError, Transport
from shared.audit import record_access
from shared.auth import Principal
from shared.courses import PlanFacts, PlanLink, Regrouping, group_courses, is_course_plan
from shared.errors import Conflict, Forbidden, NotFound, RuleViolation
from shared.events import CloudEvent, CourseRegrouped, NoteSigned, Patient
from shared.events.base import EventPayload
from shared.events.dicom import DocumentReceived, PlanReceived, TreatmentRecorded
from shared.events.documents import PlanVersioned, TreatmentFlagged
from shared.events.scheduler import BookingChanged
from shared.locks import lock_keys
from shared.outbox import claim_events, emit, emit_many

log = structlog.get_logger(__name__)
CONSUMER = "documents"
LOCKS = "documents.patient"
EVENT_TYPES: tuple[str, ...] = (
    PlanReceived.type,
    TreatmentRecorded.type,
    DocumentReceived.type,
    BookingChanged.type,  # the scheduler's referral: the letter's addressee
)
PDF_MAGIC = b"%PDF-"
# A PDF's header may follow up to 1024 bytes of other data (ISO 32000-1 Annex H.3, note 3).
PDF_HEADER_WINDOW = 1024

FetchPdf = Callable[[DocumentReceived], bytes]
_FiledRow = TypeVar("_FiledRow", DocumentRow, LetterRow)
NEW_YORK = ZoneInfo("America/New_York")


def is_pdf(content: bytes) -> bool:
    return PDF_MAGIC in content[: PDF_HEADER_WINDOW + len(PDF_MAGIC)]


# ---------------------------------------------------------------- snapshot <-> JSON


def snapshot_to_json(snap: PlanSnapshot) -> dict[str, Any]:
    data = asdict(snap)
    for name in ("received_at", "reviewed_at", "plan_date"):
        if data[name] is not None:
            data[name] = data[name].isoformat()
    data["references"] = [[r.uid, r.relationship] for r in snap.references]
    return data


def snapshot_from_json(data: dict[str, Any]) -> PlanSnapshot:
    values = dict(data)
    values["received_at"] = datetime.fromisoformat(values["received_at"])
    if values.get("reviewed_at"):
        values["reviewed_at"] = datetime.fromisoformat(values["reviewed_at"])
    if values.get("plan_date"):
        values["plan_date"] = date.fromisoformat(values["plan_date"])
    values["references"] = tuple(PlanLink(uid=u, relationship=r) for u, r in values["references"])
    values["beams"] = tuple(values.get("beams") or ())
    values["machines"] = tuple(values.get("machines") or ())
    return PlanSnapshot(**values)


@dataclass
class _Held:
    """What a batch's events already have in the database, read in one query per table (a
    fetch of 200 records would otherwise cost 200 lookups)."""

    plans: dict[str, PlanRow]
    revisions: set[tuple[str, int]]
    records: dict[str, RecordRow]

    @classmethod
    def load(cls, session: Session, events: Sequence[CloudEvent]) -> _Held:
        plan_uids = [
            e.data.object.sop_instance_uid for e in events if isinstance(e.data, PlanReceived)
        ]
        record_uids = [
            e.data.object.sop_instance_uid for e in events if isinstance(e.data, TreatmentRecorded)
        ]
        plans: dict[str, PlanRow] = {}
        revisions: set[tuple[str, int]] = set()
        records: dict[str, RecordRow] = {}
        if plan_uids:
            plans = {
                p.uid: p for p in session.scalars(select(PlanRow).where(PlanRow.uid.in_(plan_uids)))
            }
            revisions = {
                (uid, revision)
                for uid, revision in session.execute(
                    select(PlanRevisionRow.uid, PlanRevisionRow.revision).where(
                        PlanRevisionRow.uid.in_(plan_uids)
                    )
                )
            }
        if record_uids:
            records = {
                r.uid: r
                for r in session.scalars(select(RecordRow).where(RecordRow.uid.in_(record_uids)))
            }
        return cls(plans, revisions, records)


@dataclass(frozen=True)
class Upload:
    plan_uid: str
    doc_type: str
    author: str | None
    signed_by: str | None
    signed_at: datetime | None
    filename: str | None
    content: bytes
    week: str | None = None


@dataclass(frozen=True)
class NoteIn:
    patient_id: str
    course_id: str
    week: str
    kind: str
    author: str
    signed_at: datetime
    text: str | None = None
    visit_date: date | None = None
    face_to_face: bool = True


class DocumentsService:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        policy: ChecklistPolicy,
        renderer: LetterRenderer,
        transport: Transport,
        fetch_pdf: FetchPdf | None = None,
        zone: ZoneInfo = NEW_YORK,
        gap_days: int = 30,
        department_contact: str = "the radiation oncology department",
        retry_max_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._factory = factory
        self.policy = policy
        self._renderer = renderer
        self.transport = transport
        self._fetch_pdf = fetch_pdf
        self.zone = zone
        self._gap_days = gap_days
        self._contact = department_contact
        self._retry_max = timedelta(seconds=retry_max_s)
        self._now = clock
        self._on_commit = on_commit

    def now(self) -> datetime:
        return self._now()

    # ------------------------------------------------------------ events in

    def apply(self, event: CloudEvent) -> bool:
        return self.apply_batch([event]) == 1

    def apply_batch(self, events: Sequence[CloudEvent]) -> int:
        """Apply events in one transaction, deriving each affected patient once; returns how
        many were new. Encapsulated PDFs are fetched from the SCP first, outside it."""
        pdfs = {
            e.id: self._fetch_pdf(e.data)
            for e in events
            if isinstance(e.data, DocumentReceived) and self._wants(e.data) and self._fetch_pdf
        }
        with self._factory.begin() as session:
            fresh = claim_events(session, ProcessedEvent, CONSUMER, [e.id for e in events])
            patients: set[str] = set()
            todo = list({e.id: e for e in events if e.id in fresh}.values())
            # Replicas share the durable consumer: one patient is derived by one at a time.
            lock_keys(session, LOCKS, (e.data.patient.id for e in todo if e.data.patient.id))
            held = _Held.load(session, todo)
            for event in todo:
                if self._intake(session, event, pdfs.get(event.id), held):
                    patients.add(event.data.patient.id)
            session.flush()
            for patient_id in sorted(patients):
                self._derive(session, patient_id)
        if fresh:
            self._on_commit()
        return len(fresh)

    @staticmethod
    def _wants(doc: DocumentReceived) -> bool:
        return bool(doc.patient.id) and (doc.mime_type or "application/pdf") == "application/pdf"

    def _intake(self, session: Session, event: CloudEvent, pdf: bytes | None, held: _Held) -> bool:
        data = event.data
        if not data.patient.id:
            return False
        match data:
            case PlanReceived():
                self._take_plan(session, data, event.time, held)
            case TreatmentRecorded():
                self._take_record(session, data, held)
            case DocumentReceived() if pdf is not None:
                self._take_dicom_document(session, data, pdf, event.time)
            case BookingChanged():
                return self._take_referral(session, data)
            case _:
                return False
        return True

    @staticmethod
    def _take_referral(session: Session, booking: BookingChanged) -> bool:
        """The booking's latest revision; False when it is not newer than the one held."""
        row = session.get(ReferralRow, booking.booking_id)
        if row is not None and row.revision >= booking.revision:
            return False
        if row is None:
            row = ReferralRow(booking_id=booking.booking_id, patient_id=booking.patient.id)
            session.add(row)
        row.revision = booking.revision
        row.status = booking.status
        row.start = booking.start
        row.referring_physician = booking.referring_physician
        return True

    def _take_plan(
        self, session: Session, plan: PlanReceived, received_at: datetime, held: _Held
    ) -> None:
        snap = domain.snapshot_of(plan, received_at)
        uid, revision = snap.uid, snap.revision
        row = held.plans.get(uid)
        if (uid, revision) not in held.revisions:
            held.revisions.add((uid, revision))
            before = snapshot_from_json(row.snapshot) if row and row.revision < revision else None
            session.add(
                PlanRevisionRow(
                    uid=uid,
                    revision=revision,
                    patient_id=snap.patient_id,
                    received_at=received_at,
                    sha256=plan.object.sha256,
                    approval_status=snap.approval_status,
                    reviewer=snap.reviewer,
                    reviewed_at=snap.reviewed_at,
                    changes=list(domain.changes_between(before, snap)),
                )
            )
        if row is None:
            row = held.plans[uid] = PlanRow(
                uid=uid,
                patient_id=snap.patient_id,
                patient_name=plan.patient.name,
                birth_date=plan.patient.birth_date,
                revision=revision,
                received_at=received_at,
                snapshot=snapshot_to_json(snap),
            )
            session.add(row)
        elif revision > row.revision:
            row.revision, row.received_at = revision, received_at
            row.snapshot = snapshot_to_json(snap)
            row.patient_name = plan.patient.name or row.patient_name

    def _take_record(self, session: Session, record: TreatmentRecorded, held: _Held) -> None:
        uid, revision = record.object.sop_instance_uid, record.object.revision
        delivered = record.delivered and (record.content_origin or "").upper() != "SIMULATION"
        row = held.records.get(uid)
        if row is not None and row.revision >= revision:
            return
        if row is None:
            row = held.records[uid] = RecordRow(uid=uid, patient_id=record.patient.id)
            session.add(row)
        row.revision = revision
        row.plan_uid = record.plan_uid
        row.treated_at = record.treated_at
        row.delivered = delivered
        row.fraction_numbers = list(record.fraction_numbers)

    def _take_dicom_document(
        self, session: Session, doc: DocumentReceived, pdf: bytes, received_at: datetime
    ) -> None:
        held = session.scalar(
            select(DocumentRow.id).where(
                DocumentRow.dicom_uid == doc.object.sop_instance_uid,
                DocumentRow.dicom_revision == doc.object.revision,
            )
        )
        if held is not None or not is_pdf(pdf):
            if held is None:
                log.warning("encapsulated document is not a PDF", uid=doc.object.sop_instance_uid)
            return
        self._file(
            session,
            patient_id=doc.patient.id,
            plan_uid=doc.referenced_plan_uid,
            doc_type=domain.doc_type_of_title(doc.title),
            title=doc.title,
            author=None,
            signed_by=None,
            signed_at=doc.content_at,
            filename=None,
            content=pdf,
            source="dicom",
            filed_by=f"dicom:{doc.source.ae_title}",
            filed_at=received_at,
            dicom=(doc.object.sop_instance_uid, doc.object.revision),
        )

    # ------------------------------------------------------------ derivation

    def _derive(self, session: Session, patient_id: str) -> None:
        out: list[tuple[EventPayload, str | None]] = []
        self._derive_into(session, patient_id, out)
        # One executemany for the patient's events (a course's flags come together).
        emit_many(session, out)

    def _derive_into(
        self, session: Session, patient_id: str, out: list[tuple[EventPayload, str | None]]
    ) -> None:
        plans = {
            p.uid: p
            for p in session.scalars(select(PlanRow).where(PlanRow.patient_id == patient_id))
        }
        snaps = {uid: snapshot_from_json(p.snapshot) for uid, p in plans.items()}
        records = list(session.scalars(select(RecordRow).where(RecordRow.patient_id == patient_id)))
        grouping = group_courses(
            (self._plan_facts(s, records) for s in snaps.values()),
            regroupings=[
                Regrouping(plan_uids=frozenset(r.plan_uids), sequence=r.sequence)
                for r in session.scalars(
                    select(RegroupingRow).where(RegroupingRow.patient_id == patient_id)
                )
            ],
            gap_days=self._gap_days,
        )
        versions = domain.version_history(grouping, snaps)
        patient = next(iter(plans.values()), None)
        self._store_versions(session, patient_id, patient, versions, snaps, out)
        revisions: dict[str, list[PlanRevisionRow]] = defaultdict(list)
        for rev in session.scalars(
            select(PlanRevisionRow).where(PlanRevisionRow.patient_id == patient_id)
        ):
            revisions[rev.uid].append(rev)
        for revs in revisions.values():
            revs.sort(key=lambda r: (r.received_at, r.revision))
        docs = list(
            session.scalars(select(DocumentRow).where(DocumentRow.patient_id == patient_id))
        )
        self._judge(records, grouping.excluded, versions, snaps, revisions, docs, plans, out)
        self._draft_letters(session, patient_id, records, grouping.courses, versions, snaps, plans)

    def _plan_facts(self, snap: PlanSnapshot, records: Sequence[RecordRow]) -> PlanFacts:
        # The same facts billing groups with (first and last treated day in the clinic's zone),
        # so both services compute the same course ids.
        days = [
            r.treated_at.astimezone(self.zone).date()
            for r in records
            if r.plan_uid == snap.uid and r.delivered and r.treated_at
        ]
        return PlanFacts(
            uid=snap.uid,
            patient_id=snap.patient_id,
            intent=snap.intent,
            label=snap.label,
            frame_of_reference_uid=snap.frame_of_reference_uid,
            plan_date=snap.plan_date,
            first_treated_on=min(days) if days else None,
            last_treated_on=max(days) if days else None,
            references=snap.references,
            revision=snap.revision,
        )

    def _store_versions(
        self,
        session: Session,
        patient_id: str,
        patient: PlanRow | None,
        versions: dict[str, Version],
        snaps: dict[str, PlanSnapshot],
        out: list[tuple[EventPayload, str | None]],
    ) -> None:
        held = {
            v.plan_uid: v
            for v in session.scalars(select(VersionRow).where(VersionRow.patient_id == patient_id))
        }
        for uid, version in sorted(versions.items()):
            snap = snaps[uid]
            changes = domain.changes_between(snaps.get(version.predecessor_uid or ""), snap)
            state = {
                "course_id": version.course_id,
                "number": version.number,
                "predecessor_uid": version.predecessor_uid,
                "predecessor_inferred": version.predecessor_inferred,
                "concurrent_uids": list(version.concurrent_uids),
                "superseded_by": version.superseded_by,
                "changes": list(changes),
            }
            extra = {"approval": snap.approval_status, "label": snap.label, "rev": snap.revision}
            digest = hashlib.sha256(json.dumps([state, extra], sort_keys=True).encode()).hexdigest()
            row = held.pop(uid, None)
            if row is not None and row.digest == digest and not row.removed:
                continue
            if row is None:
                row = VersionRow(plan_uid=uid, patient_id=patient_id, revision=0)
                session.add(row)
            for name, value in state.items():
                setattr(row, name, value)
            row.revision += 1
            row.digest = digest
            row.removed = False
            out.append(
                (
                    PlanVersioned(
                        patient=_patient(patient, patient_id),
                        plan_uid=uid,
                        revision=row.revision,
                        course_id=version.course_id,
                        plan_version=version.number,
                        predecessor_uid=version.predecessor_uid,
                        predecessor_inferred=version.predecessor_inferred,
                        concurrent_uids=version.concurrent_uids,
                        label=snap.label,
                        approval_status=snap.approval_status,
                        superseded_by=version.superseded_by,
                        changes=changes,
                    ),
                    None,
                )
            )
        for row in held.values():
            if row.removed:
                continue
            # Re-sent as a QA plan: no longer a version. Retracted, with the next revision.
            row.removed = True
            row.revision += 1
            snap = snaps.get(row.plan_uid)
            out.append(
                (
                    PlanVersioned(
                        patient=_patient(patient, patient_id),
                        plan_uid=row.plan_uid,
                        revision=row.revision,
                        course_id=row.course_id,
                        plan_version=row.number,
                        label=snap.label if snap else None,
                        approval_status=snap.approval_status if snap else None,
                        removed=True,
                    ),
                    None,
                )
            )

    def _judge(
        self,
        records: Sequence[RecordRow],
        excluded: Iterable[str],
        versions: dict[str, Version],
        snaps: dict[str, PlanSnapshot],
        revisions: dict[str, list[PlanRevisionRow]],
        docs: Sequence[DocumentRow],
        plans: dict[str, PlanRow],
        out: list[tuple[EventPayload, str | None]],
    ) -> None:
        """Flag each delivered record not judged yet whose plan is known, as of its delivery:
        the approval in force then, versions received by then, documents signed by then."""
        qa = set(excluded)
        for record in records:
            if record.evaluated_revision == record.revision:
                continue
            if not (record.delivered and record.plan_uid):
                record.evaluated_revision = record.revision
                continue
            if record.plan_uid in qa:
                record.evaluated_revision = record.revision
                continue
            version = versions.get(record.plan_uid)
            if version is None:
                continue  # the plan has not arrived: judged when it does
            at = record.treated_at or self._now()
            revs = revisions.get(record.plan_uid) or []
            in_force = [r for r in revs if r.received_at <= at] or revs[:1]
            rev = in_force[-1] if in_force else None
            approved = bool(
                rev
                and (rev.approval_status or "").upper() == "APPROVED"
                and rev.reviewer
                and rev.reviewed_at
            )
            later = [
                v
                for v in versions.values()
                if v.course_id == version.course_id
                and v.number > version.number
                and revisions.get(v.plan_uid)
                and revisions[v.plan_uid][0].received_at <= at
            ]
            superseded_by = min(later, key=lambda v: v.number).plan_uid if later else None
            snap = snaps[record.plan_uid]
            required = self.policy.required(snap.site, snap.technique)
            filed = {
                d.doc_type: d.id
                for d in docs
                if d.plan_uid == record.plan_uid and d.effective_at <= at
            }
            state = domain.checklist(required, filed, approved_in_dicom=approved)
            reasons = domain.flag_reasons(
                approved=approved,
                superseded=superseded_by is not None,
                missing_documents=state.missing,
            )
            record.evaluated_revision = record.revision
            record.flag_reasons = list(reasons) or None
            if reasons:
                out.append(
                    (
                        TreatmentFlagged(
                            patient=_patient(plans.get(record.plan_uid), record.patient_id),
                            record_uid=record.uid,
                            record_revision=record.revision,
                            plan_uid=record.plan_uid,
                            course_id=version.course_id,
                            plan_version=version.number,
                            treated_at=record.treated_at,
                            fraction_numbers=tuple(record.fraction_numbers),
                            reasons=reasons,
                            missing_documents=state.missing,
                            superseded_by=superseded_by,
                        ),
                        None,
                    )
                )

    def _draft_letters(
        self,
        session: Session,
        patient_id: str,
        records: Sequence[RecordRow],
        courses: Iterable[Any],
        versions: dict[str, Version],
        snaps: dict[str, PlanSnapshot],
        plans: dict[str, PlanRow],
    ) -> None:
        letters = list(session.scalars(select(LetterRow).where(LetterRow.patient_id == patient_id)))
        lettered = {c for letter in letters for c in (letter.course_id, *letter.plan_uids)}
        for course in courses:
            if course.id in lettered or lettered & set(course.plan_uids):
                continue  # one letter per course, even after its plans were regrouped
            delivered = [
                r
                for r in records
                if r.delivered and r.treated_at and r.plan_uid in course.plan_uids
            ]
            if not delivered:
                continue
            first = min(delivered, key=lambda r: (r.treated_at, r.uid))
            assert first.plan_uid is not None and first.treated_at is not None
            version = versions[first.plan_uid]
            chosen = [snaps[first.plan_uid]] + [snaps[u] for u in version.concurrent_uids]
            patient = plans.get(first.plan_uid)
            facts = domain.letter_facts(
                course_id=course.id,
                patient_name=patient.patient_name if patient else None,
                birth_date=patient.birth_date if patient else None,
                plans=chosen,
                start_date=first.treated_at.astimezone(self.zone).date(),
                department_contact=self._contact,
                referral=_referral(session, patient_id, before=first.treated_at),
            )
            now = self._now()
            pdf = self._renderer.pdf(facts, today=now.astimezone(self.zone).date())
            sha = self._keep_file(session, pdf)
            session.add(
                LetterRow(
                    id=str(uuid.uuid4()),
                    patient_id=patient_id,
                    course_id=course.id,
                    plan_uids=list(course.plan_uids),
                    status="draft",
                    facts=facts_to_json(facts),
                    pdf_sha256=sha,
                    drafted_at=now,
                    attempts=0,
                )
            )
            lettered |= {course.id, *course.plan_uids}
            log.info("letter drafted", patient_id=patient_id, course_id=course.id)

    # ------------------------------------------------------------ filing documents

    @staticmethod
    def _keep_file(session: Session, content: bytes) -> str:
        sha = hashlib.sha256(content).hexdigest()
        if session.get(FileRow, sha) is None:
            session.add(FileRow(sha256=sha, size=len(content), content=content))
            session.flush()
        return sha

    def _file(
        self,
        session: Session,
        *,
        patient_id: str,
        plan_uid: str | None,
        doc_type: str,
        title: str | None,
        author: str | None,
        signed_by: str | None,
        signed_at: datetime | None,
        filename: str | None,
        content: bytes,
        source: str,
        filed_by: str,
        filed_at: datetime,
        dicom: tuple[str, int] | None = None,
        course_id: str | None = None,
        week: str | None = None,
    ) -> DocumentRow:
        sha = self._keep_file(session, content)
        revision = 1 + (
            session.scalar(
                select(func.max(DocumentRow.revision)).where(
                    DocumentRow.plan_uid == plan_uid, DocumentRow.doc_type == doc_type
                )
            )
            or 0
        )
        row = DocumentRow(
            id=str(uuid.uuid4()),
            patient_id=patient_id,
            plan_uid=plan_uid,
            course_id=course_id,
            week=week,
            doc_type=doc_type,
            revision=revision,
            title=title,
            author=author,
            signed_by=signed_by,
            signed_at=signed_at,
            filename=filename,
            sha256=sha,
            size=len(content),
            source=source,
            dicom_uid=dicom[0] if dicom else None,
            dicom_revision=dicom[1] if dicom else None,
            filed_by=filed_by,
            filed_at=filed_at,
        )
        session.add(row)
        session.flush()
        return row

    def upload(self, upload: Upload, *, principal: Principal, resource: str) -> DocumentRow:
        """File an uploaded PDF for a plan version (the caller checked type and size)."""
        if upload.doc_type not in (*PLAN_ITEMS, *WEEKLY_KINDS, "other"):
            raise RuleViolation(
                f"doc_type {upload.doc_type!r} is not one of "
                f"{', '.join((*PLAN_ITEMS, *WEEKLY_KINDS, 'other'))}"
            )
        weekly = upload.doc_type in WEEKLY_KINDS
        if weekly and not upload.week:
            raise RuleViolation(f"a {upload.doc_type} needs the treatment week it documents (week)")
        with self._factory.begin() as session:
            plan = session.get(PlanRow, upload.plan_uid)
            if plan is None:
                raise RuleViolation(
                    f"unknown plan_uid {upload.plan_uid!r}: no RT Plan with this SOP Instance "
                    "UID has been received"
                )
            lock_keys(session, LOCKS, [plan.patient_id])
            version = session.get(VersionRow, upload.plan_uid)
            if version is not None and version.removed:
                version = None
            now = self._now()
            row = self._file(
                session,
                patient_id=plan.patient_id,
                plan_uid=upload.plan_uid,
                doc_type=upload.doc_type,
                title=None,
                author=upload.author,
                signed_by=upload.signed_by,
                signed_at=upload.signed_at,
                filename=upload.filename,
                content=upload.content,
                source="upload",
                filed_by=principal.user,
                filed_at=now,
                course_id=version.course_id if version else None,
                week=upload.week,
            )
            if weekly:
                if version is None:
                    raise RuleViolation(f"plan {upload.plan_uid} is not part of a course")
                self._record_note(
                    session,
                    plan,
                    NoteIn(
                        patient_id=plan.patient_id,
                        course_id=version.course_id,
                        week=upload.week or "",
                        kind=upload.doc_type,
                        author=upload.signed_by or upload.author or principal.user,
                        signed_at=upload.signed_at or now,
                    ),
                    principal=principal,
                    document_id=row.id,
                )
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[plan.patient_id],
            )
            self._derive(session, plan.patient_id)
        self._on_commit()
        return row

    # ------------------------------------------------------------ notes

    def add_note(self, note: NoteIn, *, principal: Principal, resource: str) -> NoteRow:
        if note.kind not in WEEKLY_KINDS:
            raise RuleViolation(f"kind {note.kind!r} is not one of {', '.join(WEEKLY_KINDS)}")
        needed = {"management_note": "physician", "physics_check": "physicist"}[note.kind]
        if not principal.roles & {needed, "admin"}:
            raise Forbidden(f"a {note.kind} is signed by a {needed}")
        if (
            principal.names
            and note.author not in principal.names
            and "admin" not in principal.roles
        ):
            # A mapped user signs as one of their own DICOM names (issue 15: identity is the
            # token's subject, not what a body claims); an admin (an OIS interface) files
            # others' notes, and recorded_by keeps who filed it.
            raise Forbidden(
                f"{principal.shown_as} signs notes as {' or '.join(principal.names)}, "
                f"not {note.author!r}"
            )
        with self._factory.begin() as session:
            plan = session.scalar(
                select(PlanRow)
                .join(VersionRow, VersionRow.plan_uid == PlanRow.uid)
                .where(VersionRow.course_id == note.course_id, ~VersionRow.removed)
                .limit(1)
            )
            if plan is None or plan.patient_id != note.patient_id:
                raise RuleViolation(
                    f"patient {note.patient_id!r} has no course {note.course_id!r}; "
                    "GET /v1/plans?patient_id= lists the courses"
                )
            row = self._record_note(session, plan, note, principal=principal)
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[note.patient_id],
            )
        self._on_commit()
        return row

    def void_note(self, note_id: str, *, principal: Principal, resource: str) -> NoteRow:
        """A note signed in error: its next revision, voided (billing drops it)."""
        with self._factory.begin() as session:
            row = session.get(NoteRow, note_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no note {note_id!r}")
            needed = {"management_note": "physician", "physics_check": "physicist"}[row.kind]
            if not principal.roles & {needed, "admin"}:
                raise Forbidden(f"a {row.kind} is voided by a {needed}")
            if row.voided:
                raise Conflict(f"note {note_id} is voided already")
            row.voided = True
            row.revision += 1
            plan = session.scalar(
                select(PlanRow)
                .join(VersionRow, VersionRow.plan_uid == PlanRow.uid)
                .where(VersionRow.course_id == row.course_id)
                .limit(1)
            )
            emit(
                session,
                NoteSigned(
                    patient=_patient(plan, row.patient_id),
                    note_id=row.id,
                    revision=row.revision,
                    course_id=row.course_id,
                    week=row.week,
                    kind=row.kind,
                    author=row.author,
                    signed_at=row.signed_at,
                    visit_date=row.visit_date,
                    face_to_face=row.face_to_face,
                    voided=True,
                ),
            )
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[row.patient_id],
            )
            session.flush()
            session.expunge(row)
        self._on_commit()
        return row

    def _record_note(
        self,
        session: Session,
        plan: PlanRow,
        note: NoteIn,
        *,
        principal: Principal,
        document_id: str | None = None,
    ) -> NoteRow:
        row = NoteRow(
            id=str(uuid.uuid4()),
            revision=1,
            patient_id=note.patient_id,
            course_id=note.course_id,
            week=note.week,
            kind=note.kind,
            author=note.author,
            signed_at=note.signed_at,
            visit_date=note.visit_date,
            face_to_face=note.face_to_face,
            text=note.text,
            document_id=document_id,
            voided=False,
            recorded_by=principal.user,
            recorded_at=self._now(),
        )
        session.add(row)
        session.flush()
        emit(
            session,
            NoteSigned(
                patient=_patient(plan, note.patient_id),
                note_id=row.id,
                revision=1,
                course_id=note.course_id,
                week=note.week,
                kind=note.kind,
                author=note.author,
                signed_at=note.signed_at,
                visit_date=note.visit_date,
                face_to_face=note.face_to_face,
            ),
        )
        return row

    # ------------------------------------------------------------ regrouping

    def regroup(
        self, plan_uids: Sequence[str], *, reason: str | None, principal: Principal, resource: str
    ) -> RegroupingRow:
        """Staff say exactly these plans form one course (audited, published for billing)."""
        uids = sorted(set(plan_uids))
        if not uids:
            raise RuleViolation("plan_uids is empty")
        with self._factory.begin() as session:
            plans = list(session.scalars(select(PlanRow).where(PlanRow.uid.in_(uids))))
            unknown = sorted(set(uids) - {p.uid for p in plans})
            if unknown:
                raise RuleViolation(f"unknown plans: {', '.join(unknown)}")
            patients = sorted({p.patient_id for p in plans})
            if len(patients) > 1:
                raise RuleViolation(f"the plans belong to several patients: {', '.join(patients)}")
            qa = [p.uid for p in plans if not domain_is_course_plan(snapshot_from_json(p.snapshot))]
            if qa:
                raise RuleViolation(f"QA plans never join a course: {', '.join(sorted(qa))}")
            # The sequence only increases across all corrections: one correction at a time.
            lock_keys(session, LOCKS, ["regrouping", patients[0]])
            sequence = 1 + (session.scalar(select(func.max(RegroupingRow.sequence))) or 0)
            now = self._now()
            row = RegroupingRow(
                id=str(uuid.uuid4()),
                sequence=sequence,
                patient_id=patients[0],
                plan_uids=uids,
                corrected_by=principal.user,
                corrected_at=now,
                reason=reason,
            )
            session.add(row)
            session.flush()
            self._derive(session, patients[0])
            session.flush()
            version = session.get(VersionRow, uids[0])
            row.course_id = version.course_id if version else None
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=patients,
            )
            emit(
                session,
                CourseRegrouped(
                    patient=_patient(plans[0], patients[0]),
                    regrouping_id=row.id,
                    sequence=sequence,
                    plan_uids=tuple(uids),
                    course_id=row.course_id,
                    corrected_by=principal.user,
                    corrected_at=now,
                    reason=reason,
                ),
            )
        self._on_commit()
        return row

    # ------------------------------------------------------------ reads

    def plan_history(
        self, patient_id: str, *, principal: Principal, resource: str
    ) -> list[dict[str, Any]]:
        """Every version of the patient's plans (course, then version order) with its checklist,
        what changed, its approval history, whether it was treated and the flags."""
        with self._factory.begin() as session:
            out = self._history(session, patient_id)
            record_access(
                session,
                AuditLog,
                principal,
                action="read",
                resource=resource,
                patient_ids=[patient_id],
            )
        return out

    def _history(self, session: Session, patient_id: str) -> list[dict[str, Any]]:
        versions = list(
            session.scalars(
                select(VersionRow).where(VersionRow.patient_id == patient_id, ~VersionRow.removed)
            )
        )
        if not versions:
            return []
        plans = {
            p.uid: p
            for p in session.scalars(select(PlanRow).where(PlanRow.patient_id == patient_id))
        }
        revisions: dict[str, list[PlanRevisionRow]] = defaultdict(list)
        for rev in session.scalars(
            select(PlanRevisionRow)
            .where(PlanRevisionRow.patient_id == patient_id)
            .order_by(PlanRevisionRow.revision)
        ):
            revisions[rev.uid].append(rev)
        docs: dict[str, list[DocumentRow]] = defaultdict(list)
        for doc in session.scalars(
            select(DocumentRow)
            .where(DocumentRow.patient_id == patient_id)
            .order_by(DocumentRow.filed_at)
        ):
            docs[doc.plan_uid or ""].append(doc)
        treated: dict[str, list[RecordRow]] = defaultdict(list)
        for record in session.scalars(
            select(RecordRow).where(RecordRow.patient_id == patient_id, RecordRow.delivered)
        ):
            treated[record.plan_uid or ""].append(record)
        out = []
        for v in sorted(versions, key=lambda v: (v.course_id, v.number, v.plan_uid)):
            snap = snapshot_from_json(plans[v.plan_uid].snapshot)
            filed = {d.doc_type: d.id for d in docs[v.plan_uid]}
            state = domain.checklist(
                self.policy.required(snap.site, snap.technique),
                filed,
                approved_in_dicom=snap.approved,
            )
            records = treated[v.plan_uid]
            flags = sorted({f for r in records for f in (r.flag_reasons or [])})
            out.append(
                {
                    "plan_uid": v.plan_uid,
                    "patient_id": patient_id,
                    "course_id": v.course_id,
                    "label": snap.label,
                    "version": v.number,
                    "predecessor_uid": v.predecessor_uid,
                    "predecessor_inferred": v.predecessor_inferred,
                    "concurrent_uids": v.concurrent_uids,
                    "superseded_by": v.superseded_by,
                    "approval_status": snap.approval_status,
                    "approved_by": snap.reviewer,
                    "approved_at": snap.reviewed_at,
                    "intent": snap.intent,
                    "site": snap.site,
                    "technique": snap.technique,
                    "fractions": snap.fractions,
                    "prescription_gy": snap.prescription_gy,
                    "machines": list(snap.machines),
                    "beams": list(snap.beams),
                    "changes": v.changes,
                    "revisions": [
                        {
                            "revision": r.revision,
                            "received_at": r.received_at,
                            "approval_status": r.approval_status,
                            "reviewer": r.reviewer,
                            "reviewed_at": r.reviewed_at,
                            "changes": r.changes,
                        }
                        for r in revisions[v.plan_uid]
                    ],
                    "treated": bool(records),
                    "fractions_delivered": len(records),
                    "flags": flags,
                    "documents_required": list(state.required),
                    "documents_complete": state.complete,
                    "missing_documents": list(state.missing),
                    "documents": [
                        {
                            "id": d.id,
                            "doc_type": d.doc_type,
                            "revision": d.revision,
                            "source": d.source,
                            "signed_by": d.signed_by,
                            "signed_at": d.signed_at,
                            "filed_at": d.filed_at,
                            "sha256": d.sha256,
                            "size": d.size,
                        }
                        for d in docs[v.plan_uid]
                    ],
                }
            )
        return out

    def courses(
        self, patient_id: str, *, principal: Principal, resource: str
    ) -> list[dict[str, Any]]:
        """Each course's plans and its weekly documents per treatment week."""
        with self._factory.begin() as session:
            versions = list(
                session.scalars(
                    select(VersionRow).where(
                        VersionRow.patient_id == patient_id, ~VersionRow.removed
                    )
                )
            )
            by_course: dict[str, list[str]] = defaultdict(list)
            for v in versions:
                by_course[v.course_id].append(v.plan_uid)
            plan_course = {v.plan_uid: v.course_id for v in versions}
            days: dict[str, list[date]] = defaultdict(list)
            for r in session.scalars(
                select(RecordRow).where(RecordRow.patient_id == patient_id, RecordRow.delivered)
            ):
                if r.plan_uid in plan_course and r.treated_at:
                    days[plan_course[r.plan_uid]].append(r.treated_at.astimezone(self.zone).date())
            notes: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for n in session.scalars(
                select(NoteRow).where(NoteRow.patient_id == patient_id, ~NoteRow.voided)
            ):
                notes[n.course_id].append((n.week, n.kind))
            record_access(
                session,
                AuditLog,
                principal,
                action="read",
                resource=resource,
                patient_ids=[patient_id],
            )
        out = []
        for course_id in sorted(by_course):
            weeks = domain.weekly_status(sorted(set(days[course_id])), notes[course_id])
            out.append(
                {
                    "course_id": course_id,
                    "patient_id": patient_id,
                    "plan_uids": sorted(by_course[course_id]),
                    "weeks": [
                        {
                            "week": w.week,
                            "fractions": w.fractions,
                            "present": list(w.present),
                            "missing": list(w.missing),
                        }
                        for w in weeks
                    ],
                }
            )
        return out

    def document(
        self, document_id: str, *, principal: Principal, resource: str
    ) -> tuple[DocumentRow, bytes]:
        return self._with_file(
            DocumentRow, document_id, "document", principal=principal, resource=resource
        )

    def _with_file(
        self,
        model: type[_FiledRow],
        row_id: str,
        what: str,
        *,
        principal: Principal,
        resource: str,
    ) -> tuple[_FiledRow, bytes]:
        """A document's or letter's row and its file's bytes; the read audited."""
        with self._factory.begin() as session:
            row = session.get(model, row_id)
            if row is None:
                raise NotFound(f"no {what} {row_id!r}")
            sha = row.sha256 if isinstance(row, DocumentRow) else row.pdf_sha256
            file = session.get(FileRow, sha)
            assert file is not None
            content = file.content
            record_access(
                session,
                AuditLog,
                principal,
                action="read",
                resource=resource,
                patient_ids=[row.patient_id],
            )
            session.expunge(row)
        return row, content

    def letters(
        self,
        patient_id: str | None,
        status: str | None,
        *,
        principal: Principal,
        resource: str,
        limit: int = 200,
    ) -> list[LetterRow]:
        with self._factory.begin() as session:
            query = select(LetterRow).order_by(LetterRow.drafted_at.desc(), LetterRow.id)
            if patient_id:
                query = query.where(LetterRow.patient_id == patient_id)
            if status:
                query = query.where(LetterRow.status == status)
            rows = list(session.scalars(query.limit(limit)))
            record_access(
                session,
                AuditLog,
                principal,
                action="read",
                resource=resource,
                patient_ids=[r.patient_id for r in rows] or [patient_id],
            )
            session.expunge_all()
        return rows

    def letter(self, letter_id: str, *, principal: Principal, resource: str) -> LetterRow:
        with self._factory.begin() as session:
            row = session.get(LetterRow, letter_id)
            if row is None:
                raise NotFound(f"no letter {letter_id!r}")
            record_access(
                session,
                AuditLog,
                principal,
                action="read",
                resource=resource,
                patient_ids=[row.patient_id],
            )
            session.expunge(row)
        return row

    def letter_pdf(
        self, letter_id: str, *, principal: Principal, resource: str
    ) -> tuple[LetterRow, bytes]:
        return self._with_file(
            LetterRow, letter_id, "letter", principal=principal, resource=resource
        )

    # ------------------------------------------------------------ letter workflow

    def approve_letter(self, letter_id: str, *, principal: Principal, resource: str) -> LetterRow:
        """draft -> approved (a physician); the transmission follows (``send_due``)."""
        with self._factory.begin() as session:
            row = session.get(LetterRow, letter_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no letter {letter_id!r}")
            if row.status != "draft":
                raise Conflict(f"letter {letter_id} is {row.status}, not a draft")
            now = self._now()
            row.status = "approved"
            row.approved_by = principal.user
            row.approved_at = now
            row.transport = self.transport.name
            row.next_attempt_at = now
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=[row.patient_id],
            )
            session.flush()
            session.expunge(row)
        return row

    def failing_letters(self) -> int:
        """Approved letters whose last transmission failed (waiting for their retry)."""
        with self._factory() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(LetterRow)
                    .where(LetterRow.status == "approved", LetterRow.last_error.is_not(None))
                )
                or 0
            )

    def send_due(self) -> int:
        """Send every approved letter whose attempt is due; a failure is recorded on the letter
        (``last_error``, ``attempts``) and retried with a doubling wait up to
        ``retry_max_s``. Returns the letters sent."""
        now = self._now()
        with self._factory() as session:
            due = list(
                session.scalars(
                    select(LetterRow.id)
                    .where(LetterRow.status == "approved", LetterRow.next_attempt_at <= now)
                    .order_by(LetterRow.next_attempt_at)
                )
            )
        sent = 0
        for letter_id in due:
            sent += self._send_one(letter_id)
        return sent

    def send_letter(self, letter_id: str) -> bool:
        """Try to send one approved letter now (right after its approval); the sweep retries
        it when this fails."""
        return self._send_one(letter_id) == 1

    def _send_one(self, letter_id: str) -> int:
        now = self._now()
        lease = now + timedelta(minutes=5)
        with self._factory.begin() as session:
            # Claim the attempt: another replica's sweep that reads the same row sees the lease.
            claimed = session.execute(
                update(LetterRow)
                .where(
                    LetterRow.id == letter_id,
                    LetterRow.status == "approved",
                    LetterRow.next_attempt_at <= now,
                )
                .values(next_attempt_at=lease)
            ).rowcount
            if not claimed:
                return 0
            row = session.get(LetterRow, letter_id)
            assert row is not None
            facts = facts_from_json(row.facts)
            plan = session.get(PlanRow, facts.plan_uids[0]) if facts.plan_uids else None
            file = session.get(FileRow, row.pdf_sha256)
            assert file is not None
            outgoing = Outgoing(
                letter_id=row.id,
                patient_id=row.patient_id,
                patient_name=plan.patient_name if plan else None,
                birth_date=facts.birth_date,
                course_id=row.course_id,
                referring_provider=snapshot_from_json(plan.snapshot).referring_physician
                if plan
                else None,
                author=row.approved_by,
                approved_at=row.approved_at or now,
                pdf=file.content,
            )
            attempts = row.attempts
        try:
            reference = self.transport.send(outgoing, now=now)
        except TransmissionError as exc:
            wait = min(timedelta(seconds=30) * 2**attempts, self._retry_max)
            with self._factory.begin() as session:
                row = session.get(LetterRow, letter_id)
                assert row is not None
                row.attempts = attempts + 1
                row.last_error = str(exc)[:2000]
                row.next_attempt_at = now + wait
            log.warning(
                "letter not sent",
                letter_id=letter_id,
                error=str(exc),
                retry_in_s=wait.total_seconds(),
            )
            return 0
        with self._factory.begin() as session:
            row = session.get(LetterRow, letter_id)
            assert row is not None
            row.attempts = attempts + 1
            row.status = "sent"
            row.sent_at = now
            row.sent_reference = reference[:500]
            row.last_error = None
            row.next_attempt_at = None
        log.info("letter sent", letter_id=letter_id, transport=self.transport.name)
        return 1


def domain_is_course_plan(snap: PlanSnapshot) -> bool:
    return is_course_plan(
        PlanFacts(
            uid=snap.uid, patient_id=snap.patient_id, intent=snap.intent, references=snap.references
        )
    )


def _patient(plan: PlanRow | None, patient_id: str) -> Patient:
    if plan is None:
        return Patient(id=patient_id)
    return Patient(id=patient_id, name=plan.patient_name, birth_date=plan.birth_date)


def _referral(session: Session, patient_id: str, *, before: datetime) -> str | None:
    """The referring physician of the patient's latest simulation booking (not cancelled)
    that started before the course's first fraction: the order this course came from."""
    return session.scalar(
        select(ReferralRow.referring_physician)
        .where(
            ReferralRow.patient_id == patient_id,
            ReferralRow.status != "cancelled",
            ReferralRow.start <= before,
            ReferralRow.referring_physician.is_not(None),
        )
        .order_by(ReferralRow.start.desc(), ReferralRow.booking_id.desc())
        .limit(1)
    )
