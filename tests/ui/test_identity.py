"""The pages' pure helpers: who a user is in DICOM, and the timeline's days."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.auth import DEV_ISSUER
from shared.settings import RtopsSettings, StaffIdentity
from shared.ui.identity import staff_identity
from shared.ui.timeline import Entry, Timeline

OLGA = "Oncologist^Olga"
IDP = "https://idp.hospital.example/realms/rtops"


def settings(**identities: StaffIdentity) -> RtopsSettings:
    return RtopsSettings(ui_identities=identities)


def test_the_claim_wins_over_the_settings() -> None:
    s = settings(olga=StaffIdentity(dicom_names=["Old^Name"], npi="1"))
    who = staff_identity(s, "olga", DEV_ISSUER, {"dicom_names": [OLGA, " "], "npi": 1234567893})
    assert who == StaffIdentity(dicom_names=[OLGA], npi="1234567893")


def test_one_name_as_a_string_and_the_npi_from_settings() -> None:
    s = settings(olga=StaffIdentity(dicom_names=["Old^Name"], npi="1"))
    assert staff_identity(s, "olga", DEV_ISSUER, {"dicom_names": OLGA}) == StaffIdentity(
        dicom_names=[OLGA], npi="1"
    )


def test_mapped_by_the_subject_or_the_issuer_qualified_subject() -> None:
    s = settings(
        **{"sub-1": StaffIdentity(dicom_names=[OLGA]), f"{IDP}#sub-2": StaffIdentity(npi="2")}
    )
    assert staff_identity(s, "sub-1", IDP).dicom_names == [OLGA]
    assert staff_identity(s, "sub-2", IDP + "/").npi == "2"  # a trailing slash is the same
    assert staff_identity(s, "nobody", IDP) == StaffIdentity()


def test_never_by_a_name_or_address_the_user_may_change() -> None:
    """Issue 15: keys that are a username or an e-mail address map nobody by the claims the
    user controls; only the subject is looked up."""
    s = settings(
        **{
            "olga": StaffIdentity(dicom_names=[OLGA]),
            "olga@hospital.example": StaffIdentity(dicom_names=[OLGA]),
        }
    )
    claims = {"preferred_username": "olga", "email": "olga@hospital.example", "name": "olga"}
    assert staff_identity(s, "sub-mallory", IDP, claims) == StaffIdentity()


def test_a_claim_of_the_wrong_shape_is_no_names() -> None:
    assert staff_identity(settings(), "x", DEV_ISSUER, {"dicom_names": {"a": 1}}).dicom_names == []


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
