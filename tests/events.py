"""Event builders for every service's tests: a patient's treatment as the SCP would publish
it (plans, treatment records, imaging series, registrations), simulations as the scheduler
would, with sensible defaults. Synthetic data only; times in the clinic's zone (New York).
The demo and the benchmarks use these too, so there is one generator of traffic."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.events import (
    BeamDelivery,
    CloudEvent,
    ImageApproval,
    ImagingAcquired,
    Patient,
    PlanReceived,
    RegistrationReceived,
    SimCompleted,
    SourceDevice,
    StoredObject,
    TreatmentRecorded,
    Vector3,
    envelope,
)

NY = ZoneInfo("America/New_York")
LINAC = SourceDevice(ae_title="TRUEBEAM1", role="linac", machine="TrueBeam1", site="Main")
TPS = SourceDevice(ae_title="TPS1", role="tps")
PLAN_UID = "1.2.826.0.1.3680043.10.1.1"


def at(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=NY)


def patient(pid: str = "QA-001") -> Patient:
    return Patient(id=pid, name="Phantom^Pelvis")


def obj(
    uid: str, revision: int = 1, sop_class: str = "1.2.840.10008.5.1.4.1.1.481.4"
) -> StoredObject:
    return StoredObject(
        sop_class_uid=sop_class,
        sop_instance_uid=uid,
        storage_key=f"k/{uid}",
        revision=revision,
        sha256="0" * 64,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def plan_event(
    *,
    plan_uid: str = PLAN_UID,
    pid: str = "QA-001",
    label: str = "PROST",
    physician: str | None = "Oncologist^Olga",
    intent: str = "CURATIVE",
    site: str | None = "Prostate",
    revision: int = 1,
) -> CloudEvent:
    return envelope(
        PlanReceived(
            patient=patient(pid),
            source=TPS,
            object=obj(plan_uid, revision, sop_class="1.2.840.10008.5.1.4.1.1.481.5"),
            ion=False,
            label=label,
            intent=intent,
            treatment_site=site,
            approval_status="APPROVED" if physician else "UNAPPROVED",
            reviewer_name=physician,
        ),
        source="rtops/scp_listener",
    )


def record_event(
    fraction: int,
    day: str,
    hhmm: str = "08:00",
    *,
    pid: str = "QA-001",
    plan_uid: str | None = PLAN_UID,
    uid: str | None = None,
    minutes: int = 8,
    machine: str = "TrueBeam1",
    revision: int = 1,
    origin: str = "DEVICE",
    delivered: bool = True,
) -> CloudEvent:
    start = at(day, hhmm)
    beam = BeamDelivery(
        beam_number=1,
        delivery_type="TREATMENT",
        current_fraction_number=fraction,
        termination_status="NORMAL",
        specified_meterset=100,
        delivered_meterset=100 if delivered else 0,
        started_at=start,
        ended_at=start + timedelta(minutes=minutes),
    )
    return envelope(
        TreatmentRecorded(
            patient=patient(pid),
            source=LINAC,
            object=obj(uid or f"1.2.3.{pid}.{fraction}.{day}", revision),
            record_kind="beams",
            treated_at=start,
            treated_at_source="treatment_date",
            content_origin=origin,
            plan_uid=plan_uid,
            machine=machine,
            fraction_group_number=1,
            fractions_planned=25,
            fraction_numbers=(fraction,),
            delivered=delivered,
            partial=False,
            beams=(beam,),
        ),
        source="rtops/scp_listener",
    )


def imaging_event(
    series_uid: str,
    day: str,
    hhmm: str = "07:55",
    *,
    pid: str = "QA-001",
    count: int = 88,
    classification: str = "cbct",
    machine: str = "TrueBeam1",
    approvals: tuple[ImageApproval, ...] = (),
) -> CloudEvent:
    return envelope(
        ImagingAcquired(
            patient=patient(pid),
            source=LINAC,
            series_instance_uid=series_uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            classification=classification,  # type: ignore[arg-type]
            instance_count=count,
            acquired_at=at(day, hhmm),
            machine=machine,
            approvals=approvals,
        ),
        source="rtops/scp_listener",
    )


def registration_event(
    uid: str,
    series_uid: str | None,
    day: str,
    hhmm: str = "07:58",
    *,
    pid: str = "QA-001",
    shift_mm: tuple[float, float, float] = (1.0, -2.0, 0.5),
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.5),
) -> CloudEvent:
    return envelope(
        RegistrationReceived(
            patient=patient(pid),
            source=LINAC,
            object=obj(uid, sop_class="1.2.840.10008.5.1.4.1.1.66.1"),
            kind="rigid",
            content_at=at(day, hhmm),
            creator_name="Therapist^Tina",
            moving_series_uids=(series_uid,) if series_uid else (),
            translation_mm=Vector3(x=shift_mm[0], y=shift_mm[1], z=shift_mm[2]),
            rotation_deg=Vector3(x=rotation_deg[0], y=rotation_deg[1], z=rotation_deg[2]),
        ),
        source="rtops/scp_listener",
    )


def imaged_day(
    fraction: int,
    day: str,
    hhmm: str = "08:00",
    *,
    pid: str = "QA-001",
    shift_mm: tuple[float, float, float] = (1.0, -2.0, 0.5),
) -> list[CloudEvent]:
    """A CBCT, its match and the fraction's record, in the order a linac sends them."""
    series = f"9.9.{pid}.{day}.{hhmm}"
    start = at(day, hhmm)
    cbct_at = (start - timedelta(minutes=5)).astimezone(NY).strftime("%H:%M")
    reg_at = (start - timedelta(minutes=2)).astimezone(NY).strftime("%H:%M")
    return [
        imaging_event(series, day, cbct_at, pid=pid),
        registration_event(
            f"8.8.{pid}.{day}.{hhmm}", series, day, reg_at, pid=pid, shift_mm=shift_mm
        ),
        record_event(fraction, day, hhmm, pid=pid),
    ]


def sim_completed_event(
    booking_id: str = "book-1",
    day: str = "2026-11-16",
    *,
    pid: str = "QA-001",
    complexity: str = "intermediate",
    revision: int = 1,
    four_d_ct: bool = False,
    iv_contrast: bool = False,
    cancelled: bool = False,
) -> CloudEvent:
    """A simulation CT as the scheduler will announce it (``rtops.scheduler.sim.completed``)."""
    return envelope(
        SimCompleted(
            patient=patient(pid),
            request_id=f"req-{booking_id}",
            booking_id=booking_id,
            revision=revision,
            service_date=date.fromisoformat(day),
            performed_at=at(day, "09:00"),
            complexity=complexity,  # type: ignore[arg-type]
            four_d_ct=four_d_ct,
            iv_contrast=iv_contrast,
            immobilization=("vac-lok",),
            treating_physician="Oncologist^Olga",
            site="Prostate",
            cancelled=cancelled,
        ),
        source="rtops/scheduler",
        subject=booking_id,
    )


class Clock:
    """A settable clock for the service under test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
