"""Event builders for the documents service's tests: plans with the facts a version keeps,
treatment records and Encapsulated PDFs, each at an event time the test chooses (the
service's "received at"). Synthetic data only; clinic zone New York."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from shared.events import (
    CloudEvent,
    FractionGroup,
    Patient,
    PlannedBeam,
    PlanReceived,
    PlanReference,
    envelope,
)
from shared.events.dicom import DocumentReceived
from tests.events import LINAC, TPS, at, obj, record_event

PID = "DOC-001"
MONDAY = date(2026, 3, 2)
SOURCE = "rtops/scp_listener"


def uid(n: int | str) -> str:
    return f"1.2.826.0.1.3680043.10.9.{n}"


def vmat(number: int, name: str | None = None, machine: str = "TrueBeam1") -> PlannedBeam:
    return PlannedBeam(
        number=number,
        name=name or f"ARC{number}",
        machine=machine,
        beam_type="DYNAMIC",
        radiation_type="PHOTON",
        delivery_type="TREATMENT",
        gantry_rotation="arc",
        mlc_modulated=True,
    )


def static(number: int, machine: str = "TrueBeam1") -> PlannedBeam:
    return PlannedBeam(
        number=number,
        name=f"F{number}",
        machine=machine,
        beam_type="STATIC",
        radiation_type="PHOTON",
        delivery_type="TREATMENT",
        gantry_rotation="static",
    )


def plan(
    n: int | str = 1,
    *,
    pid: str = PID,
    label: str = "PROST",
    fractions: int = 28,
    dose_gy: float = 70.0,
    approved: bool = True,
    intent: str = "CURATIVE",
    site: str | None = "Prostate",
    refs: tuple[tuple[int | str, str], ...] = (),
    beams: tuple[PlannedBeam, ...] | None = None,
    revision: int = 1,
    plan_date: date = MONDAY - timedelta(days=7),
    received: datetime | None = None,
    referring: str | None = "Referrer^Rita^^Dr.",
    reviewer: str = "Oncologist^Olga",
    sha: str = "0",
) -> CloudEvent:
    stored = obj(uid(n), revision, sop_class="1.2.840.10008.5.1.4.1.1.481.5")
    stored = stored.model_copy(update={"sha256": sha * 64})
    return envelope(
        PlanReceived(
            patient=Patient(id=pid, name="Doe^John", birth_date=date(1950, 1, 2)),
            source=TPS,
            object=stored,
            ion=False,
            label=label,
            intent=intent,
            treatment_site=site,
            plan_date=plan_date,
            approval_status="APPROVED" if approved else "UNAPPROVED",
            reviewer_name=reviewer if approved else None,
            reviewed_at=at(plan_date.isoformat(), "16:00") if approved else None,
            frame_of_reference_uid="1.2.3.999",
            referenced_plans=tuple(
                PlanReference(sop_instance_uid=uid(r), relationship=rel) for r, rel in refs
            ),
            fraction_groups=(
                FractionGroup(
                    number=1,
                    fractions_planned=fractions,
                    beam_count=2,
                    prescription_dose_gy=dose_gy,
                ),
            ),
            beams=beams if beams is not None else (vmat(1), vmat(2)),
            machines=("TrueBeam1",),
            referring_physician=referring,
        ),
        source=SOURCE,
        time=received or at((plan_date).isoformat(), "17:00"),
    )


def fraction(
    number: int,
    day: date,
    *,
    plan_n: int | str = 1,
    pid: str = PID,
    revision: int = 1,
    rec: str | None = None,
) -> CloudEvent:
    event = record_event(
        number,
        day.isoformat(),
        pid=pid,
        plan_uid=uid(plan_n),
        revision=revision,
        uid=rec or f"1.2.3.rec.{pid}.{plan_n}.{number}",
    )
    return event.model_copy(update={"time": at(day.isoformat(), "08:10")})


def pdf_document(
    n: int | str,
    *,
    plan_n: int | str = 1,
    title: str = "Plan Report",
    pid: str = PID,
    when: datetime | None = None,
) -> CloudEvent:
    return envelope(
        DocumentReceived(
            patient=Patient(id=pid),
            source=TPS,
            object=obj(f"1.2.3.pdf.{n}", sop_class="1.2.840.10008.5.1.4.1.1.104.1"),
            title=title,
            mime_type="application/pdf",
            content_at=when,
            referenced_plan_uid=uid(plan_n),
        ),
        source=SOURCE,
        time=when or at(MONDAY.isoformat(), "07:00"),
    )


def weekday(i: int) -> date:
    """The i-th business day from MONDAY (0-based)."""
    return MONDAY + timedelta(days=i // 5 * 7 + i % 5)


__all__ = ["LINAC", "MONDAY", "PID", "at", "fraction", "pdf_document", "plan", "uid", "weekday"]
