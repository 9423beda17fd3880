"""Expected charges against claim lines: one case per discrepancy kind, with its rule."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.billing.domain import ClaimLine, Discrepancy, evaluate_course, reconcile
from services.billing.domain.charges import Charge
from tests.billing.factories import (
    MEDICARE,
    MONDAY_2026,
    PATIENT,
    RULES,
    SETTINGS,
    course,
    daily,
    plan,
    review,
    weekly_notes,
)

FRIDAY = MONDAY_2026 + timedelta(days=4)


def expected_charges(n: int = 5, notes: int = 2) -> tuple[Charge, ...]:
    facts = course(
        plans=(plan(fractions=n, approved_on=MONDAY_2026 - timedelta(days=5)),),
        records=daily(n),
        reviews=tuple(review(i) for i in range(1, n + 1)),
        documents=weekly_notes(MONDAY_2026, notes),
    )
    return evaluate_course(facts, RULES, SETTINGS, MEDICARE, as_of=date(2027, 1, 1)).charges


def claim_everything(charges: tuple[Charge, ...]) -> list[ClaimLine]:
    return [
        ClaimLine("C1", c.patient_id, c.service_date, c.cpt, c.modifiers, c.units, line=i)
        for i, c in enumerate(charges)
    ]


def line(
    cpt: str, day: date = MONDAY_2026, mods: tuple[str, ...] = (), units: int = 1, **kw: object
) -> ClaimLine:
    defaults: dict[str, object] = {"claim_id": "C1", "patient_id": PATIENT, "line": 99}
    defaults.update(kw)
    return ClaimLine(service_date=day, cpt=cpt, modifiers=mods, units=units, **defaults)  # type: ignore[arg-type]


def kinds(found: tuple[Discrepancy, ...]) -> list[tuple[str, str]]:
    return [(d.kind, d.cpt) for d in found]


def test_a_claim_of_exactly_the_charges_is_clean() -> None:
    charges = expected_charges()
    assert reconcile(charges, claim_everything(charges), RULES) == ()


def test_missing_77427_is_reported_with_its_rule() -> None:
    charges = expected_charges()
    claims = [c for c in claim_everything(charges) if c.cpt != "77427"]
    (found,) = reconcile(charges, claims, RULES)
    assert (found.kind, found.cpt, found.service_date) == ("missing_charge", "77427", FRIDAY)
    assert found.rule == "management-weekly" and "100-04 Ch. 13" in found.citation


def test_held_charge_is_not_missing_but_claiming_it_is_unsupported() -> None:
    charges = expected_charges(notes=0)  # no management note: 77427 on hold
    claims = [c for c in claim_everything(charges) if c.cpt != "77427"]
    assert reconcile(charges, claims, RULES) == ()
    found = reconcile(charges, claim_everything(charges), RULES)
    assert kinds(found) == [("unsupported_charge", "77427")]
    assert "missing_management_note" in found[0].detail


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(
            line("77412", MONDAY_2026 + timedelta(days=10)),
            [("unsupported_charge", "77412")],
            id="claimed-without-evidence",
        ),
        pytest.param(
            line("77407", MONDAY_2026, line=100),
            [("duplicate_charge", "77407")],
            id="same-line-twice",
        ),
        pytest.param(
            line("77407", MONDAY_2026, claim_id="C2"),
            [("duplicate_charge", "77407")],
            id="same-line-on-another-claim",
        ),
        pytest.param(
            line("77385", MONDAY_2026),
            [("deleted_code", "77385")],
            id="77385-after-2025[CPT 2026 deleted]",
        ),
        pytest.param(
            line("G6015", MONDAY_2026),
            [("deleted_code", "G6015")],
            id="g-code-after-2025[CY2026 PFS]",
        ),
        pytest.param(line("12345"), [("unknown_code", "12345")], id="unknown-code-never-guessed"),
        pytest.param(line("99213"), [], id="em-recognised-not-judged"),
        pytest.param(line("77605"), [], id="hyperthermia-recognised-not-judged"),
        pytest.param(
            line("77014", MONDAY_2026 - timedelta(days=5)),
            [("deleted_code", "77014")],
            id="77014-after-2025",
        ),
    ],
)
def test_extra_claim_lines(extra: ClaimLine, expected: list[tuple[str, str]]) -> None:
    charges = expected_charges()
    assert kinds(reconcile(charges, [*claim_everything(charges), extra], RULES)) == expected


def test_excess_units() -> None:
    charges = expected_charges()
    claims = [
        line(c.cpt, c.service_date, c.modifiers, units=3, line=i) if c.cpt == "77336" else c
        for i, c in enumerate(claim_everything(charges))
    ]
    (found,) = reconcile(charges, claims, RULES)
    assert (found.kind, found.cpt, found.units) == ("excess_units", "77336", 2)


def test_wrong_modifier() -> None:
    charges = expected_charges()
    claims = [
        line("77295", c.service_date, ("26",), line=i) if c.cpt == "77295" else c
        for i, c in enumerate(claim_everything(charges))
    ]
    (found,) = reconcile(charges, claims, RULES)
    assert (found.kind, found.cpt) == ("wrong_modifier", "77295")
    assert found.detail == "expected no modifier, claimed -26"


def test_77427_dated_at_block_start_still_matches() -> None:
    """Payers differ on the 77427 date of service (domain-billing.md s. 2.1 rule 10)."""
    charges = expected_charges()
    claims = [
        line("77427", MONDAY_2026, line=i) if c.cpt == "77427" else c
        for i, c in enumerate(claim_everything(charges))
    ]
    assert reconcile(charges, claims, RULES) == ()


@pytest.mark.parametrize(
    ("pair", "bundle"),
    [
        pytest.param(
            ("77306", "77300"), "basic-dosimetry-in-isodose-plans", id="77300-with-77306[CPT 2015]"
        ),
        pytest.param(
            ("77290", "77014"), "ct-guidance-in-simulation", id="77014-with-simulation[ASTRO 77014]"
        ),
        pytest.param(
            ("77373", "77387"), "guidance-in-stereotactic-delivery", id="igrt-with-sbrt[CPT 2015]"
        ),
        pytest.param(
            ("77401", "77427"), "superficial-exclusions", id="77427-with-77401[ASTRO TD FAQ]"
        ),
        pytest.param(
            ("77770", "77300"), "physics-in-isodose-brachy", id="77300-with-hdr[CPT 2016]"
        ),
    ],
)
def test_bundled_pairs_on_claims(pair: tuple[str, str], bundle: str) -> None:
    day = date(2025, 6, 2) if "77014" in pair else MONDAY_2026
    primary, secondary = pair
    found = reconcile((), [line(primary, day, line=1), line(secondary, day, line=2)], RULES)
    bundled = [d for d in found if d.kind == "bundled_charge"]
    assert [(d.cpt, d.rule) for d in bundled] == [(secondary, bundle)]


@pytest.mark.parametrize(
    ("days_before", "payer_id", "bundled"),
    [
        pytest.param(14, "medicare", True, id="14d-before-77301[CMS edit April 2018]"),
        pytest.param(15, "medicare", False, id="15d-before-77301"),
        pytest.param(29, "bcbs_nc", True, id="bcbs-nc-30d"),
    ],
)
def test_imrt_window_on_claims(days_before: int, payer_id: str, bundled: bool) -> None:
    claims = [
        line("77301", MONDAY_2026, line=1),
        line("77290", MONDAY_2026 - timedelta(days=days_before), line=2),
    ]
    found = reconcile((), claims, RULES, payer_id=payer_id)
    assert any(d.kind == "bundled_charge" and d.cpt == "77290" for d in found) is bundled


def test_window_limits_what_can_be_missing() -> None:
    charges = expected_charges()
    assert reconcile(charges, [], RULES, window=(date(2027, 1, 1), date(2027, 1, 31))) == ()
    assert {d.kind for d in reconcile(charges, [], RULES)} == {"missing_charge"}


def test_bid_sessions_two_identical_lines_are_not_duplicates() -> None:
    from tests.billing.factories import at, record

    facts = course(
        plans=(plan(),),
        records=(record(1, at(MONDAY_2026, "08:00")), record(2, at(MONDAY_2026, "15:00"))),
    )
    charges = evaluate_course(facts, RULES, SETTINGS, MEDICARE, as_of=MONDAY_2026).charges
    delivery = [line("77407", MONDAY_2026, line=1), line("77407", MONDAY_2026, line=2)]
    found = reconcile([c for c in charges if c.cpt == "77407"], delivery, RULES)
    assert found == ()


def test_report_order_does_not_depend_on_input_order() -> None:
    charges = expected_charges()
    claims = [*claim_everything(charges)[2:], line("12345"), line("77385")]
    assert reconcile(charges, claims, RULES) == reconcile(
        tuple(reversed(charges)), list(reversed(claims)), RULES
    )
