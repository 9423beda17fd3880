"""The rules file: its format, its validation, and that every condition it states can hold."""

from __future__ import annotations

from datetime import date

import pytest

from services.billing.domain import RulesError, parse_rules
from services.billing.domain.ruleset import expand_codes
from tests.billing.factories import RULES

# Every attribute a rule's `when` may name, with the values the engine computes for it. A
# value outside these (a typo, or YAML reading 6_10 as the integer 610) could never match.
ATTRIBUTE_VALUES: dict[str, set[object]] = {
    "course_kind": {"conventional", "srs", "sbrt"},
    "superficial": {True, False},
    "srs_platform": {"linac", "cobalt"},
    "code_set": {"cpt", "g_codes"},
    "level": {1, 2, 3},
    "legacy_level": {1, 2, 3},
    "modulated": {True, False},
    "imrt_method": {"mlc", "compensator"},
    "imrt_class": {"simple", "complex"},
    "energy_band": {"le5", "6_10", "11_19", "ge20"},
    "imaging": {"cbct", "kv_2d"},
    "planning_level": {1, 2, 3},
    "brachy": {True, False},
    "ion": {True, False},
    "volumetric": {True, False},
    "channels": {"1", "2_12", "gt12"},
    "application": {"surface", "interstitial_cavitary"},
    "complexity": {"simple", "intermediate", "complex"},
    "four_d_ct": {True, False},
    "proton_level": {"simple", "simple_compensated", "intermediate", "complex"},
}


@pytest.mark.parametrize("rule", RULES.rules, ids=lambda r: r.id)
def test_every_condition_can_hold(rule: object) -> None:
    for key, value in rule.when.items():  # type: ignore[attr-defined]
        assert key in ATTRIBUTE_VALUES, f"unknown attribute {key!r}"
        assert value in ATTRIBUTE_VALUES[key], f"{key}={value!r} never computed"


def test_every_rule_cites_a_source() -> None:
    assert all(r.citation.strip() for r in RULES.rules)
    assert all(b.citation.strip() for b in RULES.bundles)


def test_code_set_changes_on_2026_01_01() -> None:
    """domain-billing.md: 77385/77386 and G6001-G6017 end 2025-12-31; 77402/77407/77412 go on."""
    for code in ("77385", "77386", "G6001", "G6003", "G6015", "G6017", "77014"):
        assert RULES.valid_on(code, date(2025, 12, 31)), code
        assert not RULES.valid_on(code, date(2026, 1, 1)), code
    for code in ("77402", "77407", "77412", "77387", "77427", "77336"):
        assert RULES.valid_on(code, date(2026, 1, 1)), code
    (igrt,) = [r for r in RULES.rules if r.id == "igrt-2026"]
    assert igrt.component == "professional" and igrt.modifiers == ("26",)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["77316-77318"], {"77316", "77317", "77318"}),
        (["G6003-G6005"], {"G6003", "G6004", "G6005"}),
        (["77300", " 77301 "], {"77300", "77301"}),
        (["0394T"], {"0394T"}),
    ],
)
def test_expand_codes(items: list[str], expected: set[str]) -> None:
    assert expand_codes(items) == expected


MINIMAL = """
format: 1
version: "t1"
rules:
  - {id: a, code: "77427", family: management, component: professional,
     unit_rule: per_five_fractions, citation: "CMS"}
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "must be a mapping"),
        ("format: 2\nversion: x", "unsupported rules format"),
        ("format: 1", "needs a 'version'"),
        (MINIMAL.replace('citation: "CMS"', 'citation: ""'), "'citation' is required"),
        (MINIMAL.replace("per_five_fractions", "per_moon"), "unknown unit_rule"),
        (MINIMAL.replace("professional", "both"), "component must be"),
        (
            MINIMAL + "  - {id: a, code: '1', family: f, component: none, unit_rule: recognised, "
            "citation: c}\n",
            "unique",
        ),
        (MINIMAL.replace("citation", "effective_from: '2026-13-01', citation"), "is not a date"),
        (MINIMAL.replace("citation", "effective_from: 2026-13-01, citation"), "not valid YAML"),
        (
            MINIMAL.replace(
                "citation", "effective_from: 2026-02-01, effective_to: 2026-01-01, citation"
            ),
            "after effective_to",
        ),
        (
            MINIMAL + "bundles:\n  - {id: b, primary: ['77301'], bundled: ['9-1'], citation: c}\n",
            "bad code range",
        ),
    ],
)
def test_malformed_rules_are_refused_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        parse_rules(text)


def test_minimal_file_parses() -> None:
    rules = parse_rules(MINIMAL)
    assert rules.version == "t1"
    assert [r.slot for r in rules.rules] == ["management"]
