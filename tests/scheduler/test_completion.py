"""Simulation CTs complete bookings: once per booking however many series (a 4D-CT is many) or
re-publications of a growing series arrive, only from a CT simulator, and a simulation CT with
no booking that day is flagged. ``rtops.scheduler.sim.completed`` carries what billing needs."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.scheduler.schemas import RequestIn
from services.scheduler.service import Proposal, SchedulerService
from services.scheduler.store import BookingRow, DeviceTypeRow, Outbox, RequestRow, UnbookedScan
from shared.auth import Principal
from shared.events import (
    BookingChanged,
    CloudEvent,
    ImagingAcquired,
    Patient,
    SimCompleted,
    SourceDevice,
    envelope,
    parse_event,
)
from tests.events import at
from tests.scheduler.test_api import BASE

WHO = Principal(user="sam", roles=frozenset({"scheduler"}))
CTSIM = SourceDevice(ae_title="CTSIM1", role="ct_simulator", machine="CTSim1", site="Main")
TPS = SourceDevice(ae_title="TPS1", role="tps")


def scan(
    series: str,
    day: str = "2026-11-30",
    hhmm: str = "10:05",
    *,
    pid: str = "SIM-001",
    count: int = 120,
    source: SourceDevice = CTSIM,
    classification: str = "sim_ct",
) -> CloudEvent:
    return envelope(
        ImagingAcquired(
            patient=Patient(id=pid, name="Phantom^Pelvis"),
            source=source,
            series_instance_uid=series,
            study_instance_uid="1.2.3.study",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            classification=classification,  # type: ignore[arg-type]
            instance_count=count,
            acquired_at=at(day, hhmm),
            machine=source.machine,
        ),
        source="rtops/scp_listener",
    )


def published(factory: sessionmaker[Session], kind: type = SimCompleted) -> list[Any]:
    with factory() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
    return [e.data for e in map(parse_event, (r.body for r in rows)) if isinstance(e.data, kind)]


def booked(service: SchedulerService, **requirements: object) -> BookingRow:
    request = service.create_request(
        RequestIn.model_validate({**BASE, "site": "lung", "requirements": requirements}), WHO
    )
    return service.book(request.id, Proposal(at("2026-11-30", "10:00"), "ctsim1"), WHO)


def test_a_4d_ct_completes_its_booking_once(
    service: SchedulerService, factory: sessionmaker[Session]
) -> None:
    booking = booked(service, four_d_ct=True, immobilization=["vacuum_bag"])
    phases = [scan(f"1.2.3.{i}") for i in range(10)]
    assert service.apply_batch(phases[:4]) == 4
    assert service.apply_batch(phases) == 6  # redelivered ones change nothing
    assert service.apply(scan("1.2.3.0", count=240)) is True  # the series grew: re-published
    (event,) = published(factory)
    assert (event.booking_id, event.revision, event.cancelled) == (booking.id, 1, False)
    assert (event.complexity, event.four_d_ct, event.iv_contrast) == ("complex", True, False)
    assert event.immobilization == ("vacuum bag (vac-lok)",)
    assert event.service_date == date(2026, 11, 30)
    assert event.performed_at == at("2026-11-30", "10:05")
    assert (event.site, event.room, event.treating_physician) == (
        "lung",
        "ctsim1",
        "Oncologist^Olga",
    )
    assert event.patient.id == "SIM-001"
    with factory() as session:
        row = session.get(BookingRow, booking.id)
        assert row is not None
        assert (row.status, row.revision) == ("completed", 1)
        assert len(row.series_instance_uids) == 10
        request = session.get(RequestRow, booking.request_id)
        assert request is not None and request.status == "completed"
        # the vacuum bag made for the patient left the stock (10 in the seed)
        bag = session.get(DeviceTypeRow, "vacuum_bag")
        assert bag is not None and bag.stock == 9


def test_only_a_ct_simulator_completes_and_other_days_are_flagged(
    service: SchedulerService, factory: sessionmaker[Session]
) -> None:
    booked(service)
    service.apply_batch(
        [
            scan("9.1", source=TPS),  # a copy from the planning system
            scan("9.2", classification="cbct"),
            scan("9.3", day="2026-12-01"),  # the day after: no booking that day
            scan("9.4", pid="SIM-999"),  # another patient
        ]
    )
    assert published(factory) == []
    with factory() as session:
        flagged = session.scalars(select(UnbookedScan).order_by(UnbookedScan.series_instance_uid))
        assert [(f.series_instance_uid, f.patient_id) for f in flagged] == [
            ("9.3", "SIM-001"),
            ("9.4", "SIM-999"),
        ]
    # A grown flagged series stays one flag.
    service.apply(scan("9.4", pid="SIM-999", count=300))
    with factory() as session:
        row = session.get(UnbookedScan, "9.4")
        assert row is not None and row.instance_count == 300


def test_cancelling_a_completed_booking_retracts_it(
    service: SchedulerService, factory: sessionmaker[Session]
) -> None:
    booking = booked(service, iv_contrast=False)
    service.apply(scan("1.2.3.1"))
    service.cancel_booking(booking.id, "wrong patient scanned", WHO)
    first, retraction = published(factory)
    assert (first.revision, first.cancelled) == (1, False)
    assert (retraction.revision, retraction.cancelled) == (2, True)
    assert retraction.booking_id == booking.id


def test_simple_and_intermediate(service: SchedulerService, factory: sessionmaker[Session]) -> None:
    booked(service, immobilization=["knee_support"])
    service.apply(scan("1.2.3.1"))
    (event,) = published(factory)
    assert event.complexity == "intermediate"


def test_reusable_devices_return_and_flags_resolve(
    service: SchedulerService, factory: sessionmaker[Session]
) -> None:
    from services.scheduler.store import ReservationRow

    booking = booked(service, immobilization=["knee_support"])
    service.apply(scan("1.2.3.1"))
    with factory() as session:
        held = session.scalars(select(ReservationRow).where(ReservationRow.active)).all()
        assert [r.device_type for r in held] == ["knee_support"]  # reusable: still held
    service.return_devices(booking.id, "course finished", WHO)
    with factory() as session:
        assert session.scalars(select(ReservationRow).where(ReservationRow.active)).all() == []
    service.apply(scan("7.7", pid="SIM-777"))
    service.resolve_scan("7.7", "test scan of the phantom", WHO)
    with factory() as session:
        row = session.get(UnbookedScan, "7.7")
        assert row is not None
        assert (row.resolved, row.resolved_by, row.resolution) == (
            True,
            "sam",
            "test scan of the phantom",
        )


def test_booking_changes_are_state_events_with_revisions(
    service: SchedulerService, factory: sessionmaker[Session]
) -> None:
    first = booked(service)
    moved = service.reschedule(
        first.id, Proposal(at("2026-12-02", "10:00"), "ctsim1"), "asked", WHO
    )
    service.apply(scan("1.2.3.1", day="2026-12-02"))
    states = [
        (e.booking_id, e.revision, e.status, e.reason) for e in published(factory, BookingChanged)
    ]
    assert states == [
        (first.id, 1, "booked", None),
        (first.id, 2, "cancelled", "asked"),
        (moved.id, 1, "booked", None),
        (moved.id, 2, "completed", None),
    ]
    last = published(factory, BookingChanged)[-1]
    assert (last.room, last.machine, last.site, last.urgency) == (
        "ctsim1",
        "CTSim1",
        "lung",
        "routine",
    )
    assert last.start == at("2026-12-02", "10:00")
    # The order's referring physician travels with the booking (the documents service
    # addresses the treatment-start letter to them).
    assert last.referring_physician and all(
        e.referring_physician == last.referring_physician
        for e in published(factory, BookingChanged)
    )
