"""The template filters of the staff pages (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.ui.filters import clinic_time, iso_instant, person_name


@pytest.mark.parametrize(
    ("dicom", "shown"),
    [
        ("Oncologist^Olga", "Olga Oncologist"),
        ("Smith^John^A^Dr.^MD", "Dr. John A Smith, MD"),
        ("Smith^John^^^", "John Smith"),
        ("Smith", "Smith"),
        ("^Cher", "Cher"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Tarou Yamada"),
        ("Olga Oncologist", "Olga Oncologist"),  # not DICOM: kept
        ("", ""),
        (None, ""),
    ],
)
def test_person_name_as_people_write_it(dicom: str | None, shown: str) -> None:
    assert person_name(dicom) == shown


@pytest.mark.parametrize(
    ("instant", "shown"),
    [
        (datetime(2026, 11, 23, 12, 0, tzinfo=UTC), "Mon 23 Nov 07:00"),  # EST, UTC-5
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), "Wed 01 Jul 08:00"),  # EDT, UTC-4
        (datetime(2026, 11, 23, 12, 0), "Mon 23 Nov 07:00"),  # naive: UTC, as stored
    ],
)
def test_clinic_time_is_the_clinics_wall_clock(instant: datetime, shown: str) -> None:
    assert clinic_time(instant, "America/New_York") == shown


def test_clinic_time_format_and_missing() -> None:
    moment = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # the night DST starts in New York
    assert clinic_time(moment, "America/New_York", "%Y-%m-%d %H:%M %Z") == "2026-03-08 03:30 EDT"
    assert clinic_time(None, "America/New_York") == ""
    assert iso_instant(datetime(2026, 11, 23, 12, 0)) == "2026-11-23T12:00:00+00:00"
    assert iso_instant(None) == ""
