"""The course grouping rule (shared by billing and documents): table-driven cases and
order-independence."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.courses import (
    PlanFacts,
    PlanLink,
    Regrouping,
    group_courses,
    label_stem,
)


def plan(uid: str, **kw: object) -> PlanFacts:
    defaults: dict[str, object] = {"patient_id": "P1", "label": uid, "intent": "CURATIVE"}
    defaults.update(kw)
    return PlanFacts(uid=uid, **defaults)  # type: ignore[arg-type]


def pred(uid: str) -> tuple[PlanLink, ...]:
    return (PlanLink(uid, "PREDECESSOR"),)


def courses_of(plans: list[PlanFacts], **kw: object) -> set[tuple[str, ...]]:
    return {c.plan_uids for c in group_courses(plans, **kw).courses}  # type: ignore[arg-type]


FOR = "1.2.3.999"
D = date(2026, 3, 2)


@pytest.mark.parametrize(
    ("plans", "expected"),
    [
        pytest.param(
            [plan("1.1"), plan("1.2", references=pred("1.1")), plan("1.3", references=pred("1.2"))],
            {("1.1", "1.2", "1.3")},
            id="predecessor-chain-is-one-course",
        ),
        pytest.param(
            [plan("1.1"), plan("1.2", references=(PlanLink("1.1", "CONCURRENT"),))],
            {("1.1", "1.2")},
            id="concurrent-plans-together",
        ),
        pytest.param(
            [plan("1.1"), plan("1.2", intent="VERIFICATION", references=pred("1.1"))],
            {("1.1",)},
            id="verification-intent-never-joins",
        ),
        pytest.param(
            [plan("1.1"), plan("1.2", intent="machine_qa"), plan("1.3", intent="SERVICE")],
            {("1.1",)},
            id="qa-and-service-intents-never-join",
        ),
        pytest.param(
            [plan("1.1"), plan("1.2", intent=None, references=(PlanLink("1.1", "VERIFIED_PLAN"),))],
            {("1.1",)},
            id="verified-plan-reference-is-qa",
        ),
        pytest.param(
            [plan("1.1", patient_id="A"), plan("1.2", patient_id="B", references=pred("1.1"))],
            {("1.1",), ("1.2",)},
            id="references-never-join-two-patients",
        ),
        pytest.param(
            [
                plan("1.1", label="Prostate", frame_of_reference_uid=FOR, plan_date=D),
                plan("1.2", label="PROSTATE v2", frame_of_reference_uid=FOR, plan_date=D),
            ],
            {("1.1", "1.2")},
            id="heuristic-same-stem-same-frame",
        ),
        pytest.param(
            [
                plan("1.1", label="Prostate", frame_of_reference_uid=FOR),
                plan("1.2", label="Prostate", frame_of_reference_uid="1.2.3.4"),
            ],
            {("1.1",), ("1.2",)},
            id="heuristic-other-frame-of-reference",
        ),
        pytest.param(
            [
                plan("1.1", label="Lung", plan_date=date(2025, 1, 6)),
                plan("1.2", label="Lung", plan_date=date(2026, 1, 6)),
            ],
            {("1.1",), ("1.2",)},
            id="heuristic-dates-beyond-gap",
        ),
        pytest.param(
            [
                plan("1.1", label="Lung", plan_date=date(2026, 1, 6), last_treated_on=D),
                plan("1.2", label="Lung 2", plan_date=date(2026, 3, 20)),
            ],
            {("1.1", "1.2")},
            id="heuristic-treatment-dates-within-gap",
        ),
        pytest.param(
            [plan("1.1", label="Breast"), plan("1.2", label="Breast Boost")],
            {("1.1",), ("1.2",)},
            id="heuristic-other-label-stem",
        ),
        pytest.param(
            [
                plan("1.1", label="Brain"),
                plan("1.2", label="Brain", references=(PlanLink("1.1", "PRIOR"),)),
            ],
            {("1.1",), ("1.2",)},
            id="prior-reference-keeps-apart",
        ),
        pytest.param(
            [
                plan("1.1", label="Pelvis"),
                plan("1.2", label="Pelvis", references=pred("1.1")),
                plan("1.3", label="Pelvis", references=pred("9.9")),
            ],
            {("1.1", "1.2"), ("1.3",)},
            id="two-referenced-chains-not-joined-by-heuristic",
        ),
        pytest.param(
            [
                plan("1.1", label="Pelvis"),
                plan("1.2", label="Pelvis", references=pred("1.1")),
                plan("1.3", label="Pelvis"),
            ],
            {("1.1", "1.2", "1.3")},
            id="unreferenced-plan-joins-chain-by-heuristic",
        ),
    ],
)
def test_grouping_rule(plans: list[PlanFacts], expected: set[tuple[str, ...]]) -> None:
    assert courses_of(plans) == expected


def test_qa_plans_are_listed_as_excluded() -> None:
    grouping = group_courses([plan("1.1"), plan("1.2", intent="VERIFICATION")])
    assert grouping.excluded == ("1.2",)
    assert grouping.course_of("1.2") is None
    assert grouping.course_of("1.1") == "course:1.1"


def test_course_id_is_the_chain_root_not_the_smallest_uid() -> None:
    grouping = group_courses([plan("2.5"), plan("1.9", references=pred("2.5"))])
    assert [c.id for c in grouping.courses] == ["course:2.5"]


def test_course_id_of_unlinked_plans_is_the_earliest() -> None:
    grouping = group_courses(
        [
            plan("9", label="Rectum", plan_date=date(2026, 1, 5)),
            plan("1", label="Rectum", plan_date=date(2026, 1, 20)),
        ]
    )
    assert [c.id for c in grouping.courses] == ["course:9"]


def test_latest_revision_of_a_plan_decides() -> None:
    old = plan("1.2", references=pred("1.1"))
    new = plan("1.2", references=(), label="Other", revision=2)
    assert courses_of([plan("1.1"), old, new]) == {("1.1",), ("1.2",)}


@pytest.mark.parametrize(
    ("regroupings", "expected"),
    [
        pytest.param(
            [Regrouping(frozenset({"1.2", "1.3"}), sequence=1)],
            {("1.1",), ("1.2", "1.3"), ("2.1",)},
            id="split-a-chain",
        ),
        pytest.param(
            [Regrouping(frozenset({"1.1", "1.2", "1.3", "2.1"}), sequence=1)],
            {("1.1", "1.2", "1.3", "2.1")},
            id="merge-two-courses",
        ),
        pytest.param(
            [
                Regrouping(frozenset({"1.1", "2.1"}), sequence=1),
                Regrouping(frozenset({"2.1"}), sequence=2),
            ],
            {("1.1",), ("1.2", "1.3"), ("2.1",)},
            id="later-correction-wins",
        ),
        pytest.param(
            [Regrouping(frozenset({"1.1", "9.9"}), sequence=1)],
            {("1.1",), ("1.2", "1.3"), ("2.1",)},
            id="correction-naming-unknown-plan",
        ),
        pytest.param(
            [Regrouping(frozenset({"1.1", "QA"}), sequence=1)],
            {("1.1",), ("1.2", "1.3"), ("2.1",)},
            id="correction-cannot-add-qa-plan",
        ),
    ],
)
def test_staff_corrections_override(
    regroupings: list[Regrouping], expected: set[tuple[str, ...]]
) -> None:
    plans = [
        plan("1.1", label="Chest"),
        plan("1.2", label="Chest", references=pred("1.1")),
        plan("1.3", label="Chest", references=pred("1.2")),
        plan("2.1", label="Abdomen", frame_of_reference_uid="9"),
        plan("QA", intent="VERIFICATION"),
    ]
    grouping = group_courses(plans, regroupings=regroupings)
    assert {c.plan_uids for c in grouping.courses} == expected


def test_corrected_courses_are_marked() -> None:
    grouping = group_courses(
        [plan("1.1"), plan("1.2")], regroupings=[Regrouping(frozenset({"1.1", "1.2"}), 1)]
    )
    assert [c.corrected for c in grouping.courses] == [True]


@pytest.mark.parametrize(
    ("label", "stem"),
    [
        ("Prostate v2", "prostate"),
        ("PROST_R1", "prost"),
        ("Lung rev 3", "lung"),
        ("Breast-2", "breast"),
        ("H&N replan", "h n"),
        ("2", "2"),
        (None, ""),
    ],
)
def test_label_stem(label: str | None, stem: str) -> None:
    assert label_stem(label) == stem


# ---------------------------------------------------------------- order independence

UIDS = [f"1.{i}" for i in range(8)]
plan_strategy = st.builds(
    PlanFacts,
    uid=st.sampled_from(UIDS),
    patient_id=st.sampled_from(["A", "B"]),
    intent=st.sampled_from([None, "CURATIVE", "VERIFICATION"]),
    label=st.sampled_from(["Lung", "Lung 2", "Brain", None]),
    frame_of_reference_uid=st.sampled_from([None, "F1", "F2"]),
    plan_date=st.one_of(st.none(), st.dates(date(2026, 1, 1), date(2026, 6, 1))),
    references=st.lists(
        st.builds(
            PlanLink,
            uid=st.sampled_from(UIDS),
            relationship=st.sampled_from(["PREDECESSOR", "CONCURRENT", "PRIOR", None]),
        ),
        max_size=2,
    ).map(tuple),
    revision=st.integers(1, 2),
)
regrouping_strategy = st.builds(
    Regrouping,
    plan_uids=st.frozensets(st.sampled_from(UIDS), min_size=1, max_size=3),
    sequence=st.integers(1, 3),
)


@settings(max_examples=200, deadline=None)
@given(
    plans=st.lists(plan_strategy, max_size=10),
    regroupings=st.lists(regrouping_strategy, max_size=3),
    data=st.data(),
)
def test_grouping_does_not_depend_on_input_order(
    plans: list[PlanFacts], regroupings: list[Regrouping], data: st.DataObject
) -> None:
    expected = group_courses(plans, regroupings=regroupings)
    shuffled = data.draw(st.permutations(plans + plans))
    reordered = data.draw(st.permutations(regroupings))
    assert group_courses(shuffled, regroupings=reordered) == expected


@settings(max_examples=100, deadline=None)
@given(plans=st.lists(plan_strategy, max_size=10))
def test_every_course_plan_is_in_exactly_one_course(plans: list[PlanFacts]) -> None:
    grouping = group_courses(plans)
    placed = [uid for c in grouping.courses for uid in c.plan_uids]
    assert len(placed) == len(set(placed))
    assert set(placed) | set(grouping.excluded) == {p.uid for p in plans}
    for course in grouping.courses:
        assert course.id.removeprefix("course:") in course.plan_uids
