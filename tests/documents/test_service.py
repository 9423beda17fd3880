"""The documents service on a real database: version history from events, what each re-send
changed, flags as of delivery, the letter drafted once per course, documents from DICOM,
regrouping and notes published, letters sent and retried."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pypdf
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.documents.service import DocumentsService, NoteIn, Upload
from services.documents.store import LetterRow, Outbox, VersionRow
from services.documents.transport import Outgoing, TransmissionError
from shared.auth import Principal
from shared.events import CloudEvent, Patient, envelope
from shared.events.scheduler import BookingChanged
from tests.documents.conftest import make_pdf, make_service
from tests.documents.events import MONDAY, PID, at, fraction, pdf_document, plan, uid, weekday
from tests.events import Clock

PHYSICIST = Principal(user="pat", roles=frozenset({"physicist"}))
PHYSICIAN = Principal(user="olga", roles=frozenset({"physician"}))


def published(factory: sessionmaker[Session], type_: str) -> list[dict]:
    with factory() as session:
        bodies = session.scalars(
            select(Outbox.body).where(Outbox.subject == type_).order_by(Outbox.id)
        ).all()
    return [json.loads(b)["data"] for b in bodies]


def history(service: DocumentsService, pid: str = PID) -> dict[str, dict]:
    rows = service.plan_history(pid, principal=PHYSICIST, resource="test")
    return {r["plan_uid"]: r for r in rows}


def file_all(service: DocumentsService, n: int = 1, *, signed_days_before: int = 3) -> None:
    for doc_type in (
        "written_directive",
        "dosimetry_plan_report",
        "physics_plan_qa",
        "patient_qa_measurement",
    ):
        service.upload(
            Upload(
                plan_uid=uid(n),
                doc_type=doc_type,
                author="a",
                signed_by="b",
                signed_at=at(MONDAY.isoformat(), "07:00") - timedelta(days=signed_days_before),
                filename="x.pdf",
                content=make_pdf(doc_type),
            ),
            principal=PHYSICIST,
            resource="test",
        )


def test_versions_from_a_predecessor_chain_published_once(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    v1, v2 = plan(1), plan(2, fractions=25, dose_gy=62.5, refs=((1, "PREDECESSOR"),))
    assert service.apply_batch([v1, v2]) == 2
    h = history(service)
    assert (h[uid(1)]["version"], h[uid(2)]["version"]) == (1, 2)
    assert h[uid(2)]["predecessor_uid"] == uid(1)
    assert "fractions: 28 -> 25" in h[uid(2)]["changes"]
    assert h[uid(1)]["superseded_by"] == uid(2)
    events = published(factory, "rtops.documents.plan.versioned")
    assert sorted((e["plan_uid"], e["plan_version"]) for e in events) == [(uid(1), 1), (uid(2), 2)]
    # Redelivered: nothing new.
    assert service.apply_batch([v1, v2]) == 0
    assert len(published(factory, "rtops.documents.plan.versioned")) == 2


def test_a_plan_re_sent_with_new_content_is_a_new_revision_of_the_same_version(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1, approved=False))
    service.apply(plan(1, revision=2, sha="1", received=at("2026-02-24", "18:00")))
    h = history(service)[uid(1)]
    assert h["version"] == 1 and h["approval_status"] == "APPROVED"
    assert [r["approval_status"] for r in h["revisions"]] == ["UNAPPROVED", "APPROVED"]
    assert "approval: UNAPPROVED -> APPROVED" in h["revisions"][1]["changes"]
    events = published(factory, "rtops.documents.plan.versioned")
    assert [e["revision"] for e in events] == [1, 2]
    # An older revision arriving late changes nothing.
    service.apply(plan(1, revision=1, sha="2", approved=False))
    assert history(service)[uid(1)]["approval_status"] == "APPROVED"


def test_verification_plans_get_no_version(service: DocumentsService) -> None:
    service.apply_batch([plan(1), plan(9, intent="VERIFICATION", refs=((1, "VERIFIED_PLAN"),))])
    assert set(history(service)) == {uid(1)}


def test_fraction_on_an_approved_complete_version_is_not_flagged(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1))
    file_all(service)
    service.apply(fraction(1, MONDAY))
    assert published(factory, "rtops.documents.treatment.flagged") == []
    h = history(service)[uid(1)]
    assert h["treated"] and h["documents_complete"] and h["flags"] == []


def test_fraction_on_an_unapproved_incomplete_version_is_flagged_once(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1, approved=False))
    first = fraction(1, MONDAY)
    service.apply(first)
    service.apply(first)  # redelivered
    flags = published(factory, "rtops.documents.treatment.flagged")
    assert len(flags) == 1
    assert flags[0]["reasons"] == ["unapproved", "documents_incomplete"]
    assert "written_directive" in flags[0]["missing_documents"]
    assert history(service)[uid(1)]["flags"] == ["documents_incomplete", "unapproved"]


def test_fraction_on_a_superseded_version_is_flagged(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1))
    service.apply(plan(2, refs=((1, "PREDECESSOR"),), received=at("2026-03-03", "17:00")))
    file_all(service, 1)
    service.apply(fraction(1, MONDAY))  # before v2 existed: fine
    service.apply(fraction(2, weekday(2)))  # Wednesday, on v1 after v2 arrived
    flags = published(factory, "rtops.documents.treatment.flagged")
    assert [(f["fraction_numbers"], f["reasons"], f["superseded_by"]) for f in flags] == [
        ([2], ["superseded"], uid(2))
    ]


def test_a_record_before_its_plan_is_judged_when_the_plan_arrives(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(fraction(1, MONDAY))
    assert published(factory, "rtops.documents.treatment.flagged") == []
    service.apply(plan(1, approved=False))
    assert len(published(factory, "rtops.documents.treatment.flagged")) == 1


def test_the_letter_is_drafted_once_per_course_on_the_first_fraction(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1))
    first = fraction(1, MONDAY)
    for _ in range(3):
        service.apply(first)
    service.apply(fraction(2, weekday(1)))
    # A redelivery of an older event id with a new delivery of the same record: still one.
    service.apply_batch([first, fraction(1, MONDAY, revision=2)])
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(LetterRow)) == 1
    [letter] = service.letters(PID, None, principal=PHYSICIAN, resource="test")
    assert letter.status == "draft" and letter.facts["start_date"] == MONDAY.isoformat()
    _, pdf = service.letter_pdf(letter.id, principal=PHYSICIAN, resource="test")
    text = pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    for expected in (
        "Dr. Rita Referrer",
        "John Doe",
        "Prostate",
        "Curative",
        "70 Gy in 28 fractions (2.5 Gy per fraction)",
        "2026-03-02",
        "Olga Oncologist",
        "555-0100",
    ):
        assert expected in text, expected


def booking(
    booking_id: str, start: str, referring: str | None, *, status: str = "booked", rev: int = 1
) -> CloudEvent:
    return envelope(
        BookingChanged(
            patient=Patient(id=PID),
            request_id=f"req-{booking_id}",
            booking_id=booking_id,
            revision=rev,
            status=status,  # type: ignore[arg-type]
            start=at(start, "09:00"),
            end=at(start, "10:00"),
            room="ctsim1",
            referring_physician=referring,
        ),
        source="rtops/scheduler",
    )


def test_the_schedulers_referral_addresses_the_letter_before_the_plans(
    service: DocumentsService,
) -> None:
    """Issue 12: the letter goes to the scheduler's referral when present, else to the plan's
    Referring Physician's Name: the latest booking before the first fraction, not cancelled."""
    service.apply_batch(
        [
            booking("b1", "2026-02-10", "Gp^Gary"),
            booking("b2", "2026-02-17", "Urologist^Una"),
            booking("b2", "2026-02-17", "Urologist^Una", status="cancelled", rev=2),
            booking("b3", "2026-03-20", "Later^Larry"),  # after the first fraction
        ]
    )
    service.apply(plan(1))
    service.apply(fraction(1, MONDAY))
    [letter] = service.letters(PID, None, principal=PHYSICIAN, resource="test")
    assert letter.facts["referring_provider"] == "Gary Gp"


