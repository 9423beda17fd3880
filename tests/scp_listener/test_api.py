"""The SCP's REST side with httpx against the running app: auth, filters, paging, audit."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from services.scp_listener.app import SERVICE
from services.scp_listener.store import AuditLog
from shared.auth import issue_dev_token
from shared.db import make_engine, session_factory
from tests import dicom_factories as f
from tests.support import RunningScp, await_events, pynetdicom_store


def token(scp: RunningScp, role: str, user: str = "pat.physicist") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_dev_token(scp.settings, user=user, roles=[role])}"}


def audit_rows(scp: RunningScp) -> list[AuditLog]:
    engine = make_engine(scp.settings, SERVICE)
    try:
        with session_factory(engine)() as session:
            return list(session.scalars(select(AuditLog).order_by(AuditLog.id)))
    finally:
        engine.dispose()


def test_objects_listing_auth_paging_and_audit(scp: RunningScp, tmp_path: Path) -> None:
    other = f.PatientSpec(patient_id="RTOPS-TEST-002", name="Phantom^Head")
    paths = [
        f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=i), tmp_path / f"{i}.dcm")
        for i in range(1, 4)
    ]
    paths.append(f.write(f.treatment_record(plan_uid="1.2.4", patient=other), tmp_path / "o.dcm"))
    assert pynetdicom_store(scp.dicom_port, paths) == [0] * 4
    url = f"{scp.http}/v1/objects"

    assert httpx.get(url).status_code == 401
    assert httpx.get(url).headers["content-type"] == "application/problem+json"
    assert httpx.get(url, headers={"Authorization": "Bearer nonsense"}).status_code == 401
    forbidden = httpx.get(url, headers=token(scp, "billing"))
    assert forbidden.status_code == 403 and "physicist" in forbidden.json()["detail"]

    first = httpx.get(
        url, params={"patient_id": "RTOPS-TEST-001", "limit": 2}, headers=token(scp, "physicist")
    )
    assert first.status_code == 200
    body = first.json()
    assert len(body["items"]) == 2 and body["next_cursor"]
    rest = httpx.get(
        url,
        params={"patient_id": "RTOPS-TEST-001", "limit": 2, "cursor": body["next_cursor"]},
        headers=token(scp, "physicist"),
    ).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    uids = {i["sop_instance_uid"] for i in body["items"] + rest["items"]}
    assert len(uids) == 3

    rows = audit_rows(scp)
    assert [(r.user, r.action, r.patient_id) for r in rows] == [
        ("pat.physicist", "read", "RTOPS-TEST-001"),
        ("pat.physicist", "read", "RTOPS-TEST-001"),
    ]
    assert "patient_id=RTOPS-TEST-001" in rows[0].resource


def test_objects_listing_rejects_bad_parameters(scp: RunningScp) -> None:
    headers = token(scp, "admin")
    bad_limit = httpx.get(f"{scp.http}/v1/objects", params={"limit": 0}, headers=headers)
    assert bad_limit.status_code == 422 and bad_limit.json()["errors"]
    bad_cursor = httpx.get(f"{scp.http}/v1/objects", params={"cursor": "zz!"}, headers=headers)
    assert bad_cursor.status_code == 422
    bad_date = httpx.get(f"{scp.http}/v1/objects", params={"from": "yesterday"}, headers=headers)
    assert bad_date.status_code == 422
    assert audit_rows(scp) == []


def _stored_bytes(scp: RunningScp, key: str) -> bytes:
    return (scp.settings.object_store() / key).read_bytes()


def test_encapsulated_pdf_event_and_content(scp: RunningScp, tmp_path: Path) -> None:
    pdf = b"%PDF-1.4\n% plan report\n1 0 obj << >> endobj\n%%EOF"
    report = f.encapsulated_pdf(document=pdf, plan_uid="1.2.3.4", title="Plan report PROST")
    path = f.write(report, tmp_path / "report.dcm")
    assert pynetdicom_store(scp.dicom_port, [path], calling="TPS1") == [0]
    (event,) = await_events(scp, 1)
    assert event.type == "rtops.dicom.document.received"
    doc = event.data
    assert (doc.title, doc.mime_type, doc.referenced_plan_uid) == (  # type: ignore[attr-defined]
        "Plan report PROST",
        "application/pdf",
        "1.2.3.4",
    )
    assert doc.source.ae_title == "TPS1"  # type: ignore[attr-defined]
    key = doc.object.storage_key  # type: ignore[attr-defined]
    url = f"{scp.http}/v1/objects/{report.SOPInstanceUID}/content"

    dicom = httpx.get(url, headers=token(scp, "physician", "dr.olga"))
    assert dicom.status_code == 200
    assert dicom.headers["content-type"] == "application/dicom"
    assert dicom.content == _stored_bytes(scp, key)
    as_pdf = httpx.get(url, params={"format": "pdf"}, headers=token(scp, "dosimetrist"))
    assert as_pdf.status_code == 200
    assert as_pdf.headers["content-type"] == "application/pdf"
    assert as_pdf.content == pdf  # the pad byte of the odd-length document is gone

    assert httpx.get(url).status_code == 401
    for role in ("therapist", "billing"):
        assert httpx.get(url, headers=token(scp, role)).status_code == 403
    rows = audit_rows(scp)
    assert [(r.user, r.action, r.patient_id) for r in rows] == [
        ("dr.olga", "read", "RTOPS-TEST-001"),
        ("pat.physicist", "read", "RTOPS-TEST-001"),
    ]
    assert rows[1].resource.endswith("/content?format=pdf")


def test_content_of_revisions_and_unknown_objects(scp: RunningScp, tmp_path: Path) -> None:
    record = f.treatment_record(plan_uid="1.2.3")
    first = f.write(record, tmp_path / "a.dcm")
    record.OperatorsName = "Other^Therapist"
    second = f.write(record, tmp_path / "b.dcm")
    assert pynetdicom_store(scp.dicom_port, [first, second]) == [0, 0]
    events = await_events(scp, 2)
    keys = [e.data.object.storage_key for e in events]  # type: ignore[attr-defined]
    url = f"{scp.http}/v1/objects/{record.SOPInstanceUID}/content"
    headers = token(scp, "physicist")

    latest = httpx.get(url, headers=headers)
    assert latest.status_code == 200 and latest.content == _stored_bytes(scp, keys[1])
    earlier = httpx.get(url, params={"revision": 1}, headers=headers)
    assert earlier.status_code == 200 and earlier.content == _stored_bytes(scp, keys[0])

    missing_revision = httpx.get(url, params={"revision": 3}, headers=headers)
    assert missing_revision.status_code == 404
    unknown = httpx.get(f"{scp.http}/v1/objects/1.2.999/content", headers=headers)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert "1.2.999" in unknown.json()["detail"]
    not_a_pdf = httpx.get(url, params={"format": "pdf"}, headers=headers)
    assert not_a_pdf.status_code == 422
    assert len(audit_rows(scp)) == 2  # only the two reads that returned content


async def test_the_rest_app_runs_without_dicom_or_nats(
    base_settings: dict[str, object], tmp_path: Path
) -> None:
    """The runtime bundle lets a REST test build the app alone: objects ingested straight
    through the use case, listed page by page over httpx, no listener, no NATS."""
    from services.scp_listener.app import create_app
    from shared.db import migrate
    from shared.events import SourceDevice
    from tests.support import MIGRATIONS, drop_test_schema, scp_settings

    settings = scp_settings(base_settings)
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    engine.dispose()
    app = create_app(settings, background=False)
    try:
        linac = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1")
        for i in range(1, 6):
            path = f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=i), tmp_path / "x")
            outcome = app.state.ingestor.ingest(
                path,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.481.4",
                sop_instance_uid="",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                source=linac,
            )
            assert outcome.created
        auth = {
            "Authorization": f"Bearer {issue_dev_token(settings, user='u', roles=['therapist'])}"
        }
        transport = httpx.ASGITransport(app=app)
        seen: list[str] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://scp") as client:
            cursor = None
            while True:
                params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
                body = (await client.get("/v1/objects", params=params, headers=auth)).json()
                seen += [o["sop_instance_uid"] for o in body["items"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            bad = await client.get("/v1/objects", params={"cursor": "e30="}, headers=auth)
            # A date is midnight in the clinic's zone (it answered 500 as a naive time once).
            today = datetime.now(ZoneInfo(settings.clinic_timezone)).date().isoformat()
            since = await client.get("/v1/objects", params={"from": today}, headers=auth)
            misspelt = await client.get("/v1/objects", params={"patient": "X"}, headers=auth)
            ready = await client.get("/readyz")
        assert len(seen) == len(set(seen)) == 5
        assert bad.status_code == 422
        assert since.status_code == 200 and len(since.json()["items"]) == 5
        assert misspelt.status_code == 422 and "patient_id" in misspelt.text
        assert bad.headers["content-type"] == "application/problem+json"
        assert ready.json()["checks"] == {"database": "ok", "nats": "fail"}
        assert not hasattr(app.state, "dicom_server")
    finally:
        app.state.runtime.close()
        drop_test_schema(settings)
