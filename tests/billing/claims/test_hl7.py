"""Claim lines as HL7 v2 DFT^P03: FT1 fields, batches, separators and bad messages."""

from __future__ import annotations

from datetime import date

import pytest

from services.billing.claims import ClaimError, ClaimLine, parse_claim_file, parse_hl7
from tests.billing.claims.builders import hl7_dft, sample

MSH = "MSH|^~\\&|RTOPS|TESTCLINIC|BILLING|TESTCLINIC|20260110120000||DFT^P03|MSG9|P|2.5"
PID = "PID|1||TESTPAT009^^^RTOPS^MR||TESTPATIENT^ECHO"


def ft1(date_: str = "20260105", code: str = "77412", qty: str = "1", mods: str = "") -> str:
    fields = ["FT1", "1", "", "", date_, "", "CG", f"{code}^^CPT4", "", "", qty]
    fields += [""] * 15 + [mods]
    return "|".join(fields)


def test_the_sample_parses_two_messages() -> None:
    parsed = parse_claim_file(sample("dft_p03.hl7"), "application/hl7-v2", None)
    assert parsed.format == "hl7" and parsed.errors == ()
    assert parsed.lines == (
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 5), "77412", (), 1, line=5),
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 5), "77387", ("26",), 1, line=6),
        # FT1-7 holds a chargemaster code: the CPT comes from FT1-25
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 9), "77427", (), 1, line=7),
        # no PV1: the claim id is MSH-10; FT1-26 repeats; FT1-10 "3.0"
        ClaimLine("MSG0002", "TESTPAT002", date(2026, 1, 2), "77280", ("26", "59"), 1, line=11),
        ClaimLine("MSG0002", "TESTPAT002", date(2026, 1, 2), "77300", (), 3, line=12),
    )


def test_a_batch_with_cr_separators() -> None:
    parsed = parse_claim_file(sample("dft_p03_batch.hl7"), None, None)
    assert parsed.errors == ()
    assert [(x.claim_id, x.service_date, x.line) for x in parsed.lines] == [
        ("CLAIM0101", date(2026, 1, 12), 6),
        ("CLAIM0102", date(2026, 1, 13), 11),
    ]


def test_a_batch_whose_trailer_miscounts() -> None:
    content = sample("dft_p03_batch.hl7").replace(b"BTS|2", b"BTS|3")
    parsed = parse_claim_file(content, None, None)
    assert parsed.errors == (ClaimError(12, "BTS", "BTS-1 says 3 messages, the batch has 2"),)


def test_crlf_separators_count_lines_like_an_editor() -> None:
    text = "\r\n".join([MSH, PID, "", ft1(), ft1(code="77387", mods="26")]) + "\r\n"
    parsed = parse_hl7(text)
    assert parsed.errors == ()
    assert [(x.cpt, x.line, x.claim_id) for x in parsed.lines] == [
        ("77412", 4, "MSG9"),
        ("77387", 5, "MSG9"),
    ]


def test_a_message_without_ft1() -> None:
    parsed = parse_claim_file(sample("dft_no_ft1.hl7"), None, None)
    assert parsed.lines == ()
    assert parsed.errors == (ClaimError(1, "MSH", "message MSG0201 has no FT1 segment"),)


def test_every_bad_ft1_is_reported_and_the_good_ones_still_read() -> None:
    text = "\r".join(
        [
            MSH,
            PID,
            ft1(),
            ft1(date_="20261305"),
            ft1(code="CDM01"),
            ft1(qty="1.5"),
            ft1(qty="0"),
            ft1(mods="26~TCX"),
            ft1().replace("|CG|", "|CD|"),
        ]
    )
    parsed = parse_hl7(text)
    assert [x.line for x in parsed.lines] == [3]
    assert [(e.line, e.segment, e.reason.split(" ")[0]) for e in parsed.errors] == [
        (4, "FT1", "FT1-4"),
        (5, "FT1", "FT1-7"),
        (6, "FT1", "FT1-10"),
        (7, "FT1", "FT1-10"),
        (8, "FT1", "FT1-26:"),
        (9, "FT1", "FT1-6"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            MSH.replace("DFT^P03", "ADT^A01") + "\r" + PID,
            ClaimError(1, "MSH", "MSH-9 'ADT^A01': not a DFT^P03 message"),
        ),
        (
            MSH.replace("|2.5", "|9.9") + "\r" + PID + "\r" + ft1(),
            ClaimError(1, "MSH", "unreadable HL7 message: The version 9.9 is not supported"),
        ),
        (
            MSH + "\r" + ft1(),
            ClaimError(2, "FT1", "FT1 before any PID: no patient"),
        ),
        (
            PID + "\r" + MSH + "\r" + PID + "\r" + ft1(),
            ClaimError(1, "PID", "PID segment outside a message (no MSH)"),
        ),
        (
            MSH + "\rPID|1||\r" + ft1(),
            ClaimError(2, "PID", "PID-3 patient identifier is empty"),
        ),
    ],
)
def test_bad_messages(text: str, expected: ClaimError) -> None:
    assert expected in parse_hl7(text).errors


def test_a_large_batch_parses() -> None:
    """Sanity, not a timing: 5 MB, 1,000 messages of 100 charges."""
    content = hl7_dft(1000, 100)
    assert len(content) > 5_000_000
    parsed = parse_claim_file(content, None, None)
    assert parsed.ok and len(parsed.lines) == 100_000
