"""HL7 v2 DFT^P03 export of ready charges: built by position (``services.billing.export``),
read back by the project's own claim parser (``parse_claim_file``, hl7apy) to the same lines;
through the API with the CSV export's "ready, not exported, marked once" semantics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import httpx
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.billing.claims import parse_claim_file
from services.billing.export import MEDIA_TYPE, dft_p03, escape
from services.billing.service import BillingService
from services.billing.store import AuditLog, ChargeRow
from tests.billing.conftest import Auth
from tests.billing.events import MONDAY, PID, assessed_event, weekdays
from tests.billing.test_api import six_fractions
from tests.events import PLAN_UID

NY = ZoneInfo("America/New_York")
AT = datetime(2026, 3, 20, 12, 0, tzinfo=NY)


@dataclass(frozen=True)
class Row:
    id: str
    patient_id: str
    cpt: str
    modifiers: tuple[str, ...]
    units: int
    service_date: date


ROWS = [
    Row("course:1.2|77407|s-1|", "P-1", "77407", (), 1, MONDAY),
    Row("course:1.2|77387|s-1|26", "P-1", "77387", ("26",), 1, MONDAY),
    Row("course:1.2|77300|plan|", "P-1", "77300", (), 4, date(2026, 2, 23)),
    Row("course:9.9|77427|unit-1|26", "P-2", "77427", ("26",), 1, date(2026, 3, 6)),
    Row("course:9.9|77412|s-1|TC", "P-2", "77412", ("TC",), 1, MONDAY),
    Row("course:9.9|G6015|s-2|", "P-2", "G6015", (), 1, date(2025, 12, 1)),
    Row("course:9.9|77336|unit-1|26-TC", "P-2", "77336", ("26", "TC"), 1, MONDAY),
]


def segments(text: str) -> list[list[str]]:
    assert text.endswith("\r") and "\n" not in text
    return [s.split("|") for s in text.rstrip("\r").split("\r")]


def test_one_message_per_patient_one_ft1_per_charge() -> None:
    text = dft_p03(ROWS, at=AT, export_id="EXP1")
    segs = segments(text)
    assert [s[0] for s in segs] == [
        "BHS",
        *["MSH", "EVN", "PID", "PV1", "FT1", "FT1", "FT1"],
        *["MSH", "EVN", "PID", "PV1", "FT1", "FT1", "FT1", "FT1"],
        "BTS",
    ]
    assert segs[-1] == ["BTS", "2"]
    msh = [s for s in segs if s[0] == "MSH"]
    # MSH-n is index n-1 here (MSH-1 is the separator itself).
    assert [(m[8], m[9], m[10], m[11]) for m in msh] == [
        ("DFT^P03^DFT_P03", "EXP1000001", "P", "2.5"),
        ("DFT^P03^DFT_P03", "EXP1000002", "P", "2.5"),
    ]
    assert msh[0][6] == "20260320120000-0400"
    assert [s[3] for s in segs if s[0] == "PID"] == ["P-1", "P-2"]
    ft1 = [s for s in segs if s[0] == "FT1"]
    first = ft1[0]
    assert (first[1], first[4], first[6], first[7], first[10]) == (
        "1",
        "20260302",
        "CG",
        "77407^^C4",
        "1",
    )
    assert [f[26] if len(f) > 26 else "" for f in ft1] == ["", "26", "", "26", "TC", "", "26~TC"]
    assert ft1[2][10] == "4"
    assert ft1[5][7] == "G6015^^HCPCS"
    # The charge id has "|" in it: escaped, so every field after it stays in place.
    assert first[2] == "course:1.2\\F\\77407\\F\\s-1\\F\\"


def test_the_export_reads_back_as_the_same_claim_lines() -> None:
    text = dft_p03(ROWS, at=AT, export_id="RT")
    parsed = parse_claim_file(text.encode(), MEDIA_TYPE, "charges.hl7")
    assert parsed.format == "hl7" and parsed.errors == ()
    got = Counter(
        (line.patient_id, line.service_date, line.cpt, line.modifiers, line.units)
        for line in parsed.lines
    )
    want = Counter((r.patient_id, r.service_date, r.cpt, r.modifiers, r.units) for r in ROWS)
    assert got == want
    # The claim id is each message's control id (no PV1-19 visit number).
    assert {(line.patient_id, line.claim_id) for line in parsed.lines} == {
        ("P-1", "RT000001"),
        ("P-2", "RT000002"),
    }


@pytest.mark.parametrize("patient_id", ["P|1", "A^B", "x~y", "back\\slash", "a&b", "\\F\\"])
def test_a_patient_id_with_delimiters_reads_back_unchanged(patient_id: str) -> None:
    """HL7 v2.5 s. 2.7: the export escapes the delimiters, the claim reader unescapes them."""
    rows = [Row("course:1.2|77407|s-1|", patient_id, "77407", (), 1, MONDAY)]
    parsed = parse_claim_file(dft_p03(rows, at=AT, export_id="RT").encode(), MEDIA_TYPE, "x.hl7")
    assert parsed.errors == ()
    assert [line.patient_id for line in parsed.lines] == [patient_id]


def test_hl7apy_reads_every_message_whole() -> None:
    text = dft_p03(ROWS[:3], at=AT, export_id="X")
    body = "\r".join(
        s for s in text.split("\r") if s.startswith(("MSH", "EVN", "PID", "PV1", "FT1"))
    )
    message = parse_message(body, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    ft1 = message.children.get("FT1")
    assert [seg.ft1_7.ft1_7_1.to_er7() for seg in ft1] == ["77407", "77387", "77300"]
    assert ft1[1].ft1_26.to_er7() == "26"
    assert message.pid.pid_3.to_er7() == "P-1"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a|b", "a\\F\\b"),
        ("a^b&c~d", "a\\S\\b\\T\\c\\R\\d"),
        ("back\\slash", "back\\E\\slash"),
        ("two\r\nlines", "two\\X0D\\\\X0A\\lines"),
        ("plain-id 1.2.3", "plain-id 1.2.3"),
    ],
)
def test_text_is_escaped(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


def test_nothing_to_export_is_an_empty_batch() -> None:
    assert segments(dft_p03([], at=AT, export_id="E")) == [
        ["BHS", "^~\\&", "RTOPS", "RTOPS_BILLING", "", "", "20260320120000-0400", "", "", "", "E"],
        ["BTS", "0"],
    ]


def test_control_ids_fit_msh_10() -> None:
    with pytest.raises(ValueError, match="14"):
        dft_p03(ROWS, at=AT, export_id="X" * 15)
    with pytest.raises(ValueError, match="aware"):
        dft_p03(ROWS, at=datetime(2026, 3, 20, 12, 0), export_id="X")


# ---------------------------------------------------------------- GET /v1/charges/export.hl7


def audit(factory: sessionmaker[Session]) -> list[tuple[str, str, str, str | None]]:
    with factory() as session:
        rows = session.scalars(select(AuditLog).order_by(AuditLog.id)).all()
        return [(r.action, r.user, r.resource, r.patient_id) for r in rows]


async def test_the_api_exports_ready_charges_once_as_hl7(
    client: httpx.AsyncClient, service: BillingService, auth: Auth, factory: sessionmaker[Session]
) -> None:
    six_fractions(service)
    six_fractions(service, pid="BILL-002", plan_uid=f"{PLAN_UID}.2")
    service.apply(assessed_event(2, weekdays(2)[-1], revision=2, status="reviewed_late"))
    response = await client.get("/v1/charges/export.hl7", headers=auth(user="bea"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(MEDIA_TYPE)
    assert 'filename="charges-' in response.headers["content-disposition"]
    parsed = parse_claim_file(response.content, response.headers["content-type"], None)
    assert parsed.errors == ()
    with factory() as session:
        ready = session.scalars(select(ChargeRow).where(ChargeRow.status == "ready")).all()
        held = session.scalars(select(ChargeRow).where(ChargeRow.status == "hold")).all()
        assert held and all(r.exported for r in ready) and not any(r.exported for r in held)
        want = Counter(
            (r.patient_id, r.service_date, r.cpt, tuple(r.modifiers), r.units) for r in ready
        )
    got = Counter(
        (line.patient_id, line.service_date, line.cpt, line.modifiers, line.units)
        for line in parsed.lines
    )
    assert got == want
    assert response.text.count("MSH|") == 2  # one message per patient
    assert sorted(a[3] or "" for a in audit(factory)) == [PID, "BILL-002"]
    assert {a[:3] for a in audit(factory)} == {("export", "bea", "/v1/charges/export.hl7")}
    # Exported once, whichever format asks next.
    again = await client.get("/v1/charges/export.hl7", headers=auth())
    assert again.text.rstrip("\r").split("\r")[-1] == "BTS|0"
    csv_again = await client.get("/v1/charges/export.csv", headers=auth())
    assert len(csv_again.text.strip().splitlines()) == 1


async def test_the_hl7_export_filters_by_patient(
    client: httpx.AsyncClient, service: BillingService, auth: Auth
) -> None:
    six_fractions(service)
    six_fractions(service, pid="BILL-002", plan_uid=f"{PLAN_UID}.2")
    response = await client.get(
        "/v1/charges/export.hl7", params={"patient_id": "BILL-002"}, headers=auth()
    )
    parsed = parse_claim_file(response.content, None, None)
    assert {line.patient_id for line in parsed.lines} == {"BILL-002"}


@pytest.mark.parametrize("role", ["physician", "therapist"])
async def test_the_hl7_export_is_for_billing_staff(
    client: httpx.AsyncClient,
    service: BillingService,
    auth: Auth,
    factory: sessionmaker[Session],
    role: str,
) -> None:
    six_fractions(service)
    response = await client.get("/v1/charges/export.hl7", headers=auth(role))
    assert response.status_code == 403
    assert audit(factory) == []
    assert (await client.get("/v1/charges/export.hl7")).status_code == 401
