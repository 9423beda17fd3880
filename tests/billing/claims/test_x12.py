"""X12 5010 837P, 837I and 835: the samples, pyx12's validation, and bad interchanges."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from services.billing.claims import (
    Adjustment,
    ClaimError,
    ClaimLine,
    RemittanceLine,
    parse_claim_file,
    parse_x12,
)
from services.billing.claims.x12 import validate_with_pyx12
from services.billing.claims.x12_segments import tokenize
from services.billing.domain import load_bundled_rules, reconcile
from tests.billing.claims.builders import sample, x12_837p


def text(name: str) -> str:
    return sample(name).decode()


@pytest.mark.parametrize("name", ["837p.x12", "837i.x12", "835.x12"])
def test_pyx12_accepts_the_samples(name: str) -> None:
    errors: list[ClaimError] = []
    cut = tokenize(text(name), errors)
    assert cut is not None and errors == []
    assert validate_with_pyx12(text(name), cut[1]) == []


def test_837p_sample() -> None:
    parsed = parse_claim_file(sample("837p.x12"), "application/edi-x12", "claims.837")
    assert parsed.format == "x12-837p" and parsed.errors == () and parsed.remittances == ()
    assert parsed.lines == (
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 5), "77412", (), 1, line=24),
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 5), "77387", ("26",), 1, line=27),
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 9), "77427", (), 1, line=30),
        ClaimLine("CLAIM0001", "TESTPAT001", date(2026, 1, 9), "77336", (), 1, line=33),
        # a dependent (2000C) without REF*EA: 5010 leaves NM1*QC NM109 unused, so the
        # subscriber's member id (2010BA NM109) stands for the patient
        ClaimLine("CLAIM0002", "TESTMBR0002", date(2026, 1, 2), "77263", (), 1, line=51),
        ClaimLine("CLAIM0002", "TESTMBR0002", date(2026, 1, 2), "77280", ("26", "59"), 1, line=54),
        # RD8 20260102-20260103: the first day
        ClaimLine("CLAIM0002", "TESTMBR0002", date(2026, 1, 2), "77300", ("26", "59"), 3, line=57),
    )


def test_837i_sample() -> None:
    parsed = parse_claim_file(sample("837i.x12"), None, None)
    assert parsed.format == "x12-837i" and parsed.errors == ()
    assert parsed.lines == (
        ClaimLine("CLAIM1001", "TESTPAT001", date(2026, 1, 5), "77412", (), 1, line=27),
        ClaimLine("CLAIM1001", "TESTPAT001", date(2026, 1, 6), "77412", (), 1, line=30),
        # LX*3 is revenue code 0250 alone: skipped. CLAIM1002's lines have no DTP*472 and take
        # the one-day statement period (DTP*434).
        ClaimLine("CLAIM1002", "TESTPAT001", date(2026, 1, 12), "77412", (), 1, line=42),
        ClaimLine("CLAIM1002", "TESTPAT001", date(2026, 1, 12), "77336", (), 1, line=44),
    )


def test_837i_line_without_a_date_in_a_longer_statement_period() -> None:
    content = text("837i.x12").replace(
        "DTP*434*RD8*20260112-20260112", "DTP*434*RD8*20260112-20260113"
    )
    parsed = parse_claim_file(content.encode(), None, None)
    reasons = {(e.line, e.reason) for e in parsed.errors}
    assert (
        41,
        "service line without DTP*472 service date (and a statement period of more than one day)",
    ) in reasons


def test_835_sample_keeps_denied_and_adjusted_lines() -> None:
    parsed = parse_claim_file(sample("835.x12"), None, "remit.835")
    assert parsed.format == "x12-835" and parsed.errors == () and parsed.lines == ()
    by_code = {r.cpt: r for r in parsed.remittances}
    assert set(by_code) == {"77412", "77387", "77427", "77263", "77280"}  # 77336 paid in full
    assert by_code["77387"] == RemittanceLine(
        claim_id="CLAIM0001",
        claim_status="1",
        patient_id="TESTPAT001",  # REF*EA before NM1*QC
        cpt="77387",
        modifiers=("26",),
        service_date=date(2026, 1, 5),
        charged_amount=Decimal("250"),
        paid_amount=Decimal("0"),
        paid_units=0,
        billed_units=0,
        adjustments=(Adjustment("CO", "97", Decimal("250")),),
        remark_codes=("M80",),
        payer_claim_id="PAYERCLM0001",
        line=20,
    )
    assert by_code["77387"].denied and not by_code["77412"].denied
    assert by_code["77412"].adjustments == (Adjustment("CO", "45", Decimal("50")),)
    assert by_code["77427"].adjustments == (Adjustment("PR", "2", Decimal("50")),)
    denied_claim = by_code["77280"]
    assert denied_claim.denied and denied_claim.claim_status == "4"
    assert denied_claim.patient_id == "TESTMBR0002" and denied_claim.modifiers == ("26", "59")
    assert denied_claim.claim_adjustments == (Adjustment("CO", "50", Decimal("700")),)


@pytest.mark.parametrize("validate", [True, False])
def test_wrong_se_count(validate: bool) -> None:
    content = text("837p.x12").replace("SE*57*0001", "SE*50*0001")
    parsed = parse_x12(content, validate=validate)
    assert [(e.line, e.segment) for e in parsed.errors] == [(59, "SE")]
    assert "50" in parsed.errors[0].reason and "57" in parsed.errors[0].reason


@pytest.mark.parametrize("validate", [True, False])
def test_a_truncated_interchange(validate: bool) -> None:
    content = text("837p.x12")
    content = content[: content.index("LX*3")]
    parsed = parse_x12(content, validate=validate)
    assert {(e.line, e.segment) for e in parsed.errors} == {(1, "ISA"), (2, "GS"), (3, "ST")}
    assert all("missing" in e.reason or "no " in e.reason for e in parsed.errors)


def test_one_line_and_other_delimiters_read_the_same() -> None:
    expected = parse_claim_file(sample("837p.x12"), None, None).lines
    one_line = text("837p.x12").replace("~\n", "~")
    assert parse_claim_file(one_line.encode(), None, None).lines == expected
    other = text("837p.x12").translate(str.maketrans("*:~", "|>!"))
    parsed = parse_claim_file(other.encode(), None, None)
    assert parsed.errors == () and parsed.lines == expected


def test_every_error_of_both_passes_is_reported() -> None:
    content = (
        text("837p.x12")
        .replace("SV1*HC:77412*250*UN*1***1", "SV1*HC:7741X*250*MJ*1.5***1")  # ours: 3
        .replace("DTP*472*D8*20260109", "DTP*472*D8*20261309", 1)  # pyx12 and ours
        .replace("SE*57*0001", "SE*56*0001")  # pyx12
    )
    parsed = parse_x12(content)
    found = {(e.line, e.segment, e.reason) for e in parsed.errors}
    assert {(line, seg) for line, seg, _ in found} == {(24, "SV1"), (31, "DTP"), (59, "SE")}
    sv1 = sorted(reason for line, _, reason in found if line == 24)
    assert sv1 == [
        "SV101-2: '7741X' is not a CPT/HCPCS code (5 characters: 77412, G6015, 0394T)",
        "SV103 'MJ': units must be counted as UN",
        "SV104 '1.5' is not a positive whole number",
    ]
    dtp = sorted(reason for line, _, reason in found if line == 31)
    assert len(dtp) == 2 and "invalid date" in dtp[1]  # pyx12's finding and ours
    assert dtp[0] == "DTP*472 service date '20261309' is not a date"
    # The lines that were good are still read (the caller rejects the file as a whole).
    assert [x.line for x in parsed.lines] == [27, 33, 51, 54, 57]


def test_a_missing_required_segment_is_pyx12s_finding() -> None:
    content = text("837p.x12").replace("HI*ABK:C61~\n", "").replace("SE*57*", "SE*56*")
    parsed = parse_x12(content)
    assert parsed.errors and all(e.segment for e in parsed.errors)
    assert any("HI" in e.reason or "Health Care Diagnosis" in e.reason for e in parsed.errors)


def test_unsupported_guides_and_mixed_kinds() -> None:
    old = text("837p.x12").replace("005010X222A1", "004010X098A1")
    parsed = parse_x12(old)
    assert parsed.format == "unknown"
    assert [(e.line, e.segment) for e in parsed.errors] == [(3, "ST")]
    assert "004010X098A1" in parsed.errors[0].reason

    # An 837P group and an 835 group in one interchange.
    p837 = text("837p.x12").splitlines()
    r835 = text("835.x12").splitlines()
    both = "\n".join([*p837[:-1], *r835[1:-1], "IEA*2*000000001~"])
    mixed = parse_x12(both, validate=False)
    assert mixed.format == "x12-837p"
    assert [(e.line, e.segment) for e in mixed.errors] == [(62, "ST")]
    assert "one kind of file at a time" in mixed.errors[0].reason


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("ISA*00*", ClaimError(1, "ISA", "ISA segment incomplete: 16 elements expected")),
        (
            "ISAA00A0AA0AAAAAAAAAAAAAAAAAAAA",
            ClaimError(
                1, "ISA", "ISA delimiters ['A', 'A', 'A'] are not distinct special characters"
            ),
        ),
    ],
)
def test_broken_isa(content: str, expected: ClaimError) -> None:
    parsed = parse_claim_file(content.encode(), None, None)
    assert parsed.format == "unknown" and parsed.errors == (expected,)


def test_a_short_isa_is_reported_and_pyx12_is_not_run() -> None:
    content = text("837p.x12").replace("*ZZ*RTOPSTESTSUB   *", "*ZZ*RTOPSTESTSUB*", 1)
    parsed = parse_x12(content)
    assert parsed.errors == (
        ClaimError(1, "ISA", "ISA segment is 103 characters; 106 (fixed width) expected"),
    )


def test_segment_garbage_is_reported_by_number() -> None:
    content = text("837p.x12").replace("LX*2~", "lx?*2~").replace("LX*3~", "~")
    parsed = parse_x12(content, validate=False)
    reasons = {(e.line, e.reason) for e in parsed.errors}
    assert (26, "'lx?' is not a segment id") in reasons
    assert (29, "empty segment (two segment terminators)") in reasons


def test_lines_feed_the_reconciliation() -> None:
    """The parsed lines are the reconciliation's claim lines: with no expected charges each
    judged line is unsupported, and the discrepancy names the 837's segment."""
    lines = parse_claim_file(sample("837p.x12"), None, None).lines
    found = reconcile([], lines, load_bundled_rules())
    unsupported = [d for d in found if d.kind == "unsupported_charge"]
    assert {(d.cpt, d.line) for d in unsupported} >= {("77412", 24), ("77427", 30)}
    assert all(d.claim_id in ("CLAIM0001", "CLAIM0002") for d in found)


def test_a_large_837p_parses() -> None:
    """Sanity, not a timing: 5.9 MB, 100,000 service lines, envelopes checked by hand (pyx12
    takes about half a minute on this file; its run is the next test's, on a smaller one)."""
    content = x12_837p(2000)
    assert len(content) > 5_000_000
    parsed = parse_x12(content.decode(), validate=False)
    assert parsed.errors == () and len(parsed.lines) == 100_000


def test_a_validated_837p_of_5000_lines() -> None:
    parsed = parse_claim_file(x12_837p(100), None, None)
    assert parsed.errors == () and len(parsed.lines) == 5000
