"""Replaying, duplicating or reordering input facts never changes the charges (issue 11)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing.domain import (
    CourseFacts,
    DocumentFacts,
    SimulationFacts,
    StaffClosure,
    SummaryFacts,
    evaluate_course,
)
from tests.billing.factories import (
    MEDICARE,
    MONDAY_2026,
    RULES,
    SETTINGS,
    at,
    imrt_plan,
    plan,
    record,
    review,
)

AS_OF = date(2026, 9, 1)
DAYS = [MONDAY_2026 + timedelta(days=i) for i in range(40)]

records = st.builds(
    lambda number, day, hour, group, partial, rev, plan_uid: record(
        number,
        at(day, f"{hour:02d}:00"),
        group=group,
        partial=partial,
        revision=rev,
        plan_uid=plan_uid,
        uid=f"r-{plan_uid}-{number}-{group}-{day}-{hour}",
    ),
    number=st.integers(1, 25),
    day=st.sampled_from(DAYS),
    hour=st.sampled_from([8, 9, 15]),
    group=st.integers(1, 2),
    partial=st.booleans(),
    rev=st.integers(1, 2),
    plan_uid=st.sampled_from(["A", "B"]),
)
reviews = st.builds(
    lambda number, rev, status, plan_uid: review(
        number, revision=rev, status=status, plan_uid=plan_uid
    ),
    number=st.integers(1, 25),
    rev=st.integers(1, 3),
    status=st.sampled_from(["pending", "reviewed_on_time", "reviewed_late"]),
    plan_uid=st.sampled_from(["A", "B"]),
)
sims = st.builds(
    lambda booking, rev, day, complexity, four_d, cancelled: SimulationFacts(
        event_id=f"s-{booking}-{rev}",
        booking_id=booking,
        revision=rev,
        service_date=day - timedelta(days=20),
        complexity=complexity,
        four_d_ct=four_d,
        cancelled=cancelled,
    ),
    booking=st.sampled_from(["b1", "b2"]),
    rev=st.integers(1, 2),
    day=st.sampled_from(DAYS[:5]),
    complexity=st.sampled_from(["simple", "intermediate", "complex"]),
    four_d=st.booleans(),
    cancelled=st.booleans(),
)
documents = st.builds(
    lambda day, kind: DocumentFacts(id=f"d-{day}-{kind}", kind=kind, on=day, plan_uid="B"),
    day=st.sampled_from(DAYS),
    kind=st.sampled_from(["management_note", "replan_justification"]),
)
courses = st.builds(
    lambda recs, revs, sim, docs, closed, summary, kind: CourseFacts(
        course_id="course:A",
        patient_id="P1",
        plans=(
            plan("A", fractions=25, approved_on=DAYS[0]),
            imrt_plan("B", predecessors=("A",), fractions=25),
        ),
        records=tuple(recs),
        reviews=tuple(revs),
        simulations=tuple(sim),
        documents=tuple(docs),
        closures=(StaffClosure(closed, "audit"),) if closed else (),
        summaries=(SummaryFacts("sum", summary, DAYS[-1]),) if summary else (),
        kind=kind,
    ),
    recs=st.lists(records, max_size=25),
    revs=st.lists(reviews, max_size=10),
    sim=st.lists(sims, max_size=3),
    docs=st.lists(documents, max_size=5),
    closed=st.one_of(st.none(), st.sampled_from(DAYS)),
    summary=st.sampled_from([None, "COMPLETED", "ON_TREATMENT"]),
    kind=st.sampled_from(["conventional", "conventional", "sbrt"]),
)


def evaluate(facts: CourseFacts) -> object:
    evaluation = evaluate_course(facts, RULES, SETTINGS, MEDICARE, as_of=AS_OF)
    return (evaluation.charges, evaluation.bundled, evaluation.unresolved, evaluation.status)


def shuffled(draw: st.DataObject, items: tuple) -> tuple:
    return tuple(draw.draw(st.permutations(list(items))))


@settings(max_examples=150, deadline=None)
@given(facts=courses, data=st.data())
def test_reordering_facts_never_changes_the_charges(
    facts: CourseFacts, data: st.DataObject
) -> None:
    reordered = replace(
        facts,
        records=shuffled(data, facts.records),
        reviews=shuffled(data, facts.reviews),
        simulations=shuffled(data, facts.simulations),
        documents=shuffled(data, facts.documents),
        plans=shuffled(data, facts.plans),
    )
    assert evaluate(reordered) == evaluate(facts)


@settings(max_examples=150, deadline=None)
@given(facts=courses, data=st.data())
def test_duplicating_or_replaying_facts_never_changes_the_charges(
    facts: CourseFacts, data: st.DataObject
) -> None:
    def replay(items: tuple) -> tuple:
        extra = data.draw(st.lists(st.sampled_from(items), max_size=5)) if items else []
        return shuffled(data, items + tuple(extra))

    replayed = replace(
        facts,
        records=replay(facts.records),
        reviews=replay(facts.reviews),
        simulations=replay(facts.simulations),
        documents=replay(facts.documents),
        plans=replay(facts.plans),
        closures=replay(facts.closures),
        summaries=replay(facts.summaries),
    )
    assert evaluate(replayed) == evaluate(facts)


@settings(max_examples=100, deadline=None)
@given(facts=courses)
def test_charges_are_never_negative_and_ids_unique(facts: CourseFacts) -> None:
    evaluation = evaluate_course(facts, RULES, SETTINGS, MEDICARE, as_of=AS_OF)
    ids = [c.id for c in evaluation.charges]
    assert len(ids) == len(set(ids))
    assert all(c.units >= 1 for c in evaluation.charges)
    assert all((c.status == "hold") == (c.hold_reason is not None) for c in evaluation.charges)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 40), extra=st.integers(0, 12))
def test_more_fractions_never_fewer_77427_units(n: int, extra: int) -> None:
    """Resume after a close: units are the running maximum (no automatic refund)."""
    days = [
        d for d in DAYS + [DAYS[-1] + timedelta(days=i) for i in range(1, 60)] if d.weekday() < 5
    ]
    first = tuple(record(i + 1, at(days[i])) for i in range(n))
    closed = StaffClosure(days[n - 1], "audit") if n else None
    base = CourseFacts(
        course_id="course:1",
        patient_id="P1",
        plans=(plan(fractions=100),),
        records=first,
        closures=(closed,) if closed else (),
    )
    more = replace(
        base, records=first + tuple(record(n + i + 1, at(days[n + 5 + i])) for i in range(extra))
    )

    def units(facts: CourseFacts) -> int:
        charges = evaluate_course(
            facts, RULES, SETTINGS, MEDICARE, as_of=days[n] if n else DAYS[0]
        ).charges
        return sum(c.units for c in charges if c.cpt == "77427")

    assert units(more) >= units(base)
