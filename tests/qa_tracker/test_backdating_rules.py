"""The rules of issue 15, pure and table-driven: when a review is backdated, how a backdated
review counts in a fraction's status and in the weekly tally, and who may review a fraction."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest

from services.qa_tracker.domain import (
    Coverage,
    Decision,
    FractionFacts,
    Review,
    Reviewers,
    ReviewPolicy,
    ReviewStatus,
    SummaryRow,
    is_backdated,
    may_review,
    tally,
    verdict,
)
from services.qa_tracker.policy import load_policy
from tests.events import at

POLICY = load_policy(None, zone="America/New_York")  # backdate tolerance 60 minutes
OLGA, OMAR, PAUL = "Oncologist^Olga", "Oncologist^Omar", "Oncologist^Paul"
TREATED = at("2026-11-23", "08:00")
NEXT = at("2026-11-24", "08:00")  # the due time: the next fraction


def reviewed(when: datetime, recorded: datetime | None) -> Review:
    return Review(Decision.APPROVED, when, OLGA, recorded_at=recorded)


def status(*reviews: Review, policy: ReviewPolicy = POLICY) -> ReviewStatus:
    facts = FractionFacts(TREATED, True, next_fraction_at=NEXT, reviews=reviews)
    return verdict(facts, policy).status


@pytest.mark.parametrize(
    ("gap", "backdated"),
    [
        (timedelta(0), False),
        (timedelta(minutes=60), False),  # the tolerance itself is allowed
        (timedelta(minutes=60, seconds=1), True),
        (timedelta(days=3), True),
    ],
)
def test_backdated_beyond_the_tolerance(gap: timedelta, backdated: bool) -> None:
    recorded = at("2026-11-24", "12:00")
    assert is_backdated(recorded - gap, recorded, POLICY) is backdated


def test_a_device_attested_review_is_never_backdated() -> None:
    """An RT Image approval (recorded_at None for the rules) carries its own review time."""
    assert not is_backdated(at("2026-11-20", "08:00"), None, POLICY)


def test_a_zero_tolerance_makes_any_earlier_time_backdated() -> None:
    strict = replace(POLICY, backdate_tolerance=timedelta(0))
    recorded = at("2026-11-24", "12:00")
    assert is_backdated(recorded - timedelta(seconds=1), recorded, strict)
    assert not is_backdated(recorded, recorded, strict)


@pytest.mark.parametrize(
    ("reviews", "expected"),
    [
        # Recorded when it happened, before the due time: on time.
        ([reviewed(at("2026-11-23", "15:00"), at("2026-11-23", "15:00"))], "reviewed_on_time"),
        # Dated 07:00, recorded 07:59 (within the tolerance, still before due): on time.
        ([reviewed(at("2026-11-24", "07:00"), at("2026-11-24", "07:59"))], "reviewed_on_time"),
        # Dated 07:30, recorded 08:30 (60 minutes: within the tolerance): on time by its date.
        ([reviewed(at("2026-11-24", "07:30"), at("2026-11-24", "08:30"))], "reviewed_on_time"),
        # Dated 07:30, recorded 08:31 (beyond the tolerance, after due): backdated.
        ([reviewed(at("2026-11-24", "07:30"), at("2026-11-24", "08:31"))], "reviewed_backdated"),
        # The case: days later, dated on time.
        ([reviewed(at("2026-11-23", "15:00"), at("2026-11-27", "12:00"))], "reviewed_backdated"),
        # Backdated but recorded before the due time anyway: on time (it was shown in time).
        ([reviewed(at("2026-11-23", "09:00"), at("2026-11-23", "20:00"))], "reviewed_on_time"),
        # Backdated, and dated after the due time too: late, as without backdating.
        ([reviewed(at("2026-11-24", "09:00"), at("2026-11-26", "12:00"))], "reviewed_late"),
        # Recorded late without backdating: late.
        ([reviewed(at("2026-11-24", "09:00"), at("2026-11-24", "09:00"))], "reviewed_late"),
        # A backdated review and a later one shown on time: on time.
        (
            [
                reviewed(at("2026-11-23", "09:00"), at("2026-11-25", "12:00")),
                reviewed(at("2026-11-23", "18:00"), at("2026-11-23", "18:00")),
            ],
            "reviewed_on_time",
        ),
        # An RT Image approval dated on time is on time, whenever it arrived.
        ([reviewed(at("2026-11-23", "15:00"), None)], "reviewed_on_time"),
    ],
)
def test_status_with_backdated_reviews(reviews: list[Review], expected: str) -> None:
    assert status(*reviews) == expected


def test_the_tolerance_comes_from_the_policy() -> None:
    review = reviewed(at("2026-11-24", "07:30"), at("2026-11-24", "10:00"))
    assert status(review) == "reviewed_backdated"
    lenient = replace(POLICY, backdate_tolerance=timedelta(hours=3))
    assert status(review, policy=lenient) == "reviewed_on_time"


def test_backdated_reviews_are_counted_apart_and_not_on_time() -> None:
    rows = [
        SummaryRow("TB1", OLGA, ReviewStatus.REVIEWED_ON_TIME, False, False, count=2),
        SummaryRow("TB1", OLGA, ReviewStatus.REVIEWED_BACKDATED, False, False, count=1),
        SummaryRow("TB1", OLGA, ReviewStatus.OVERDUE, False, False, count=1),
        SummaryRow("TB1", OLGA, ReviewStatus.NOT_IMAGED, False, False, count=5),
    ]
    t = tally(rows)
    assert (t.imaged_fractions, t.reviewed_on_time, t.reviewed_backdated) == (4, 2, 1)
    assert t.compliance_pct == 50.0  # on time only
    assert t.attested_compliance_pct == 75.0  # taking the backdated review at its word
    assert tally([]).attested_compliance_pct is None


DAY = date(2026, 11, 24)
COVER = Coverage(OLGA, (OMAR,), date(2026, 11, 23), date(2026, 11, 27))


@pytest.mark.parametrize(
    ("reviewers", "names", "physician", "day", "allowed"),
    [
        (Reviewers.OWN, (OLGA,), OLGA, DAY, True),
        (Reviewers.OWN, (OMAR,), OLGA, DAY, False),  # covering does not count under "own"
        (Reviewers.OWN, (), OLGA, DAY, False),  # not mapped to a DICOM name
        (Reviewers.OWN, (PAUL,), None, DAY, True),  # no physician: anyone
        (Reviewers.COVERING, (OLGA,), OLGA, DAY, True),
        (Reviewers.COVERING, (OMAR,), OLGA, DAY, True),
        (Reviewers.COVERING, (OMAR,), OLGA, date(2026, 11, 23), True),  # first day included
        (Reviewers.COVERING, (OMAR,), OLGA, date(2026, 11, 27), True),  # last day included
        (Reviewers.COVERING, (OMAR,), OLGA, date(2026, 11, 28), False),  # after the cover
        (Reviewers.COVERING, (OMAR,), OLGA, date(2026, 11, 22), False),  # before it
        (Reviewers.COVERING, (PAUL,), OLGA, DAY, False),  # not the one covering
        (Reviewers.COVERING, (OLGA,), OMAR, DAY, False),  # coverage goes one way
        (Reviewers.COVERING, ("Other^Name", OMAR), OLGA, DAY, True),  # any of their names
        (Reviewers.ANY, (PAUL,), OLGA, DAY, True),
        (Reviewers.ANY, (), OLGA, DAY, True),
    ],
)
def test_who_may_review(
    reviewers: Reviewers,
    names: tuple[str, ...],
    physician: str | None,
    day: date,
    allowed: bool,
) -> None:
    policy = replace(POLICY, reviewers=reviewers, coverage=(COVER,))
    reason = may_review(policy, names, physician, day)
    assert (reason is None) is allowed, reason
    if not allowed:
        assert reason


def test_the_default_is_covering() -> None:
    assert POLICY.reviewers == Reviewers.COVERING and POLICY.coverage == ()
    assert POLICY.backdate_tolerance == timedelta(hours=1)
