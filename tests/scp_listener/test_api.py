"""The SCP's REST side with httpx against the running app: auth, filters, paging, audit."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import select

from services.scp_listener.app import SERVICE
from services.scp_listener.store import AuditLog
from shared.auth import issue_dev_token
from shared.db import make_engine, session_factory
from tests import dicom_factories as f
from tests.support import RunningScp, pynetdicom_store


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
