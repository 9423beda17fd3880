"""The engine's decisions beyond "which code": holds, image-guidance state, complexity from
technique facts, modifiers by place of service, bundles, and what it refuses to guess."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from services.billing.domain import (
    BillingSettings,
    CourseEvaluation,
    CourseFacts,
    DocumentFacts,
    Payer,
    SimulationFacts,
    evaluate_course,
)
from tests.billing.factories import (
    HOSPITAL,
    HOSPITAL_PHYSICIAN,
    MEDICARE,
    MONDAY_2025,
    MONDAY_2026,
    PLAN,
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
    weekly_notes,
)

LATER = date(2027, 6, 1)


def evaluate(
    facts: CourseFacts, settings: BillingSettings = SETTINGS, payer: Payer = MEDICARE
) -> CourseEvaluation:
    return evaluate_course(facts, RULES, settings, payer, as_of=LATER)


def codes(evaluation: CourseEvaluation, code: str) -> list[tuple[str, ...]]:
    return [c.modifiers for c in evaluation.charges if c.cpt == code]


def charges_of(evaluation: CourseEvaluation, code: str) -> list:
    return [c for c in evaluation.charges if c.cpt == code]


# ---------------------------------------------------------------- 2026 delivery level


@pytest.mark.parametrize(
    ("the_plan", "expected"),
    [
        pytest.param(plan(isocenters=2), "77412", id="multiple-isocenters-77412[hcn.health 2026]"),
        pytest.param(
            plan(beams=(beam(), beam("ELECTRON", energy=9))),
            "77412",
            id="mixed-photon-electron-77412[hcn.health 2026]",
        ),
        pytest.param(plan(motion=True), "77412", id="active-motion-management-77412[ASTRO payer]"),
        pytest.param(imrt_plan(), "77407", id="vmat-single-isocenter-77407[hcn.health 2026]"),
        pytest.param(
            plan(beams=(beam(), beam()), volumetric=False), "77402", id="2d-photons-77402"
        ),
    ],
)
def test_delivery_level_from_technique(the_plan: object, expected: str) -> None:
    facts = course(plans=(the_plan,), records=daily(1))
    assert [c.cpt for c in evaluate(facts).charges if c.rule.startswith("delivery-2026")] == [
        expected
    ]


def test_igrt_alone_never_raises_the_level() -> None:
    """hcn.health: IGRT alone does not justify 77412."""
    facts = course(plans=(imrt_plan(),), records=daily(1), reviews=(review(1),))
    evaluation = evaluate(facts)
    assert [c.cpt for c in evaluation.charges if c.rule.startswith("delivery")] == ["77407"]
    assert codes(evaluation, "77387") == [("26",)]


def test_concurrent_plans_in_one_session_are_one_delivery() -> None:
    """Breast tangents plus an electron boost delivered together: one session, mixed modality."""
    facts = course(
        plans=(plan("A"), plan("B", beams=(beam("ELECTRON", energy=9),), concurrent=("A",))),
        records=(
            record(1, at(MONDAY_2026, "09:00"), plan_uid="A"),
            record(1, at(MONDAY_2026, "09:10"), plan_uid="B"),
        ),
    )
    evaluation = evaluate(facts)
    assert [c.cpt for c in evaluation.charges if c.rule.startswith("delivery")] == ["77412"]


# ---------------------------------------------------------------- image guidance state


@pytest.mark.parametrize(
    ("reviews", "expected"),
    [
        pytest.param((review(1),), ("ready", None), id="on-time-ready[ASTRO IGRT FAQ]"),
        pytest.param((review(1, status="pending"),), ("hold", "review_pending"), id="pending-hold"),
        pytest.param(
            (review(1, status="reviewed_late"),),
            ("hold", "review_late"),
            id="late-hold[ASTRO IGRT FAQ: before next treatment]",
        ),
        pytest.param(
            (review(1), review(1, revision=2, status="pending")),
            ("hold", "review_withdrawn"),
            id="latest-revision-withdraws-review",
        ),
        pytest.param(
            (review(1), review(1, revision=2, removed=True)),
            ("hold", "review_withdrawn"),
            id="fraction-removed-after-on-time-review",
        ),
        pytest.param(
            (review(1, revision=2), review(1, status="pending")),
            ("ready", None),
            id="latest-revision-wins-not-arrival",
        ),
        pytest.param(
            (review(1, decision="rejected"),),
            ("hold", "review_rejected"),
            id="rejected-images-hold[ASTRO: reviewed and approved]",
        ),
        pytest.param(
            (review(1, status="not_imaged", imaging=()),), None, id="not-imaged-no-charge"
        ),
        pytest.param((), None, id="no-assessment-no-charge"),
    ],
)
def test_igrt_follows_the_latest_assessed_revision(
    reviews: tuple, expected: tuple[str, str | None] | None
) -> None:
    facts = course(plans=(plan(),), records=daily(1), reviews=reviews)
    found = [(c.status, c.hold_reason) for c in charges_of(evaluate(facts), "77387")]
    assert found == ([] if expected is None else [expected])


def test_igrt_once_per_session_with_concurrent_groups() -> None:
    facts = course(
        plans=(plan(),),
        records=(
            record(1, at(MONDAY_2026, "09:00"), group=1),
            record(1, at(MONDAY_2026, "09:10"), group=2),
        ),
        reviews=(review(1, group=1), review(1, group=2, status="pending")),
    )
    (igrt,) = charges_of(evaluate(facts), "77387")
    assert igrt.status == "ready"


@pytest.mark.parametrize("kind", ["sbrt", "srs"])
def test_no_igrt_with_stereotactic_delivery(kind: str) -> None:
    """CPT 2015: guidance is included in SRS/SBRT delivery."""
    facts = course(plans=(imrt_plan(),), records=daily(1), reviews=(review(1),), kind=kind)
    evaluation = evaluate(facts)
    assert charges_of(evaluation, "77387") == []
    assert not evaluation.unresolved


# ---------------------------------------------------------------- documentation holds


def test_77427_without_management_note_is_held() -> None:
    facts = course(
        plans=(plan(fractions=10),), records=daily(10), documents=weekly_notes(MONDAY_2026, 1)
    )
    statuses = [(c.status, c.hold_reason) for c in charges_of(evaluate(facts), "77427")]
    assert statuses == [("ready", None), ("hold", "missing_management_note")]


def test_note_without_face_to_face_exam_does_not_support_77427() -> None:
    """ASTRO TM FAQ: each unit needs a face-to-face exam by the physician."""
    note = DocumentFacts("n1", "management_note", MONDAY_2026, face_to_face=False)
    facts = course(plans=(plan(fractions=5),), records=daily(5), documents=(note,))
    (charge,) = charges_of(evaluate(facts), "77427")
    assert charge.hold_reason == "missing_management_note"


def test_management_note_grace_days() -> None:
    note = DocumentFacts("n1", "management_note", MONDAY_2026 - timedelta(days=2))
    facts = course(plans=(plan(fractions=5),), records=daily(5), documents=(note,))
    assert charges_of(evaluate(facts), "77427")[0].status == "hold"
    relaxed = replace(SETTINGS, management_note_grace_days=3)
    assert charges_of(evaluate(facts, relaxed), "77427")[0].status == "ready"


def test_77427_evidence_is_its_block() -> None:
    facts = course(
        plans=(plan(fractions=10),), records=daily(10), documents=weekly_notes(MONDAY_2026, 2)
    )
    first, second = charges_of(evaluate(facts), "77427")
    assert len(first.evidence) == 5 and set(first.evidence).isdisjoint(second.evidence)
    assert first.period == (MONDAY_2026, MONDAY_2026 + timedelta(days=4))


def test_77427_date_of_service_is_a_payer_setting() -> None:
    facts = course(
        plans=(plan(fractions=5),), records=daily(5), documents=weekly_notes(MONDAY_2026, 1)
    )
    end = charges_of(evaluate(facts), "77427")[0].service_date
    start = charges_of(evaluate(facts, payer=Payer(management_service_date="block_start")), "77427")
    assert (end, start[0].service_date) == (MONDAY_2026 + timedelta(days=4), MONDAY_2026)


def test_replan_needs_its_reason() -> None:
    """AAPC / Highmark R-4-016: a second plan for the course needs documentation."""
    plans = (imrt_plan("A"), imrt_plan("B", predecessors=("A",)))
    records = daily(3, plan_uid="A") + daily(
        3, MONDAY_2026 + timedelta(days=7), plan_uid="B", first_number=4
    )
    evaluation = evaluate(course(plans=plans, records=records))
    held = {c.hold_reason for c in charges_of(evaluation, "77301")}
    assert held == {None, "missing_replan_justification"}
    justified = course(
        plans=plans,
        records=records,
        documents=(DocumentFacts("j", "replan_justification", MONDAY_2026, plan_uid="B"),),
    )
    assert {c.status for c in charges_of(evaluate(justified), "77301")} == {"ready"}


def test_undelivered_first_plan_makes_the_replan_the_only_plan() -> None:
    plans = (imrt_plan("A"), imrt_plan("B", predecessors=("A",)))
    evaluation = evaluate(course(plans=plans, records=daily(3, plan_uid="B")))
    assert [(c.status, c.hold_reason) for c in charges_of(evaluation, "77301")] == [("ready", None)]


def test_concurrent_plans_are_one_plan_for_77301() -> None:
    plans = (imrt_plan("A"), imrt_plan("B", concurrent=("A",)))
    records = (
        record(1, at(MONDAY_2026), plan_uid="A"),
        record(1, at(MONDAY_2026, "09:05"), plan_uid="B"),
    )
    assert len(charges_of(evaluate(course(plans=plans, records=records)), "77301")) == 1


def sim(
    day: date, complexity: str = "complex", *, booking: str = "b1", revision: int = 1, **kw: object
) -> SimulationFacts:
    return SimulationFacts(
        event_id=f"ev-sim-{booking}-{revision}",
        booking_id=booking,
        revision=revision,
        service_date=day,
        complexity=complexity,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_77293_without_3d_or_imrt_plan_is_held() -> None:
    two_d = plan(beams=(beam(), beam()), volumetric=False)
    facts = course(
        plans=(two_d,),
        records=daily(1),
        simulations=(sim(MONDAY_2026 - timedelta(days=30), four_d_ct=True),),
    )
    (add_on,) = charges_of(evaluate(facts), "77293")
    assert add_on.hold_reason == "add_on_without_primary"


@pytest.mark.parametrize(
    ("sims", "expected"),
    [
        pytest.param(
            (
                sim(date(2026, 1, 5), "simple", booking="a"),
                sim(date(2026, 1, 5), "complex", booking="b"),
            ),
            ["77290"],
            id="one-simulation-per-date-of-service[ASTRO TP FAQ]",
        ),
        pytest.param(
            (sim(date(2026, 1, 5), "simple"), sim(date(2026, 1, 5), "intermediate", revision=2)),
            ["77285"],
            id="corrected-booking-latest-revision",
        ),
        pytest.param(
            (sim(date(2026, 1, 5)), sim(date(2026, 1, 5), revision=2, cancelled=True)),
            [],
            id="cancelled-completion-retracted",
        ),
        pytest.param(
            (sim(date(2026, 1, 5), booking="a"), sim(date(2026, 1, 20), "simple", booking="b")),
            ["77290", "77280"],
            id="boost-resimulation-another-day",
        ),
    ],
)
def test_simulation_codes(sims: tuple, expected: list[str]) -> None:
    facts = course(plans=(plan(approved_on=date(2026, 2, 20)),), records=daily(1), simulations=sims)
    found = [c.cpt for c in evaluate(facts).charges if c.rule.startswith("simulation")]
    assert found == expected


# ---------------------------------------------------------------- bundles in the engine


@pytest.mark.parametrize(
    ("sim_days_before", "payer", "bundled"),
    [
        pytest.param(10, MEDICARE, True, id="sim-10d-before-77301-bundled[Pub 100-04 Ch4 200.3]"),
        pytest.param(14, MEDICARE, True, id="sim-14d-before-77301-bundled[CMS edit 2018]"),
        pytest.param(15, MEDICARE, False, id="sim-15d-before-77301-separate"),
        pytest.param(25, Payer(id="bcbs_nc", medicare=False), True, id="bcbs-nc-30d-window"),
    ],
)
def test_imrt_planning_window(sim_days_before: int, payer: Payer, bundled: bool) -> None:
    approved = MONDAY_2026 - timedelta(days=3)
    facts = course(
        plans=(imrt_plan(approved_on=approved),),
        records=daily(1),
        simulations=(sim(approved - timedelta(days=sim_days_before)),),
    )
    evaluation = evaluate(facts, payer=payer)
    assert bool(charges_of(evaluation, "77290")) is not bundled
    assert [b.bundle for b in evaluation.bundled] == (["imrt-planning-window"] if bundled else [])


def test_77014_never_with_simulation_same_day() -> None:
    """ASTRO 77014 guidance (legacy freestanding)."""
    facts = course(
        plans=(plan(approved_on=MONDAY_2025 - timedelta(days=20)),),
        records=daily(2, MONDAY_2025),
        reviews=(review(1), review(2)),
        simulations=(sim(MONDAY_2025, "simple"),),
    )
    evaluation = evaluate(facts)
    assert [c.service_date for c in charges_of(evaluation, "77014")] == [
        MONDAY_2025 + timedelta(days=1)
    ]
    assert [b.bundle for b in evaluation.bundled] == ["ct-guidance-in-simulation"]


def test_superficial_course_has_no_management_or_physics() -> None:
    """Since 2015: no 77427/77336/77261-77263 with 77401 (ASTRO Treatment Delivery FAQ)."""
    ortho = plan(beams=(beam(energy=0.1),), volumetric=False, fractions=5)
    evaluation = evaluate(
        course(plans=(ortho,), records=daily(5), documents=weekly_notes(MONDAY_2026, 1))
    )
    assert sorted({c.cpt for c in evaluation.charges}) == ["77401"]


def test_sbrt_longer_than_five_is_conventional() -> None:
    """MAC LCD: a course of more than 5 fractions is not SBRT."""
    facts = course(
        plans=(imrt_plan(fractions=6),),
        records=daily(6),
        kind="sbrt",
        documents=weekly_notes(MONDAY_2026, 2),
    )
    evaluation = evaluate(facts)
    assert evaluation.kind == "conventional"
    assert not charges_of(evaluation, "77373") and not charges_of(evaluation, "77435")
    assert len(charges_of(evaluation, "77427")) == 1


def test_srs_in_several_fractions_is_sbrt() -> None:
    """SROA: cranial radiosurgery in more than one fraction is billed with the SBRT codes."""
    facts = course(plans=(imrt_plan(fractions=3),), records=daily(3), kind="srs")
    evaluation = evaluate(facts)
    assert evaluation.kind == "sbrt"
    assert len(charges_of(evaluation, "77373")) == 3 and len(charges_of(evaluation, "77435")) == 1


# ---------------------------------------------------------------- modifiers


@pytest.mark.parametrize(
    ("settings", "code", "expected"),
    [
        pytest.param(SETTINGS, "77301", [()], id="freestanding-split-global[domain-billing 4]"),
        pytest.param(HOSPITAL_PHYSICIAN, "77301", [("26",)], id="hospital-physician-26"),
        pytest.param(HOSPITAL, "77301", [("TC",)], id="hospital-technical-TC"),
        pytest.param(
            BillingSettings(zone=SETTINGS.zone, place_of_service="hospital"),
            "77301",
            [("26",), ("TC",)],
            id="hospital-both-split-lines",
        ),
        pytest.param(HOSPITAL_PHYSICIAN, "77407", [], id="physician-bills-no-technical-code"),
        pytest.param(HOSPITAL, "77407", [()], id="TC-only-code-no-TC-modifier[carrier guidance]"),
        pytest.param(HOSPITAL, "77427", [], id="hospital-bills-no-PC-only-code"),
        pytest.param(HOSPITAL_PHYSICIAN, "77387", [("26",)], id="77387-26-from-2026"),
        pytest.param(SETTINGS, "77387", [("26",)], id="77387-26-freestanding-too"),
    ],
)
def test_modifiers_by_place_of_service(
    settings: BillingSettings, code: str, expected: list[tuple[str, ...]]
) -> None:
    facts = course(
        plans=(imrt_plan(fractions=5),),
        records=daily(5),
        reviews=(review(1),),
        documents=weekly_notes(MONDAY_2026, 1),
    )
    found = codes(evaluate(facts, settings), code)
    assert sorted(set(found)) == expected


# ---------------------------------------------------------------- never guessed


def test_legacy_imrt_without_site_is_unresolved() -> None:
    """77385 vs 77386 depends on the treatment site; without one no code is guessed."""
    facts = course(plans=(imrt_plan(),), records=daily(1, MONDAY_2025))
    evaluation = evaluate(facts, HOSPITAL)
    assert not [c for c in evaluation.charges if c.rule.startswith("imrt-delivery")]
    assert [u.reason for u in evaluation.unresolved] == ["no_rule_matches"]


def test_session_of_an_unknown_plan_is_unresolved() -> None:
    facts = course(plans=(), records=daily(1, plan_uid="9.9"))
    evaluation = evaluate(facts)
    assert [u.reason for u in evaluation.unresolved] == ["plan_facts_missing"]


def test_charge_ids_are_deterministic() -> None:
    facts = course(
        plans=(plan(fractions=5),), records=daily(5), documents=weekly_notes(MONDAY_2026, 1)
    )
    assert evaluate(facts).charges == evaluate(facts).charges
    assert all(c.id.startswith(f"course:{PLAN}|") for c in evaluate(facts).charges)
    assert {c.rules_version for c in evaluate(facts).charges} == {RULES.version}
