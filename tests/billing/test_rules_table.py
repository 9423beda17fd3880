"""Every derived rule of the rules file fires in a scenario built for it. The test ids carry the
rule id, its code and its citation; a rule added to the file without a scenario fails
``test_every_rule_has_a_scenario``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import pytest

from services.billing.domain import (
    BillingSettings,
    BrachyChannelFacts,
    CourseFacts,
    Payer,
    SimulationFacts,
    evaluate_course,
)
from services.billing.domain.ruleset import Rule
from tests.billing.factories import (
    COMMERCIAL_CPT,
    HOSPITAL,
    HOSPITAL_PHYSICIAN,
    MEDICARE,
    MONDAY_2025,
    MONDAY_2026,
    RULES,
    SETTINGS,
    at,
    beam,
    course,
    daily,
    imrt_plan,
    plan,
    record,
    review,
    treatment_days,
    weekly_notes,
)

LATER = date(2027, 6, 1)


@dataclass(frozen=True)
class Scenario:
    facts: Callable[[], CourseFacts]
    settings: BillingSettings = SETTINGS
    payer: Payer = MEDICARE
    expect_units: int | None = None
    extra: dict[str, object] = field(default_factory=dict)


def conventional(
    p: object = None, n: int = 5, start: date = MONDAY_2026, **kw: object
) -> Callable[[], CourseFacts]:
    def build() -> CourseFacts:
        the_plan = p if p is not None else plan(fractions=n)
        return course(
            plans=(the_plan,),
            records=daily(n, start),
            reviews=tuple(review(i) for i in range(1, n + 1)),
            documents=weekly_notes(start, n // 5 + 2),
            **kw,
        )

    return build


def legacy(p: object = None, n: int = 5, **kw: object) -> Callable[[], CourseFacts]:
    return conventional(p, n, MONDAY_2025, **kw)


def brachy(channels: int, setup: str = "INTRACAVITARY") -> Callable[[], CourseFacts]:
    def build() -> CourseFacts:
        records = tuple(
            record(
                i + 1,
                at(day),
                kind="brachy",
                brachy_setup_types=(setup,),
                brachy_channels=tuple(BrachyChannelFacts(n) for n in range(1, channels + 1)),
            )
            for i, day in enumerate(treatment_days(MONDAY_2026, 3))
        )
        return course(plans=(plan(beams=(), volumetric=False, fractions=3),), records=records)

    return build


def proton(p: object) -> Callable[[], CourseFacts]:
    def build() -> CourseFacts:
        return course(plans=(p,), records=daily(3, kind="ion_beams"))

    return build


def stereotactic(kind: str, n: int, platform: str = "linac") -> Callable[[], CourseFacts]:
    def build() -> CourseFacts:
        return course(
            plans=(imrt_plan(fractions=n),),
            records=daily(n),
            reviews=tuple(review(i) for i in range(1, n + 1)),
            kind=kind,
            srs_platform=platform,
        )

    return build


def with_sim(complexity: str, four_d: bool = False, p: object = None) -> Callable[[], CourseFacts]:
    def build() -> CourseFacts:
        sim = SimulationFacts(
            event_id="ev-sim",
            booking_id="b1",
            revision=1,
            service_date=MONDAY_2026 - timedelta(days=30),
            complexity=complexity,  # type: ignore[arg-type]
            four_d_ct=four_d,
        )
        return replace(conventional(p)(), simulations=(sim,))

    return build


SIMPLE = plan(beams=(beam(), beam()), volumetric=False, fractions=5)  # parallel-opposed, 2D
THREE_FIELD = plan(beams=(beam(), beam(), beam()), fractions=5)
WEDGED = plan(beams=(beam(wedges=1), beam(wedges=1)), fractions=5)
ELECTRON = plan(beams=(beam("ELECTRON", energy=9),), volumetric=False, fractions=5)
ORTHOVOLTAGE = plan(beams=(beam(energy=0.25),), volumetric=False, fractions=5)


def g_plan(level: int, energy: float) -> object:
    beams = {
        1: (beam(energy=energy), beam(energy=energy)),
        2: (beam(energy=energy),) * 3,
        3: (beam(energy=energy, wedges=1), beam(energy=energy, wedges=1)),
    }[level]
    return plan(beams=beams, fractions=5)


def ion(beams: int = 1, isocenters: int = 1, compensated: bool = False) -> object:
    return plan(
        beams=tuple(
            beam("PROTON", energy=150, compensators=1 if compensated else 0) for _ in range(beams)
        ),
        isocenters=isocenters,
        ion=True,
        fractions=3,
    )


G_BANDS = {"le5": 4.0, "6_10": 6.0, "11_19": 15.0, "ge20": 20.0}
G_SCENARIOS = {
    f"g{6003 + 4 * (level - 1) + i}": Scenario(legacy(g_plan(level, energy)))
    for level in (1, 2, 3)
    for i, energy in enumerate(G_BANDS.values())
}

SCENARIOS: dict[str, Scenario] = {
    "superficial-delivery": Scenario(conventional(ORTHOVOLTAGE)),
    "delivery-2026-level-1": Scenario(conventional(ELECTRON)),
    "delivery-2026-level-2": Scenario(conventional(THREE_FIELD)),
    "delivery-2026-level-3": Scenario(conventional(plan(motion=True, fractions=5))),
    "delivery-legacy-cpt-simple": Scenario(legacy(SIMPLE), HOSPITAL),
    "delivery-legacy-cpt-intermediate": Scenario(legacy(THREE_FIELD), payer=COMMERCIAL_CPT),
    "delivery-legacy-cpt-complex": Scenario(legacy(WEDGED), payer=COMMERCIAL_CPT),
    "imrt-delivery-legacy-simple": Scenario(
        legacy(imrt_plan(site="Prostate", fractions=5)), payer=COMMERCIAL_CPT
    ),
    "imrt-delivery-legacy-complex": Scenario(
        legacy(imrt_plan(site="Head and neck", fractions=5)), payer=COMMERCIAL_CPT
    ),
    **G_SCENARIOS,
    "g6015": Scenario(legacy(imrt_plan(fractions=5))),
    "srs-delivery-linac": Scenario(stereotactic("srs", 1)),
    "srs-delivery-cobalt": Scenario(stereotactic("srs", 1, "cobalt")),
    "sbrt-delivery": Scenario(stereotactic("sbrt", 5), expect_units=5),
    "igrt-2026": Scenario(conventional(), expect_units=5),
    "igrt-legacy-professional": Scenario(legacy(), HOSPITAL_PHYSICIAN, expect_units=5),
    "ct-guidance-legacy": Scenario(
        legacy(plan(fractions=5, approved_on=MONDAY_2025 - timedelta(days=7))), expect_units=5
    ),
    "stereoscopic-guidance-legacy": Scenario(
        lambda: course(
            plans=(plan(fractions=5),),
            records=daily(5, MONDAY_2025),
            reviews=tuple(review(i, imaging=("kv_2d",)) for i in range(1, 6)),
        ),
        expect_units=5,
    ),
    "management-weekly": Scenario(conventional(n=10), expect_units=2),
    "management-short-course": Scenario(conventional(plan(fractions=2), n=2), expect_units=1),
    "management-srs": Scenario(stereotactic("srs", 1), expect_units=1),
    "management-sbrt": Scenario(stereotactic("sbrt", 3), expect_units=1),
    "physics-weekly": Scenario(conventional(n=10), expect_units=2),
    "clinical-planning-simple": Scenario(conventional(SIMPLE)),
    "clinical-planning-intermediate": Scenario(conventional(THREE_FIELD)),
    "clinical-planning-complex": Scenario(conventional(WEDGED)),
    "imrt-plan": Scenario(conventional(imrt_plan(fractions=5)), expect_units=1),
    "three-d-plan": Scenario(conventional(THREE_FIELD), expect_units=1),
    "imrt-mlc-device": Scenario(conventional(imrt_plan(fractions=5)), expect_units=1),
    "basic-dosimetry": Scenario(conventional(THREE_FIELD), expect_units=3),
    "brachy-isodose-simple": Scenario(brachy(1)),
    "brachy-isodose-intermediate": Scenario(brachy(5)),
    "brachy-isodose-complex": Scenario(brachy(13)),
    "simulation-simple": Scenario(with_sim("simple")),
    "simulation-intermediate": Scenario(with_sim("intermediate")),
    "simulation-complex": Scenario(with_sim("complex")),
    "respiratory-motion-simulation": Scenario(with_sim("complex", four_d=True)),
    "proton-simple": Scenario(proton(ion()), expect_units=3),
    "proton-simple-compensated": Scenario(proton(ion(compensated=True))),
    "proton-intermediate": Scenario(proton(ion(beams=2))),
    "proton-complex": Scenario(proton(ion(beams=2, isocenters=2))),
    "hdr-surface-1": Scenario(brachy(1, "SURFACE_MOULD"), expect_units=3),
    "hdr-surface-many": Scenario(brachy(4, "SURFACE_MOULD")),
    "hdr-surface-many-gt12": Scenario(brachy(13, "SURFACE_MOULD")),
    "hdr-interstitial-1": Scenario(brachy(1, "INTERSTITIAL")),
    "hdr-interstitial-2-12": Scenario(brachy(6)),
    "hdr-interstitial-gt12": Scenario(brachy(16)),
}

DERIVED = [r for r in RULES.rules if r.unit_rule != "recognised"]


def rule_id(rule: Rule) -> str:
    return f"{rule.id}:{rule.code}[{rule.citation.split(';')[0][:70]}]"


def test_every_rule_has_a_scenario() -> None:
    assert {r.id for r in DERIVED} == set(SCENARIOS)


@pytest.mark.parametrize("rule", DERIVED, ids=rule_id)
def test_rule_fires(rule: Rule) -> None:
    scenario = SCENARIOS[rule.id]
    evaluation = evaluate_course(
        scenario.facts(), RULES, scenario.settings, scenario.payer, as_of=LATER
    )
    fired = [c for c in evaluation.charges if c.rule == rule.id]
    assert fired, (
        f"{rule.id} did not fire; charges: {[(c.cpt, c.rule) for c in evaluation.charges]}; "
        f"unresolved: {evaluation.unresolved}; "
        f"bundled: {[b.charge.cpt for b in evaluation.bundled]}"
    )
    assert all(c.cpt == rule.code and c.citation == rule.citation for c in fired)
    assert all(c.evidence for c in fired), "every charge carries its evidence"
    if scenario.expect_units is not None:
        assert sum(c.units for c in fired) == scenario.expect_units


@pytest.mark.parametrize(
    "rule", [r for r in RULES.rules if r.unit_rule == "recognised"], ids=rule_id
)
def test_recognised_codes_are_never_derived(rule: Rule) -> None:
    assert rule.family == "recognised"
    assert rule.citation
