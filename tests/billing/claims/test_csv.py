"""Claim lines as CSV: the good sample, every kind of bad row, and the round trip."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.billing.claims import ClaimError, ClaimLine, parse_claim_file, parse_csv, write_csv
from tests.billing.claims.builders import csv_claims, sample

HEADER = "claim_id,patient_id,service_date,cpt,modifiers,units\n"


def test_the_good_sample_parses_into_its_lines() -> None:
    parsed = parse_claim_file(sample("claims.csv"), "text/csv", "claims.csv")
    assert parsed.format == "csv" and parsed.errors == () and parsed.remittances == ()
    assert parsed.lines[0] == ClaimLine(
        "CLAIM0001", "TESTPAT001", date(2026, 1, 5), "77412", (), 1, line=2
    )
    assert [(x.cpt, x.modifiers, x.units, x.line) for x in parsed.lines[4:]] == [
        ("77263", (), 1, 6),
        ("77280", ("26", "59"), 1, 7),  # 26:59
        ("77300", ("26", "59"), 3, 8),  # 26 59
    ]


def test_the_bad_sample_reports_every_bad_row_with_its_line() -> None:
    parsed = parse_claim_file(sample("claims_bad.csv"), None, None)
    assert [x.line for x in parsed.lines] == [2]
    found = {(e.line, e.reason.split(":")[0]) for e in parsed.errors}
    assert found == {
        (3, "service_date"),
        (4, "cpt"),
        (5, "units"),
        (6, "units"),
        (7, "missing column(s) modifiers, units"),
        (9, "patient_id"),
        (9, "service_date"),
        (9, "cpt"),
        (9, "modifiers"),
        (9, "units"),
        (10, "modifiers"),
    }
    assert all(e.segment is None for e in parsed.errors)
    assert ClaimError(3, None, "service_date: '2026-13-05' is not a date (YYYY-MM-DD)") in (
        parsed.errors
    )


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("C1,P1,2026-01-05,77412,,1.0", "units: '1.0' is not a positive integer"),
        ("C1,P1,2026-01-05,77412,,+1", "units: '+1' is not a positive integer"),
        ("C1,P1,20260105,77412,,1", "service_date: '20260105' is not a date (YYYY-MM-DD)"),
        ("C1,P1,2026-02-30,77412,,1", "service_date: '2026-02-30' is not a date (YYYY-MM-DD)"),
        ("C1,P1,2026-01-05,774120,,1", "cpt: '774120' is not a CPT/HCPCS code"),
        ("C1,P1,2026-01-05,I7741,,1", "cpt: 'I7741' is not a CPT/HCPCS code"),
        ("C1,P1,2026-01-05,77412,2,1", "modifiers: modifier '2' is not 2 letters or digits"),
        ("C1,P1,2026-01-05,77412,,1,extra", "7 fields, header has 6"),
        (" ,P1,2026-01-05,77412,,1", "claim_id: empty"),
        ('C1,P1,2026-01-05,"77412,,1', "unreadable row"),
    ],
)
def test_a_bad_row_names_its_line_and_reason(row: str, reason: str) -> None:
    parsed = parse_csv(HEADER + "C0,P0,2026-01-05,77412,,1\n" + row + "\n")
    assert parsed.errors, row
    assert parsed.errors[0].line == 3
    assert parsed.errors[0].reason.startswith(reason)


@pytest.mark.parametrize(
    ("code", "ok"),
    [("77412", True), ("G6015", True), ("0394T", True), ("3341F", True), ("g6015", True)],
)
def test_cpt_and_hcpcs_shapes(code: str, ok: bool) -> None:
    parsed = parse_csv(HEADER + f"C1,P1,2026-01-05,{code},tc,1\n")
    assert parsed.ok is ok
    assert parsed.lines[0].cpt == code.upper() and parsed.lines[0].modifiers == ("TC",)


def test_columns_in_another_order_and_extra_columns() -> None:
    text = (
        "units,cpt,note,service_date,modifiers,patient_id,claim_id\n2,77427,x,2026-01-09,,P1,C1\n"
    )
    parsed = parse_csv(text)
    assert parsed.lines == (ClaimLine("C1", "P1", date(2026, 1, 9), "77427", (), 2, line=2),)


def test_a_header_without_a_column_rejects_the_file() -> None:
    parsed = parse_claim_file(b"claim_id,patient_id,cpt,units\nC1,P1,77412,1\n", None, None)
    assert parsed.format == "csv" and parsed.lines == ()
    assert parsed.errors == (
        ClaimError(
            1,
            None,
            "header: missing column(s) service_date, modifiers "
            "(expected claim_id,patient_id,service_date,cpt,modifiers,units)",
        ),
    )


def test_a_quoted_field_over_two_lines_keeps_the_rows_first_line() -> None:
    text = HEADER + '"C\n1",P1,2026-01-05,77412,,1\nC2,P1,2026-01-05,7741,,1\n'
    parsed = parse_csv(text)
    assert parsed.lines[0].line == 2 and parsed.lines[0].claim_id == "C\n1"
    assert [e.line for e in parsed.errors] == [4]


def test_a_byte_order_mark_and_crlf_are_read() -> None:
    content = "\ufeff".encode() + HEADER.replace("\n", "\r\n").encode()
    content += b"C1,P1,2026-01-05,77412,26,1\r\n"
    parsed = parse_claim_file(content, "text/csv; charset=utf-8-sig", None)
    assert parsed.ok and parsed.lines[0].modifiers == ("26",)


def test_a_large_file_parses() -> None:
    """Sanity, not a timing: a 5 MB file of 110,000 rows reads in one pass."""
    content = csv_claims(110_000)
    assert len(content) > 5_000_000
    parsed = parse_claim_file(content, "text/csv", "big.csv")
    assert parsed.ok and len(parsed.lines) == 110_000
    assert parsed.lines[-1].line == 110_001


ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=12,
).filter(lambda s: s == s.strip())
codes = st.one_of(
    st.from_regex(r"\A[0-9]{5}\Z"),
    st.from_regex(r"\A[ABCEGHJKLMPQRSTV][0-9]{4}\Z"),
    st.from_regex(r"\A[0-9]{4}[FT]\Z"),
)
modifiers = st.lists(st.from_regex(r"\A[0-9A-Z]{2}\Z"), max_size=4).map(tuple)
claim_lines = st.builds(
    ClaimLine,
    claim_id=ids,
    patient_id=ids,
    service_date=st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
    cpt=codes,
    modifiers=modifiers,
    units=st.integers(min_value=1, max_value=10_000),
)


@given(st.lists(claim_lines, max_size=30))
def test_csv_round_trips(lines: list[ClaimLine]) -> None:
    """write_csv then parse: the same lines, numbered from line 2 (ids may hold commas,
    quotes and any non-blank character)."""
    parsed = parse_claim_file(write_csv(lines).encode(), "text/csv", None)
    assert parsed.errors == ()
    assert [
        ClaimLine(x.claim_id, x.patient_id, x.service_date, x.cpt, x.modifiers, x.units)
        for x in parsed.lines
    ] == lines
    assert [x.line for x in parsed.lines] == list(range(2, len(lines) + 2))