def test_without_a_referral_the_plans_referring_physician_is_addressed(
    service: DocumentsService,
) -> None:
    service.apply(plan(1))
    service.apply(fraction(1, MONDAY))
    [letter] = service.letters(PID, None, principal=PHYSICIAN, resource="test")
    assert letter.facts["referring_provider"] == "Dr. Rita Referrer"


def test_no_letter_without_a_delivered_fraction(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1))
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(LetterRow)) == 0


def test_encapsulated_pdfs_are_filed_from_the_scp(
    service: DocumentsService, scp_pdfs: dict[str, bytes]
) -> None:
    service.apply(plan(1))
    scp_pdfs["1.2.3.pdf.1"] = make_pdf("plan report")
    scp_pdfs["1.2.3.pdf.2"] = b"not a pdf"
    event = pdf_document(1, title="Eclipse Plan Report")
    service.apply_batch([event, pdf_document(2, title="Physics check")])
    service.apply(event)
    docs = history(service)[uid(1)]["documents"]
    assert [(d["doc_type"], d["source"]) for d in docs] == [("dosimetry_plan_report", "dicom")]


def test_regrouping_is_audited_and_published(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply_batch([plan(1), plan(2, label="BOOST", plan_date=MONDAY + timedelta(days=60))])
    before = {r["course_id"] for r in history(service).values()}
    assert len(before) == 2
    row = service.regroup([uid(2), uid(1)], reason="boost", principal=PHYSICIST, resource="t")
    h = history(service)
    assert h[uid(1)]["course_id"] == h[uid(2)]["course_id"] == row.course_id
    assert h[uid(2)]["version"] == 2 and h[uid(2)]["predecessor_inferred"]
    [event] = published(factory, "rtops.documents.course.regrouped")
    assert event["plan_uids"] == [uid(1), uid(2)] and event["course_id"] == row.course_id
    assert event["sequence"] == row.sequence == 1


@pytest.mark.parametrize(
    ("uids", "message"),
    [([uid(7)], "unknown plans"), ([uid(1), uid(9)], "QA plans"), ([uid(1), uid(5)], "several")],
)
def test_bad_regroupings_change_nothing(
    service: DocumentsService, factory: sessionmaker[Session], uids: list[str], message: str
) -> None:
    from shared.errors import RuleViolation

    service.apply_batch([plan(1), plan(9, intent="VERIFICATION"), plan(5, pid="OTHER")])
    with pytest.raises(RuleViolation, match=message):
        service.regroup(uids, reason=None, principal=PHYSICIST, resource="t")
    assert published(factory, "rtops.documents.course.regrouped") == []


def test_a_signed_note_is_published_for_billing(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply(plan(1))
    course = history(service)[uid(1)]["course_id"]
    service.add_note(
        NoteIn(
            patient_id=PID,
            course_id=course,
            week="2026-W10",
            kind="management_note",
            author="Oncologist^Olga",
            signed_at=at("2026-03-04", "12:00"),
            text="seen",
        ),
        principal=PHYSICIAN,
        resource="t",
    )
    [event] = published(factory, "rtops.documents.note.signed")
    assert (event["course_id"], event["week"], event["kind"]) == (
        course,
        "2026-W10",
        "management_note",
    )
    service.apply(fraction(1, MONDAY))
    [c] = service.courses(PID, principal=PHYSICIAN, resource="t")
    assert c["weeks"] == [
        {
            "week": "2026-W10",
            "fractions": 1,
            "present": ["management_note"],
            "missing": ["physics_check"],
        }
    ]


class FailingTransport:
    name = "mllp"

    def __init__(self) -> None:
        self.fail = True
        self.sent: list[Outgoing] = []

    def send(self, letter: Outgoing, *, now: object) -> str:
        if self.fail:
            raise TransmissionError("NACK AE: unknown patient")
        self.sent.append(letter)
        return "ctl-1"


def test_approved_letters_are_sent_and_a_failure_is_retried_and_visible(
    factory: sessionmaker[Session], clock: Clock
) -> None:
    transport = FailingTransport()
    service = make_service(factory, clock, transport)
    service.apply_batch([plan(1), fraction(1, MONDAY)])
    [letter] = service.letters(PID, "draft", principal=PHYSICIAN, resource="t")
    service.approve_letter(letter.id, principal=PHYSICIAN, resource="t")
    assert service.send_due() == 0
    held = service.letter(letter.id, principal=PHYSICIAN, resource="t")
    assert (held.status, held.attempts, held.last_error) == (
        "approved",
        1,
        "NACK AE: unknown patient",
    )
    assert service.failing_letters() == 1
    assert service.send_due() == 0  # not due yet: nothing tried
    assert service.letter(letter.id, principal=PHYSICIAN, resource="t").attempts == 1
    transport.fail = False
    clock.now += timedelta(seconds=31)
    assert service.send_due() == 1
    sent = service.letter(letter.id, principal=PHYSICIAN, resource="t")
    assert (sent.status, sent.attempts, sent.last_error, sent.sent_reference) == (
        "sent",
        2,
        None,
        "ctl-1",
    )
    assert transport.sent[0].pdf.startswith(b"%PDF-")
    assert service.failing_letters() == 0
    assert service.send_due() == 0


def test_outbox_folder_is_the_default_transport(
    service: DocumentsService, outbox_dir: Path
) -> None:
    service.apply_batch([plan(1), fraction(1, MONDAY)])
    [letter] = service.letters(PID, None, principal=PHYSICIAN, resource="t")
    service.approve_letter(letter.id, principal=PHYSICIAN, resource="t")
    assert service.send_due() == 1
    assert (outbox_dir / f"{letter.id}.pdf").read_bytes().startswith(b"%PDF-")
    meta = json.loads((outbox_dir / f"{letter.id}.json").read_text())
    assert meta["patient_id"] == PID and meta["approved_by"] == "olga"


def test_version_rows_follow_the_events_not_their_order(
    factory: sessionmaker[Session], clock: Clock, tmp_path: Path, base_settings: dict
) -> None:
    from services.documents.transport import OutboxFolder

    events = [plan(1), plan(2, refs=((1, "PREDECESSOR"),)), plan(3, refs=((1, "CONCURRENT"),))]
    service = make_service(factory, clock, OutboxFolder(tmp_path))
    for e in reversed(events):
        service.apply(e)
    with factory() as session:
        rows = {
            r.plan_uid: (r.number, r.predecessor_uid) for r in session.scalars(select(VersionRow))
        }
    assert rows == {uid(1): (1, None), uid(3): (1, None), uid(2): (2, uid(1))}


def test_a_plan_re_sent_as_a_qa_plan_is_retracted(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply_batch([plan(1), plan(2, refs=((1, "PREDECESSOR"),))])
    service.apply(plan(2, revision=2, sha="3", intent="VERIFICATION", refs=((1, "VERIFIED_PLAN"),)))
    assert set(history(service)) == {uid(1)}
    events = [
        e for e in published(factory, "rtops.documents.plan.versioned") if e["plan_uid"] == uid(2)
    ]
    assert [(e["revision"], e["removed"]) for e in events] == [(1, False), (2, True)]
    # Back as a treatment plan: a version again, the next revision.
    service.apply(plan(2, revision=3, sha="4", refs=((1, "PREDECESSOR"),)))
    events = [
        e for e in published(factory, "rtops.documents.plan.versioned") if e["plan_uid"] == uid(2)
    ]
    assert [(e["revision"], e["removed"]) for e in events][-1] == (3, False)
    assert history(service)[uid(2)]["version"] == 2


def test_a_note_signed_in_error_is_voided_once(
    service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    from shared.errors import Conflict, Forbidden

    service.apply(plan(1))
    course = history(service)[uid(1)]["course_id"]
    note = service.add_note(
        NoteIn(
            patient_id=PID,
            course_id=course,
            week="2026-W10",
            kind="management_note",
            author="Oncologist^Olga",
            signed_at=at("2026-03-04", "12:00"),
        ),
        principal=PHYSICIAN,
        resource="t",
    )
    with pytest.raises(Forbidden):
        service.void_note(note.id, principal=PHYSICIST, resource="t")
    voided = service.void_note(note.id, principal=PHYSICIAN, resource="t")
    assert (voided.revision, voided.voided) == (2, True)
    with pytest.raises(Conflict):
        service.void_note(note.id, principal=PHYSICIAN, resource="t")
    events = published(factory, "rtops.documents.note.signed")
    assert [(e["revision"], e["voided"]) for e in events] == [(1, False), (2, True)]
    service.apply(fraction(1, MONDAY))
    [c] = service.courses(PID, principal=PHYSICIAN, resource="t")
    assert c["weeks"][0]["missing"] == ["management_note", "physics_check"]
