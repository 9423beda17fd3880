"""The domain's caches give what recomputing gives: RuleSet's indexes and select memo, the
session's derived properties, the revision comparison without a repr on every call."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing.domain import count_sessions
from services.billing.domain.facts import FractionReviewFacts
from services.billing.domain.ruleset import Rule, RuleSet
from services.billing.domain.sessions import Session as TreatmentSession
from services.billing.domain.sessions import later_revision
from tests.billing.factories import MONDAY_2026, RULES, SETTINGS, at, record


def reference_select(rules: RuleSet, family: str, on: date, attrs: dict[str, Any]) -> list[Rule]:
    """RuleSet.select as it was before the memo: every rule filtered on every call."""
    chosen: dict[str, Rule] = {}
    for rule in rules.rules:
        if rule.family != family or not (rule.effective(on) and rule.matches(attrs)):
            continue
        held = chosen.get(rule.slot)
        if held is None or (-len(rule.when), rule.code, rule.id) < (
            -len(held.when),
            held.code,
            held.id,
        ):
            chosen[rule.slot] = rule
    return [chosen[slot] for slot in sorted(chosen)]


FAMILIES = sorted({r.family for r in RULES.rules} | {"no_such_family"})
VALUES: dict[str, list[Any]] = {}
for _rule in RULES.rules:
    for _k, _v in _rule.when.items():
        VALUES.setdefault(_k, [None, "other"]).append(_v)
EDGES = sorted(
    {d for r in RULES.rules for d in (r.effective_from, r.effective_to) if d is not None}
)
DATES = st.one_of(
    st.dates(date(2013, 1, 1), date(2031, 12, 31)),
    st.sampled_from(EDGES).flatmap(
        lambda d: st.sampled_from([d - timedelta(days=1), d, d + timedelta(days=1)])
    ),
)
ATTRS = st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in VALUES.items()})


@settings(max_examples=300, deadline=None)
@given(calls=st.lists(st.tuples(st.sampled_from(FAMILIES), DATES, ATTRS), min_size=1, max_size=8))
def test_memoized_select_is_the_filter_over_every_rule(calls: list[Any]) -> None:
    rules = replace(RULES)  # a fresh memo, filled by this sequence of calls
    for _ in range(2):  # the second pass answers from the memo
        for family, on, attrs in calls:
            assert rules.select(family, on, attrs) == reference_select(rules, family, on, attrs)


def test_select_with_an_unhashable_attribute_is_not_memoized() -> None:
    on = date(2026, 3, 2)
    attrs = {"course_kind": ["conventional"], "code_set": "cpt"}  # a rule reads course_kind
    assert RULES.select("management", on, attrs) == reference_select(RULES, "management", on, attrs)


def test_indexes_are_not_part_of_equality_and_follow_replace() -> None:
    fresh = replace(RULES)
    fresh.select("management", date(2026, 3, 2), {"course_kind": "conventional"})
    assert fresh == RULES and repr(fresh) == repr(RULES)
    only = replace(RULES, rules=tuple(r for r in RULES.rules if r.code == "77427"))
    assert only.rules_for_code("77427") == [r for r in RULES.rules if r.code == "77427"]
    assert not only.known("77263") and RULES.known("77263")
    assert only.family("plan") == []


def test_session_properties_cached_and_equal_to_a_fresh_computation() -> None:
    records = [
        record(1, at(MONDAY_2026, "09:00"), group=1, plan_uid="B", uid="r1"),
        record(1, at(MONDAY_2026, "09:12"), group=2, plan_uid="A", uid="r2"),
    ]
    (session,) = count_sessions(records, SETTINGS)
    twin = TreatmentSession(**{f: getattr(session, f) for f in ("id", "day", "started_at",
                                                                 "kind", "fractions")})  # fmt: skip
    assert session.plan_uids == ("A", "B")
    assert session.evidence == tuple(sorted({e for f in session.fractions for e in f.event_ids}))
    assert session.plan_uids is session.plan_uids  # computed once
    # Reading the cached values changes neither equality, hashing nor repr.
    assert session == twin and hash(session) == hash(twin) and repr(session) == repr(twin)
    assert replace(session, fractions=session.fractions[:1]).plan_uids == (
        session.fractions[0].plan_uid,
    )


revisions = st.builds(
    FractionReviewFacts,
    event_id=st.sampled_from(["e1", "e2"]),
    plan_uid=st.sampled_from(["A", None]),
    fraction_group=st.just(1),
    fraction_number=st.sampled_from([1, None]),
    revision=st.integers(1, 3),
    on_time=st.booleans(),
)


@given(new=revisions, held=revisions)
def test_later_revision_is_the_revision_then_repr_order(
    new: FractionReviewFacts, held: FractionReviewFacts
) -> None:
    assert later_revision(new, held) == ((new.revision, repr(new)) > (held.revision, repr(held)))
    assert not later_revision(new, new)


CODES = sorted({r.code for r in RULES.rules} | {"77299"})


@settings(max_examples=200, deadline=None)
@given(calls=st.lists(st.tuples(st.sampled_from(CODES), DATES), min_size=1, max_size=10))
def test_memoized_valid_on_is_any_rule_effective(calls: list[tuple[str, date]]) -> None:
    rules = replace(RULES)
    for _ in range(2):
        for code, on in calls:
            expected = any(r.effective(on) for r in rules.rules if r.code == code)
            assert rules.valid_on(code, on) is expected
