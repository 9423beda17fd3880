"""The pages' pure helpers: who a user is in DICOM, and the timeline's days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.settings import RtopsSettings, StaffIdentity
from shared.ui.identity import staff_identity
from shared.ui.timeline import Entry, Timeline

OLGA = "Oncologist^Olga"


def settings(**identities: StaffIdentity) -> RtopsSettings:
    return RtopsSettings(ui_identities=identities)


def test_the_claim_wins_over_the_settings() -> None:
    s = settings(olga=StaffIdentity(dicom_names=["Old^Name"], npi="1"))
    who = staff_identity(s, ["sub-1", "olga"], {"dicom_names": [OLGA, " "], "npi": 1234567893})
    assert who == StaffIdentity(dicom_names=[OLGA], npi="1234567893")


def test_one_name_as_a_string_and_the_npi_from_settings() -> None:
    s = settings(olga=StaffIdentity(dicom_names=["Old^Name"], npi="1"))
    assert staff_identity(s, ["olga"], {"dicom_names": OLGA}) == StaffIdentity(
        dicom_names=[OLGA], npi="1"
    )


def test_the_first_key_that_is_mapped() -> None:
    s = settings(
        **{"olga@hospital.example": StaffIdentity(dicom_names=[OLGA]), "sub-2": StaffIdentity()}
    )
    keys = ["sub-9", None, "olga@hospital.example"]
    assert staff_identity(s, keys).dicom_names == [OLGA]
    assert staff_identity(s, ["nobody"]) == StaffIdentity()


def test_a_claim_of_the_wrong_shape_is_no_names() -> None:
    assert staff_identity(settings(), ["x"], {"dicom_names": {"a": 1}}).dicom_names == []


def test_identities_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTOPS_UI_IDENTITIES", '{"olga": {"dicom_names": ["Oncologist^Olga"]}}')
    assert RtopsSettings().ui_identities["olga"].dicom_names == [OLGA]


def test_timeline_days_are_clinic_days_newest_first() -> None:
    """03:30 UTC on the 24th is still the 23rd in New York."""
    late = Entry(datetime(2026, 11, 24, 3, 30, tzinfo=UTC), "qa_tracker", "review", "late")
    morning = Entry(datetime(2026, 11, 23, 13, 0, tzinfo=UTC), "qa_tracker", "fraction", "am")
    next_day = Entry(datetime(2026, 11, 24, 14, 0, tzinfo=UTC), "qa_tracker", "fraction", "x")
    days = Timeline("P", [morning, next_day, late]).days("America/New_York")
    assert [(d.isoformat(), [e.title for e in es]) for d, es in days] == [
        ("2026-11-24", ["x"]),
        ("2026-11-23", ["late", "am"]),
    ]
