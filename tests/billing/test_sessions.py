"""Session counting: distinct treatment sessions, not sums of fraction numbers
(domain-dicom.md s. 4.2; CMS Pub 100-04 Ch. 13 s. 70)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from services.billing.domain import BillingSettings, TreatmentRecordFacts, count_sessions
from tests.billing.factories import MONDAY_2026, NY, SETTINGS, at, record

TUE = MONDAY_2026 + timedelta(days=1)


def count(records: list[TreatmentRecordFacts], settings: BillingSettings = SETTINGS) -> int:
    return len(count_sessions(records, settings))


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(
            [
                record(1, at(MONDAY_2026, "09:00"), group=1),
                record(1, at(MONDAY_2026, "09:12"), group=2),
            ],
            1,
            id="concurrent-boost-groups-one-session[domain-dicom 4.2]",
        ),
        pytest.param(
            [record(1, at(MONDAY_2026, "08:00")), record(2, at(MONDAY_2026, "14:00"))],
            2,
            id="bid-with-6h-break-two-sessions[CMS 100-04 Ch13 s70]",
        ),
        pytest.param(
            [record(1, at(MONDAY_2026, "08:00")), record(2, at(MONDAY_2026, "13:59"))],
            1,
            id="bid-without-distinct-break-one-session[CMS 100-04 Ch13 s70]",
        ),
        pytest.param(
            [
                record(7, at(MONDAY_2026, "09:00"), uid="a", partial=True),
                record(7, at(TUE, "09:00"), uid="b"),
            ],
            1,
            id="interrupted-fraction-resumed-next-day-is-one[DICOM C.8.8.21.2.1]",
        ),
        pytest.param(
            [
                record(None, at(MONDAY_2026, "09:00"), uid="a", partial=True),
                record(None, at(TUE, "09:00"), uid="b", refs=("a",)),
            ],
            1,
            id="continuation-by-referenced-record-is-one[DICOM 3008,0030]",
        ),
        pytest.param(
            [record(1, at(MONDAY_2026), origin="SIMULATION")],
            0,
            id="simulation-content-origin-is-not-treatment[DICOM 300A,0709]",
        ),
        pytest.param(
            [record(1, at(MONDAY_2026), delivered=False)],
            0,
            id="record-without-dose-is-not-treatment",
        ),
        pytest.param(
            [record(1, at(MONDAY_2026), uid="a"), record(1, at(MONDAY_2026), uid="a", revision=2)],
            1,
            id="revisions-of-one-record-count-once",
        ),
        pytest.param(
            [
                record(1, at(MONDAY_2026, "09:00"), uid="a"),
                record(2, at(MONDAY_2026, "09:20"), uid="b"),
            ],
            1,
            id="two-fraction-numbers-without-break-one-session",
        ),
    ],
)
def test_sessions(records: list[TreatmentRecordFacts], expected: int) -> None:
    assert count(records) == expected


def test_bid_threshold_is_a_setting() -> None:
    records = [record(1, at(MONDAY_2026, "08:00")), record(2, at(MONDAY_2026, "12:00"))]
    assert count(records) == 1
    assert count(records, replace(SETTINGS, bid_break=timedelta(hours=4))) == 2


@pytest.mark.parametrize(("count_partial", "expected"), [(True, 2), (False, 1)])
def test_partial_fraction_policy(count_partial: bool, expected: int) -> None:
    records = [record(1, at(MONDAY_2026), partial=True), record(2, at(TUE))]
    assert count(records, replace(SETTINGS, count_partial_fractions=count_partial)) == expected


def test_resumed_fraction_is_whole_even_when_partial_fractions_do_not_count() -> None:
    records = [
        record(3, at(MONDAY_2026), uid="a", partial=True),
        record(3, at(TUE), uid="b", partial=False),
    ]
    sessions = count_sessions(records, replace(SETTINGS, count_partial_fractions=False))
    assert len(sessions) == 1
    assert sessions[0].day == MONDAY_2026  # the fraction began on Monday


def test_session_day_is_the_clinic_local_day() -> None:
    late = at(MONDAY_2026, "21:30")  # 02:30 UTC the next day
    assert late.date() == TUE
    (session,) = count_sessions([record(1, late)], SETTINGS)
    assert session.day == MONDAY_2026
    assert session.started_at.astimezone(NY).hour == 21


def test_session_ids_and_evidence() -> None:
    records = [record(1, at(MONDAY_2026, "08:00")), record(2, at(MONDAY_2026, "15:00"))]
    first, second = count_sessions(records, SETTINGS)
    assert (first.id, second.id) == ("2026-03-02#1", "2026-03-02#2")
    assert first.evidence == (records[0].event_id,)
