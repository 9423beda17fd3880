"""``POST /v1/claims`` and ``GET /v1/discrepancies`` against the real app and database: a
claim file is stored whole or not at all, and the discrepancy report reconciles the charges
billing derived with the claim lines imported (services.billing.domain.reconcile)."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.billing.service import BillingService
from services.billing.store import AuditLog, ClaimFileRow, ClaimLineRow, RemittanceRow
from tests.billing.conftest import Auth
from tests.billing.events import PID, assessed_event, weekdays
from tests.billing.test_api import problem, six_fractions
from tests.support import REPO

DATA = REPO / "tests" / "data" / "claims"
HEADER = "claim_id,patient_id,service_date,cpt,modifiers,units\r\n"
WINDOW = {"from": "2026-02-01", "to": "2026-04-01"}


def counts(factory: sessionmaker[Session]) -> tuple[int, int, int]:
    with factory() as session:
        return tuple(  # type: ignore[return-value]
            session.scalar(select(func.count()).select_from(t)) or 0
            for t in (ClaimFileRow, ClaimLineRow, RemittanceRow)
        )


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], content: bytes, name: str = "claims.csv"
) -> httpx.Response:
    return await client.post(
        "/v1/claims", files={"file": (name, content, "text/csv")}, headers=headers
    )


async def report(
    client: httpx.AsyncClient, headers: dict[str, str], **params: str
) -> list[dict[str, Any]]:
    response = await client.get("/v1/discrepancies", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


async def test_the_export_claimed_as_is_leaves_no_discrepancy(
    client: httpx.AsyncClient, service: BillingService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    six_fractions(service)
    exported = await client.get("/v1/charges/export.csv", headers=auth())
    response = await upload(client, auth(), exported.content)
    assert response.status_code == 201, response.text
    body = response.json()
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert (body["format"], body["lines"], body["patients"]) == ("csv", len(rows), 1)
    assert counts(factory) == (1, len(rows), 0)
    assert await report(client, auth(), **WINDOW) == []
    # The same bytes again are refused: claimed twice would be duplicates.
    problem(await upload(client, auth(), exported.content), 409)
    assert counts(factory)[0] == 1


async def test_every_kind_of_discrepancy_names_its_rule_and_citation(
    client: httpx.AsyncClient, service: BillingService, auth: Auth
) -> None:
    six_fractions(service)
    day1, day2 = (d.isoformat() for d in weekdays(2))
    service.apply(assessed_event(2, weekdays(2)[-1], revision=2, status="reviewed_late"))
    lines = [
        f"C1,{PID},{day1},77407,,1",  # matches
        f"C1,{PID},{day1},77407,,1",  # the same line again: duplicate
        f"C1,{PID},{day2},77387,26,1",  # the charge is on hold: unsupported
        f"C1,{PID},{day1},77385,,1",  # deleted from 2026
        f"C1,{PID},{day1},77999,,1",  # not in the rules
    ]
    assert (await upload(client, auth(), (HEADER + "\r\n".join(lines)).encode())).status_code == 201
    items = await report(client, auth(), patient_id=PID, **WINDOW)
    kinds = {(i["kind"], i["cpt"]) for i in items}
    assert {
        ("duplicate_charge", "77407"),
        ("unsupported_charge", "77387"),
        ("deleted_code", "77385"),
        ("unknown_code", "77999"),
        ("missing_charge", "77427"),  # earned, not claimed
    } <= kinds
    unsupported = next(i for i in items if i["kind"] == "unsupported_charge")
    assert "review_withdrawn" in unsupported["detail"]
    for item in items:
        assert {"kind", "patient_id", "cpt", "service_date", "rule", "citation"} <= set(item)
        assert item["patient_id"] == PID
    missing = next(i for i in items if (i["kind"], i["cpt"]) == ("missing_charge", "77427"))
    assert missing["rule"] and "CMS" in missing["citation"] and missing["charge_id"]


async def test_a_file_with_errors_is_a_problem_listing_them_and_nothing_is_stored(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    response = await upload(client, auth(), (DATA / "claims_bad.csv").read_bytes())
    body = problem(response, 422)
    assert body["format"] == "csv"
    lines = {e["line"] for e in body["errors"]}
    assert {3, 4, 5, 6, 7} <= lines and 2 not in lines  # line 2 is the good one
    assert all(e["reason"] for e in body["errors"])
    assert counts(factory) == (0, 0, 0)
    with factory() as session:
        assert not session.scalars(select(AuditLog)).all()


async def test_a_raw_body_and_an_835_are_accepted(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    raw = await client.post(
        "/v1/claims",
        content=(DATA / "claims.csv").read_bytes(),
        headers={**auth(), "Content-Type": "text/csv"},
    )
    assert raw.status_code == 201 and raw.json()["lines"] == 7
    remittance = await upload(client, auth(), (DATA / "835.x12").read_bytes(), "835.x12")
    assert remittance.status_code == 201, remittance.text
    assert remittance.json()["format"] == "x12-835"
    items = await report(client, auth(), patient_id="TESTPAT001")
    denied = [i for i in items if i["kind"] == "denied_line"]
    assert [(d["cpt"], d["service_date"]) for d in denied] == [("77387", "2026-01-05")]
    assert "CO-97" in denied[0]["detail"]
    # Nothing was derived for these patients: every claimed line is unsupported.
    assert {i["kind"] for i in items} >= {"unsupported_charge", "adjusted_line"}
    with factory() as session:
        writes = session.scalars(select(AuditLog.patient_id).where(AuditLog.action == "write"))
        assert {"TESTPAT001", "TESTPAT002", "TESTMBR0002"} <= set(writes)


async def test_an_empty_upload_or_a_missing_field_is_422(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    problem(await upload(client, auth(), b""), 422)
    missing = await client.post("/v1/claims", files={"other": ("x", b"y")}, headers=auth())
    assert "file" in problem(missing, 422)["detail"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/claims"), ("GET", "/v1/discrepancies")])
async def test_claims_are_for_billing_staff(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session], method: str, path: str
) -> None:
    content = (DATA / "claims.csv").read_bytes()
    problem(await client.request(method, path, content=content, headers=auth("physician")), 403)
    admin = await client.request(
        method, path, content=content, headers={**auth("admin"), "Content-Type": "text/csv"}
    )
    assert admin.status_code in (200, 201), admin.text
    assert counts(factory)[0] == (1 if method == "POST" else 0)


async def test_the_report_is_audited(
    client: httpx.AsyncClient, auth: Auth, factory: sessionmaker[Session]
) -> None:
    await client.post(
        "/v1/claims",
        content=(DATA / "claims.csv").read_bytes(),
        headers={**auth(), "Content-Type": "text/csv"},
    )
    await report(client, auth(user="bea"), patient_id="TESTPAT002")
    with factory() as session:
        reads = session.execute(
            select(AuditLog.user, AuditLog.resource, AuditLog.patient_id).where(
                AuditLog.action == "read"
            )
        ).all()
    assert [tuple(r) for r in reads] == [
        ("bea", "/v1/discrepancies?patient_id=TESTPAT002", "TESTPAT002")
    ]
