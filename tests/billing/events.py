"""Event builders for billing's service tests, beside ``tests/events.py``: a plan with the
technique facts billing reads, the QA tracker's fraction states, the documents service's notes
and regroupings, and a course's treatment days. Synthetic data only; clinic zone New York."""

from __future__ import annotations

from datetime import date, timedelta

from shared.events import (
    CloudEvent,
    CourseRegrouped,
    FractionGroup,
    NoteSigned,
    PlannedBeam,
    PlanReceived,
    PlanReference,
    TreatmentSummarized,
    envelope,
)
from shared.events.qa import FractionAssessed, QualifyingReview
from tests.events import LINAC, PLAN_UID, TPS, at, obj, patient, record_event

PID = "BILL-001"
MONDAY = date(2026, 3, 2)  # CPT 2026 code set


def vmat_beam(number: int) -> PlannedBeam:
    return PlannedBeam(
        number=number,
        beam_type="DYNAMIC",
        radiation_type="PHOTON",
        delivery_type="TREATMENT",
        energies=(6.0,),
        gantry_rotation="arc",
        mlc_modulated=True,
    )


def billing_plan_event(
    *,
    plan_uid: str = PLAN_UID,
    pid: str = PID,
    label: str = "PROST",
    fractions: int | None = 28,
    approved: date = MONDAY - timedelta(days=7),
    references: tuple[PlanReference, ...] = (),
    revision: int = 1,
    intent: str = "CURATIVE",
) -> CloudEvent:
    """An approved VMAT plan to one isocenter on a structure set (2026: level 2 delivery)."""
    return envelope(
        PlanReceived(
            patient=patient(pid),
            source=TPS,
            object=obj(plan_uid, revision, sop_class="1.2.840.10008.5.1.4.1.1.481.5"),
            ion=False,
            label=label,
            intent=intent,
            plan_date=approved,
            geometry="PATIENT",
            approval_status="APPROVED",
            reviewer_name="Oncologist^Olga",
            reviewed_at=at(approved.isoformat(), "16:00"),
            frame_of_reference_uid="1.2.3.999",
            referenced_plans=references,
            fraction_groups=(
                (FractionGroup(number=1, fractions_planned=fractions, beam_count=2),)
                if fractions
                else ()
            ),
            beams=(vmat_beam(1), vmat_beam(2)),
            radiation_types=("PHOTON",),
            isocenter_count=1,
            structure_set_uid="1.2.3.ss",
        ),
        source="rtops/scp_listener",
    )


def weekdays(n: int, start: date = MONDAY) -> list[date]:
    days, day = [], start
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def treatment(
    n: int, *, start: date = MONDAY, pid: str = PID, plan_uid: str = PLAN_UID, first: int = 1
) -> list[CloudEvent]:
    """n daily fractions on weekdays from ``start`` at 08:00."""
    return [
        record_event(first + i, day.isoformat(), "08:00", pid=pid, plan_uid=plan_uid)
        for i, day in enumerate(weekdays(n, start))
    ]


def fraction_key(number: int, *, pid: str = PID, plan_uid: str = PLAN_UID) -> str:
    return f"{pid}|{plan_uid}|1|{number}"


def assessed_event(
    number: int,
    day: date,
    *,
    revision: int = 1,
    status: str = "reviewed_on_time",
    decision: str = "approved",
    removed: bool = False,
    pid: str = PID,
    plan_uid: str = PLAN_UID,
) -> CloudEvent:
    """The QA tracker's state of a fraction (``rtops.qa.fraction.assessed``)."""
    reviewed = status in ("reviewed_on_time", "reviewed_late")
    return envelope(
        FractionAssessed(
            patient=patient(pid),
            fraction_key=fraction_key(number, pid=pid, plan_uid=plan_uid),
            plan_uid=plan_uid,
            fraction_group=1,
            fraction_number=number,
            revision=revision,
            removed=removed,
            review_status=None if removed else status,  # type: ignore[arg-type]
            on_time=status == "reviewed_on_time" and not removed,
            due_at=at(day.isoformat(), "18:00"),
            treated_at=at(day.isoformat(), "08:00"),
            machine="TrueBeam1",
            physician="Oncologist^Olga",
            review=QualifyingReview(
                id=number,
                decision=decision,  # type: ignore[arg-type]
                physician="Oncologist^Olga",
                reviewed_at=at(day.isoformat(), "12:00"),
                origin="api",
            )
            if reviewed and not removed
            else None,
            imaging=("cbct",),
        ),
        source="rtops/qa_tracker",
        subject=fraction_key(number, pid=pid, plan_uid=plan_uid),
    )


def note_event(
    week_monday: date,
    *,
    course_id: str = f"course:{PLAN_UID}",
    pid: str = PID,
    note_id: str | None = None,
    kind: str = "management_note",
    revision: int = 1,
    voided: bool = False,
) -> CloudEvent:
    """A weekly treatment-management note, signed on the Wednesday of its week."""
    year, week, _ = week_monday.isocalendar()
    return envelope(
        NoteSigned(
            patient=patient(pid),
            note_id=note_id or f"note-{pid}-{year}-W{week:02d}",
            revision=revision,
            course_id=course_id,
            week=f"{year}-W{week:02d}",
            kind=kind,
            author="Oncologist^Olga",
            signed_at=at((week_monday + timedelta(days=2)).isoformat(), "17:00"),
            voided=voided,
        ),
        source="rtops/documents",
    )


def regrouped_event(plan_uids: tuple[str, ...], *, sequence: int = 1, pid: str = PID) -> CloudEvent:
    return envelope(
        CourseRegrouped(
            patient=patient(pid),
            regrouping_id=f"regroup-{sequence}",
            sequence=sequence,
            plan_uids=plan_uids,
            corrected_by="dosimetrist.dan",
            corrected_at=at("2026-03-20", "10:00"),
            reason="one course",
        ),
        source="rtops/documents",
    )


def summary_event(
    status: str, last_day: date, *, pid: str = PID, plan_uid: str = PLAN_UID, uid: str = "7.7.1"
) -> CloudEvent:
    return envelope(
        TreatmentSummarized(
            patient=patient(pid),
            source=LINAC,
            object=obj(uid, sop_class="1.2.840.10008.5.1.4.1.1.481.7"),
            plan_uid=plan_uid,
            plan_uids=(plan_uid,),
            current_status=status,
            most_recent_treatment_date=last_day,
        ),
        source="rtops/scp_listener",
    )
