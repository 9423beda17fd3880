"""Course end, the five-fraction units and re-evaluation on resume (CMS Pub 100-04 Ch. 13
s. 70; CCI 2006 for 77336)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from services.billing.domain import (
    StaffClosure,
    SummaryFacts,
    closed_units,
    course_status,
    evaluate_course,
)
from services.billing.domain.course_end import earned_blocks
from services.billing.domain.facts import CourseFacts
from services.billing.domain.policy import RemainderPolicy
from services.billing.domain.sessions import count_sessions
from tests.billing.factories import (
    MEDICARE,
    MONDAY_2026,
    RULES,
    SETTINGS,
    course,
    daily,
    plan,
    treatment_days,
    weekly_notes,
)

LATER = date(2027, 1, 1)


def units(facts: CourseFacts, code: str, as_of: date = LATER) -> int:
    evaluation = evaluate_course(facts, RULES, SETTINGS, MEDICARE, as_of=as_of)
    return sum(c.units for c in evaluation.charges if c.cpt == code)


def closed_course(n: int, **kw: object) -> CourseFacts:
    return course(
        plans=(plan(fractions=n),), records=daily(n), documents=weekly_notes(MONDAY_2026, 20), **kw
    )


# ---------------------------------------------------------------- the CMS worked examples


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        pytest.param(18, 4, id="18fx-4units[CMS 100-04 Ch13 s70 example]"),
        pytest.param(62, 12, id="62fx-12units[CMS 100-04 Ch13 s70 example]"),
        pytest.param(8, 2, id="8fx-2units[CMS 100-04 Ch13 s70 example]"),
        pytest.param(6, 1, id="6fx-1unit[CMS 100-04 Ch13 s70 example]"),
        pytest.param(5, 1, id="5fx-1unit[CMS 100-04 Ch13 s70]"),
        pytest.param(4, 1, id="4fx-1unit-remainder-3-4[CMS 100-04 Ch13 s70]"),
        pytest.param(3, 1, id="3fx-1unit[NIA standard: 3 needed]"),
        pytest.param(2, 0, id="2fx-no-77427[CPT 77431 instead]"),
        pytest.param(1, 0, id="1fx-no-77427[CPT 77431 instead]"),
        pytest.param(12, 2, id="12fx-1-2-leftover-not-billed[CMS 100-04 Ch13 s70]"),
        pytest.param(13, 3, id="13fx-3-leftover-billed[CMS 100-04 Ch13 s70]"),
    ],
)
def test_77427_units_through_the_engine(fractions: int, expected: int) -> None:
    assert units(closed_course(fractions), "77427") == expected


@pytest.mark.parametrize(("n", "expected"), [(18, 4), (62, 12), (8, 2), (6, 1), (0, 0), (10, 2)])
def test_closed_units(n: int, expected: int) -> None:
    assert closed_units(n) == expected


@pytest.mark.parametrize(
    ("fractions", "expected_77431", "expected_77427"),
    [
        pytest.param(1, 1, 0, id="whole-course-1fx[CPT 77431]"),
        pytest.param(2, 1, 0, id="whole-course-2fx[CPT 77431]"),
        pytest.param(7, 0, 1, id="never-for-leftover-of-long-course[CPT 77431; AAPC]"),
        pytest.param(3, 0, 1, id="3fx-is-77427[CMS 100-04 Ch13 s70]"),
    ],
)
def test_77431_only_for_a_whole_short_course(
    fractions: int, expected_77431: int, expected_77427: int
) -> None:
    facts = closed_course(fractions)
    assert units(facts, "77431") == expected_77431
    assert units(facts, "77427") == expected_77427


def test_open_course_earns_full_blocks_only() -> None:
    facts = course(
        plans=(plan(fractions=30),), records=daily(8), documents=weekly_notes(MONDAY_2026, 3)
    )
    as_of = treatment_days(MONDAY_2026, 8)[-1] + timedelta(days=1)
    assert units(facts, "77427", as_of) == 1


def test_short_open_course_earns_no_77431_yet() -> None:
    facts = course(plans=(plan(fractions=10),), records=daily(2))
    assert units(facts, "77431", as_of=MONDAY_2026 + timedelta(days=2)) == 0


# ---------------------------------------------------------------- what ends a course


def status_of(facts: CourseFacts, as_of: date = LATER) -> tuple[str, tuple[str, ...]]:
    sessions = count_sessions(facts.records, SETTINGS)
    status = course_status(facts, sessions, as_of=as_of, settings=SETTINGS)
    return status.state, tuple(p.reason for p in status.closures)


LAST_OF_8 = treatment_days(MONDAY_2026, 8)[-1]


@pytest.mark.parametrize(
    ("facts", "as_of", "expected"),
    [
        pytest.param(
            course(plans=(plan(fractions=8),), records=daily(8)),
            LAST_OF_8,
            ("closed", ("planned_delivered",)),
            id="planned-fractions-delivered",
        ),
        pytest.param(
            course(
                plans=(plan(fractions=30),),
                records=daily(8),
                summaries=(SummaryFacts("ev-sum", "COMPLETED", LAST_OF_8),),
            ),
            LAST_OF_8,
            ("closed", ("summary_record",)),
            id="summary-record-completed[DICOM C.8.8.23]",
        ),
        pytest.param(
            course(
                plans=(plan(fractions=30),),
                records=daily(8),
                summaries=(SummaryFacts("ev-sum", "STOPPED", LAST_OF_8),),
            ),
            LAST_OF_8,
            ("closed", ("summary_record",)),
            id="summary-record-stopped[DICOM C.8.8.23]",
        ),
        pytest.param(
            course(
                plans=(plan(fractions=30),),
                records=daily(8),
                summaries=(SummaryFacts("ev-sum", "ON_BREAK", LAST_OF_8),),
            ),
            LAST_OF_8,
            ("open", ()),
            id="summary-record-on-break-stays-open",
        ),
        pytest.param(
            course(
                plans=(plan(fractions=30),),
                records=daily(8),
                closures=(StaffClosure(LAST_OF_8, "audit-1"),),
            ),
            LAST_OF_8,
            ("closed", ("staff",)),
            id="closed-by-staff",
        ),
        pytest.param(
            course(plans=(plan(fractions=30),), records=daily(8)),
            LAST_OF_8 + timedelta(days=31),
            ("closed", ("inactivity",)),
            id="inactivity-beyond-30-days",
        ),
        pytest.param(
            course(plans=(plan(fractions=30),), records=daily(8)),
            LAST_OF_8 + timedelta(days=30),
            ("open", ()),
            id="inactivity-exactly-30-days-still-open",
        ),
        pytest.param(
            course(
                plans=(plan(fractions=30),),
                records=daily(8) + daily(2, LAST_OF_8 + timedelta(days=40), first_number=9),
            ),
            LAST_OF_8 + timedelta(days=43),
            ("open", ("inactivity",)),
            id="resumed-after-inactivity-reopens",
        ),
    ],
)
def test_course_end(facts: CourseFacts, as_of: date, expected: tuple[str, tuple[str, ...]]) -> None:
    assert status_of(facts, as_of) == expected


def test_superseded_plan_does_not_decide_completion() -> None:
    facts = course(
        plans=(plan("A", fractions=5), plan("B", fractions=10, predecessors=("A",))),
        records=daily(5, plan_uid="A"),
    )
    assert status_of(facts, LAST_OF_8)[0] == "open"


# ---------------------------------------------------------------- resume: only the difference


def test_resume_after_settled_remainder_charges_nothing_more() -> None:
    """CMS Pub 100-04 Ch. 13 s. 70: 8 fractions billed as 2 units, then 2 more by the same
    physician: still 2 units (10 fractions = 2)."""
    first = daily(8)
    closed_on = treatment_days(MONDAY_2026, 8)[-1]
    facts = course(
        plans=(plan(fractions=30),),
        records=first,
        closures=(StaffClosure(closed_on, "audit-1"),),
        documents=weekly_notes(MONDAY_2026, 10),
    )
    before = evaluate_course(facts, RULES, SETTINGS, MEDICARE, as_of=closed_on)
    resumed = replace(
        facts, records=first + daily(2, closed_on + timedelta(days=7), first_number=9)
    )
    after = evaluate_course(
        resumed, RULES, SETTINGS, MEDICARE, as_of=closed_on + timedelta(days=10)
    )
    ids_before = {c.id for c in before.charges if c.cpt == "77427"}
    ids_after = {c.id for c in after.charges if c.cpt == "77427"}
    assert len(ids_before) == 2
    assert ids_after == ids_before  # no new unit, none taken back


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(2, 2, id="8+2=10fx-still-2[CMS 100-04 Ch13 s70 resume]"),
        pytest.param(4, 2, id="8+4=12fx-open-2"),
        pytest.param(5, 3, id="8+5=13fx-closed-3-difference-1"),
        pytest.param(1, 2, id="8+1=9fx-never-negative"),
    ],
)
def test_resume_units_never_fall(extra: int, expected: int) -> None:
    first = daily(8)
    closed_on = treatment_days(MONDAY_2026, 8)[-1]
    resumed_from = closed_on + timedelta(days=7)
    facts = course(
        plans=(plan(fractions=8 + extra if extra == 5 else 30),),
        records=first + daily(extra, resumed_from, first_number=9),
        closures=(StaffClosure(closed_on, "audit-1"),),
        documents=weekly_notes(MONDAY_2026, 10),
    )
    assert units(facts, "77427", resumed_from + timedelta(days=8)) == expected


@pytest.mark.parametrize(
    ("policy", "fractions", "expected"),
    [
        pytest.param("mirror_77427", 7, 1, id="mirror-7fx-1[domain-billing 2.2 unconfirmed]"),
        pytest.param("mirror_77427", 8, 2, id="mirror-8fx-2[domain-billing 2.2 unconfirmed]"),
        pytest.param("any_remainder", 6, 2, id="any-remainder-6fx-2"),
        pytest.param("none", 9, 1, id="none-9fx-1"),
        pytest.param("none", 3, 1, id="course-under-five-always-1[CCI 2006 via ACOA]"),
        pytest.param("mirror_77427", 1, 1, id="course-of-1-gets-77336[CCI 2006 via ACOA]"),
        pytest.param("mirror_77427", 10, 2, id="per-five-fractions[CPT Assistant Fall 1991]"),
    ],
)
def test_77336_remainder_policy(policy: RemainderPolicy, fractions: int, expected: int) -> None:
    settings = replace(SETTINGS, physics_remainder_policy=policy)
    evaluation = evaluate_course(closed_course(fractions), RULES, settings, MEDICARE, as_of=LATER)
    assert sum(c.units for c in evaluation.charges if c.cpt == "77336") == expected


def test_earned_blocks_cover_the_remainder_sessions() -> None:
    facts = closed_course(8)
    sessions = count_sessions(facts.records, SETTINGS)
    status = course_status(facts, sessions, as_of=LATER, settings=SETTINGS)
    assert [(b.first, b.last) for b in earned_blocks(status, minimum=3)] == [(1, 5), (6, 8)]
