"""Event builders for QA tracker tests: a week of one patient's treatment as the SCP would
publish it, with sensible defaults (synthetic data)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from services.qa_tracker.app import SERVICE
from services.qa_tracker.policy import load_policy
from services.qa_tracker.service import QaService
from services.qa_tracker.settings import QaSettings
from services.qa_tracker.store import Outbox
from shared.db import drop_schema, make_engine, migrate, session_factory
from shared.events import (
    BeamDelivery,
    CloudEvent,
    ImageApproval,
    ImagingAcquired,
    Patient,
    PlanReceived,
    RegistrationReceived,
    SourceDevice,
    StoredObject,
    TreatmentRecorded,
    Vector3,
    envelope,
)
from shared.outbox import outbox_info

NY = ZoneInfo("America/New_York")
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "qa_tracker" / "migrations"
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


def sub_database(base_settings: dict[str, object], tag: str) -> dict[str, object]:
    """Settings for one more database in the same test (a schema or a SQLite file of its own)."""
    return {
        **base_settings,
        "database_schema_prefix": f"{base_settings['database_schema_prefix']}{tag}_",
        "var_dir": base_settings["var_dir"] / tag,  # type: ignore[operator]
    }


@contextmanager
def qa_database(
    base_settings: dict[str, object],
) -> Iterator[tuple[QaSettings, sessionmaker[Session]]]:
    """A migrated QA tracker database of the test's own (dropped afterwards on PostgreSQL)."""
    settings = QaSettings(**base_settings)  # type: ignore[arg-type]
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    try:
        yield settings, session_factory(engine, **outbox_info(Outbox, SERVICE))
    finally:
        drop_schema(engine, settings, SERVICE)
        engine.dispose()


class Clock:
    """A settable clock for the service under test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_service(settings: QaSettings, factory: sessionmaker[Session], clock: Clock) -> QaService:
    return QaService(
        factory=factory, policy=load_policy(None, zone="America/New_York"), clock=clock
    )
