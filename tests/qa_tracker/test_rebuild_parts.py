"""The pure parts of a rebuild, without I/O: fraction keys, approval placement, derivation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.qa_tracker.approvals import plan_placements
from services.qa_tracker.derive import Approval, derive
from services.qa_tracker.keys import FractionKey, keys_of_record
from services.qa_tracker.scope import Scope
from tests.events import NY, at

START = at("2026-11-23", "08:00")


@dataclass
class Record:
    record_uid: str = "1.2.3"
    patient_id: str = "P|1"  # the separator inside a patient ID survives
    plan_uid: str | None = "1.2.840.1"
    fraction_group: int | None = 2
    fraction_numbers: list[int] | None = field(default_factory=lambda: [7])
    patient_name: str | None = "Phantom"
    machine: str | None = "TrueBeam1"
    started_at: datetime = START
    ended_at: datetime = START + timedelta(minutes=8)
    partial: bool = False
    therapist_override: bool = False


@dataclass
class Series:
    series_uid: str
    acquired_at: datetime
    machine: str | None = "TrueBeam1"
    classification: str = "cbct"
    approvals: list[dict[str, Any]] = field(default_factory=list)


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (FractionKey("P-1", "1.2.840.1", 1, 5), "P-1|1.2.840.1|1|5"),
        (FractionKey("P|1", "record:1.2.3", 1, None), "P|1|record:1.2.3|1|"),
    ],
)
def test_a_fraction_key_is_its_stored_text(key: FractionKey, text: str) -> None:
    assert str(key) == text
    assert FractionKey.parse(text) == key


def test_a_record_names_one_key_per_fraction_number() -> None:
    assert keys_of_record(Record(fraction_numbers=[7, 8])) == [
        FractionKey("P|1", "1.2.840.1", 2, 7),
        FractionKey("P|1", "1.2.840.1", 2, 8),
    ]
    (no_plan,) = keys_of_record(Record(plan_uid=None, fraction_group=None, fraction_numbers=[]))
    assert no_plan == FractionKey("P|1", "record:1.2.3", 1, None)
    assert no_plan.plan_uid is None


def _approval(image: str, key: str) -> Approval:
    return Approval(image, key, "Oncologist^Olga", at("2026-11-23", "10:00"))


def test_approvals_stay_move_go_or_arrive() -> None:
    plan = plan_placements(
        {"kept": "a", "moved": "a", "gone": "b", "outside": None},
        {
            "kept": _approval("kept", "a"),
            "moved": _approval("moved", "c"),
            "outside": _approval("outside", "a"),
            "new": _approval("new", "b"),
        },
    )
    assert plan.keep == [("kept", "a")]
    assert plan.move == [("moved", "c", "a"), ("outside", "a", None)]
    assert plan.remove == [("gone", "b")]
    assert [a.sop_uid for a in plan.add] == ["new"]
    assert plan.touched() == {"a", "b", "c"}


def test_derive_returns_fractions_matches_and_approvals() -> None:
    approved = {
        "sop_instance_uid": "5.5.1",
        "status": "APPROVED",
        "reviewer_name": "Oncologist^Olga",
        "reviewed_at": at("2026-11-23", "10:00").isoformat(),
    }
    derived = derive(
        "P|1",
        scope=Scope(whole=True),
        records=[Record()],
        sessions=[Series("9.9.1", at("2026-11-23", "07:55"), approvals=[approved])],
        named_sessions=[],
        registrations=[],
        plans={},
        timeline=[],
        zone=NY,
        imaging_devices={},
    )
    key = "P|1|1.2.840.1|2|7"
    assert list(derived.fractions) == [key]
    values = derived.fractions[key]
    assert values["fraction_number"] == 7 and values["imaged"]
    assert values["imaging"] == ["cbct"] and values["next_fraction_at"] is None
    assert derived.session_matches == {"9.9.1": key}
    assert derived.approvals == {
        "5.5.1": Approval("5.5.1", key, "Oncologist^Olga", at("2026-11-23", "10:00"))
    }
