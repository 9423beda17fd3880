"""The documents REST API over httpx on the real app: plans with their checklists, uploads
(type by content, size, unknown plan, a PDF renamed .txt), document content, notes, regrouping,
letters; every read audited; bad input a problem+json that changes nothing."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pypdf
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.documents.service import DocumentsService, NoteIn
from services.documents.store import AuditLog, DocumentRow, FileRow
from shared.auth import Principal
from shared.errors import Forbidden
from tests.documents.conftest import Auth, make_pdf
from tests.documents.events import MONDAY, PID, fraction, plan, uid

pytestmark = pytest.mark.asyncio


def count(factory: sessionmaker[Session], model: type) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


async def upload(
    client: httpx.AsyncClient,
    auth: Auth,
    content: bytes,
    *,
    name: str = "wd.pdf",
    plan_uid: str = uid(1),
    doc_type: str = "written_directive",
    **extra: str,
) -> httpx.Response:
    return await client.post(
        "/v1/documents",
        headers=auth(),
        data={
            "plan_uid": plan_uid,
            "doc_type": doc_type,
            "author": "Oncologist^Olga",
            "signed_by": "Oncologist^Olga",
            "signed_at": "2026-02-27T10:00:00-05:00",
            **extra,
        },
        files={"file": (name, content, "application/octet-stream")},
    )


async def test_plans_list_each_version_with_its_checklist(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService, factory: sessionmaker[Session]
) -> None:
    service.apply_batch([plan(1, approved=False), plan(2, refs=((1, "PREDECESSOR"),))])
    response = await client.get("/v1/plans", params={"patient_id": PID}, headers=auth())
    assert response.status_code == 200
    body = response.json()
    assert [(p["plan_uid"], p["version"], p["predecessor_uid"]) for p in body] == [
        (uid(1), 1, None),
        (uid(2), 2, uid(1)),
    ]
    assert body[0]["approval_status"] == "UNAPPROVED" and not body[0]["treated"]
    assert body[0]["missing_documents"] == [
        "written_directive",
        "dosimetry_plan_report",
        "physics_plan_qa",
        "patient_qa_measurement",
        "plan_approval",
    ]
    assert "plan_approval" not in body[1]["missing_documents"]  # approved in DICOM
    assert body[1]["documents_complete"] is False
    with factory() as session:
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "read")).all()
    assert [(a.user, a.patient_id) for a in audit] == [("pat", PID)]


async def test_upload_files_a_pdf_and_serves_it_back(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService
) -> None:
    service.apply(plan(1))
    pdf = make_pdf("directive")
    response = await upload(client, auth, pdf)
    assert response.status_code == 201, response.text
    doc = response.json()
    assert (doc["doc_type"], doc["revision"], doc["source"]) == ("written_directive", 1, "upload")
    again = await upload(client, auth, make_pdf("directive, corrected"))
    assert again.json()["revision"] == 2
    content = await client.get(f"/v1/documents/{doc['id']}/content", headers=auth())
    assert content.status_code == 200 and content.content == pdf
    assert content.headers["content-type"] == "application/pdf"
    [p] = (await client.get("/v1/plans", params={"patient_id": PID}, headers=auth())).json()
    assert "written_directive" not in p["missing_documents"]
    assert [d["revision"] for d in p["documents"]] == [1, 2]


async def test_a_pdf_renamed_to_txt_is_a_pdf(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService
) -> None:
    service.apply(plan(1))
    response = await upload(client, auth, make_pdf(), name="report.txt")
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("content", "name", "status"),
    [
        (b"just text, named like a PDF", "report.pdf", 415),
        (b"\x89PNG\r\n\x1a\n" + b"0" * 100, "scan.pdf", 415),
        (b"%PDF-1.7\n" + b"0" * (300 * 1024), "huge.pdf", 413),
    ],
)
async def test_wrong_type_or_oversize_is_refused_and_nothing_is_kept(
    client: httpx.AsyncClient,
    auth: Auth,
    service: DocumentsService,
    factory: sessionmaker[Session],
    content: bytes,
    name: str,
    status: int,
) -> None:
    service.apply(plan(1))
    response = await upload(client, auth, content, name=name)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert (count(factory, DocumentRow), count(factory, FileRow)) == (0, 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"plan_uid": "1.2.3.404"}, "unknown plan_uid"),
        ({"doc_type": "selfie"}, "doc_type"),
        ({"doc_type": "management_note"}, "week"),
    ],
)
async def test_bad_uploads_are_422_and_change_nothing(
    client: httpx.AsyncClient,
    auth: Auth,
    service: DocumentsService,
    factory: sessionmaker[Session],
    fields: dict[str, str],
    message: str,
) -> None:
    service.apply(plan(1))
    response = await upload(client, auth, make_pdf(), **fields)
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert (count(factory, DocumentRow), count(factory, FileRow)) == (0, 0)


async def test_uploads_need_a_documenting_role(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService
) -> None:
    service.apply(plan(1))
    response = await client.post(
        "/v1/documents",
        headers=auth("billing"),
        data={"plan_uid": uid(1), "doc_type": "other"},
        files={"file": ("a.pdf", make_pdf(), "application/pdf")},
    )
    assert response.status_code == 403
    assert (await client.get("/v1/plans", params={"patient_id": PID})).status_code == 401


async def test_notes_by_role_and_course(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService
) -> None:
    service.apply(plan(1))
    [p] = (await client.get("/v1/plans", params={"patient_id": PID}, headers=auth())).json()
    note = {
        "patient_id": PID,
        "course_id": p["course_id"],
        "week": "2026-W10",
        "kind": "management_note",
        "author": "Oncologist^Olga",
        "signed_at": "2026-03-04T12:00:00-05:00",
        "text": "tolerating well",
    }
    ok = await client.post("/v1/notes", json=note, headers=auth("physician", "olga"))
    assert ok.status_code == 201 and ok.json()["course_id"] == p["course_id"]
    wrong_role = await client.post("/v1/notes", json=note, headers=auth("physicist"))
    assert wrong_role.status_code == 403
    bad_course = await client.post(
        "/v1/notes", json={**note, "course_id": "course:nope"}, headers=auth("physician")
    )
    assert bad_course.status_code == 422
    bad_week = await client.post(
        "/v1/notes", json={**note, "week": "2026-W60"}, headers=auth("physician")
    )
    assert bad_week.status_code == 422


async def test_a_mapped_physician_signs_notes_only_as_herself(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService
) -> None:
    """Identity comes from the token's subject (issue 15): a physician mapped to her DICOM
    names cannot sign a management note as another physician by naming her in the body."""
    service.apply(plan(1))
    [p] = (await client.get("/v1/plans", params={"patient_id": PID}, headers=auth())).json()
    mallory = Principal(user="mallory", roles=frozenset({"physician"}), names=("Doctor^Mal",))
    note = NoteIn(
        patient_id=PID,
        course_id=p["course_id"],
        week="2026-W10",
        kind="management_note",
        author="Oncologist^Olga",
        signed_at=datetime(2026, 3, 4, 17, tzinfo=UTC),
    )
    with pytest.raises(Forbidden):
        service.add_note(note, principal=mallory, resource="/v1/notes")
    own = service.add_note(
        replace(note, author="Doctor^Mal"), principal=mallory, resource="/v1/notes"
    )
    assert own.author == "Doctor^Mal"


async def test_regroup_and_letters_over_http(
    client: httpx.AsyncClient, auth: Auth, service: DocumentsService
) -> None:
    service.apply_batch([plan(1), fraction(1, MONDAY)])
    regrouped = await client.post(
        "/v1/courses/regroup", json={"plan_uids": [uid(1)], "reason": "check"}, headers=auth()
    )
    assert regrouped.status_code == 201 and regrouped.json()["sequence"] == 1
    letters = await client.get(
        "/v1/letters", params={"patient_id": PID, "status": "draft"}, headers=auth("physician")
    )
    [letter] = letters.json()
    pdf = await client.get(f"/v1/letters/{letter['id']}/pdf", headers=auth("physician"))
    text = pypdf.PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert "Dr. Rita Referrer" in text
    not_physician = await client.post(f"/v1/letters/{letter['id']}/approve", headers=auth())
    assert not_physician.status_code == 403
    approved = await client.post(
        f"/v1/letters/{letter['id']}/approve", headers=auth("physician", "olga")
    )
    assert approved.status_code == 200
    assert approved.json()["status"] == "sent"  # the outbox folder took it at once
    again = await client.post(
        f"/v1/letters/{letter['id']}/approve", headers=auth("physician", "olga")
    )
    assert again.status_code == 409
    missing = await client.get("/v1/letters/nope/pdf", headers=auth("physician"))
    assert missing.status_code == 404


async def test_metrics_show_failing_letters(client: httpx.AsyncClient) -> None:
    metrics = await client.get("/metrics")
    assert "rtops_documents_letters_failing 0.0" in metrics.text
