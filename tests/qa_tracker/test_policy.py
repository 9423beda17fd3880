"""The policy file: defaults, the example file, holidays and validation."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.qa_tracker.domain import Coverage, Reviewers, Tolerance
from services.qa_tracker.policy import load_policy
from tests.support import REPO

EXAMPLE = REPO / "services" / "qa_tracker" / "review_policy.example.yaml"


def test_defaults_without_a_file() -> None:
    policy = load_policy(None, zone="America/New_York")
    assert policy.max_business_hours == 24 and policy.before_next_fraction
    assert policy.default_tolerance == Tolerance(5, 3)
    assert policy.tolerances["SBRT"] == Tolerance(2, 1)
    assert date(2026, 11, 26) in policy.calendar.closed_days  # Thanksgiving
    assert date(2031, 7, 4) in policy.calendar.closed_days  # any year, computed on demand
    assert not policy.calendar.is_business_day(date(2026, 11, 28))  # Saturday


def test_the_example_file_is_the_defaults() -> None:
    example = load_policy(EXAMPLE, zone="America/New_York")
    defaults = load_policy(None, zone="America/New_York")
    assert (example.max_business_hours, example.default_tolerance, dict(example.tolerances)) == (
        defaults.max_business_hours,
        defaults.default_tolerance,
        dict(defaults.tolerances),
    )


def test_site_calendar(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "max_business_hours: 8\n"
        "calendar: {holidays_country: null, closed_days: [2026-12-24], workdays: [mon, tue]}\n"
    )
    policy = load_policy(path, zone="Europe/Berlin")
    assert policy.max_business_hours == 8
    assert date(2026, 12, 24) in policy.calendar.closed_days
    assert date(2026, 12, 25) not in policy.calendar.closed_days
    assert policy.calendar.is_business_day(date(2026, 11, 24))  # a Tuesday
    assert not policy.calendar.is_business_day(date(2026, 11, 25))  # a Wednesday


@pytest.mark.parametrize(
    "text",
    [
        "max_business_hours: -1\n",
        "tolerances: {SBRT: {translation_mm: 0, rotation_deg: 1}}\n",
        "calendar: {workdays: [someday]}\n",
        "unknown_key: 1\n",
    ],
)
def test_invalid_policy_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError):
        load_policy(path, zone="America/New_York")


def test_who_may_review_and_the_backdate_tolerance_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "backdate_tolerance_minutes: 15\n"
        "reviewers: covering\n"
        "coverage:\n"
        "  - {physician: Oncologist^Olga, covered_by: [Oncologist^Omar], "
        "from: 2026-12-21, to: 2026-12-31}\n"
    )
    policy = load_policy(path, zone="America/New_York")
    assert policy.backdate_tolerance == timedelta(minutes=15)
    assert policy.reviewers == Reviewers.COVERING
    assert policy.coverage == (
        Coverage("Oncologist^Olga", ("Oncologist^Omar",), date(2026, 12, 21), date(2026, 12, 31)),
    )


def test_the_example_file_has_the_review_defaults() -> None:
    example = load_policy(EXAMPLE, zone="America/New_York")
    defaults = load_policy(None, zone="America/New_York")
    assert (example.backdate_tolerance, example.reviewers, tuple(example.coverage)) == (
        defaults.backdate_tolerance,
        defaults.reviewers,
        (),
    )


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("reviewers: anyone\n", "reviewers"),
        ("backdate_tolerance_minutes: -1\n", "backdate_tolerance_minutes"),
        ("backdate_tolerance_minutes: 50000\n", "backdate_tolerance_minutes"),
        (
            "coverage: [{physician: A^B, covered_by: [C^D], from: 2026-12-31, to: 2026-12-01}]\n",
            "'to' is before 'from'",
        ),
        (
            "coverage: [{physician: A^B, covered_by: [], from: 2026-12-01, to: 2026-12-02}]\n",
            "covered_by",
        ),
        ("coverage: [{physician: A^B, covered_by: [C^D], from: 2026-12-01}]\n", "to"),
        (
            "coverage: [{physician: A^B, covered_by: [C^D], from: 2026-12-01, to: 2026-12-02, "
            "x: 1}]\n",
            "x",
        ),
    ],
)
def test_a_bad_review_setting_is_refused(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=error):
        load_policy(path, zone="America/New_York")
