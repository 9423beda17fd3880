"""Builders of billing facts with sensible defaults (no I/O)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from services.billing.domain import (
    BeamTechnique,
    BillingSettings,
    CourseFacts,
    DocumentFacts,
    FractionReviewFacts,
    Payer,
    PlanTechnique,
    TreatmentRecordFacts,
    load_bundled_rules,
)

NY = ZoneInfo("America/New_York")
RULES = load_bundled_rules()
SETTINGS = BillingSettings(zone=NY)
HOSPITAL_PHYSICIAN = BillingSettings(
    zone=NY, place_of_service="hospital", bills=frozenset({"professional"})
)
HOSPITAL = BillingSettings(zone=NY, place_of_service="hospital", bills=frozenset({"technical"}))
MEDICARE = Payer()
COMMERCIAL_CPT = Payer(id="acme", medicare=False, legacy_freestanding_codes="cpt")
PLAN = "1.2.840.1"
PATIENT = "P1"
MONDAY_2026 = date(2026, 3, 2)
MONDAY_2025 = date(2025, 3, 3)


def at(day: date, hhmm: str = "09:00") -> datetime:
    """A local clinic time as the UTC instant events carry."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=NY)
    return local.astimezone(UTC)


def beam(
    radiation: str = "PHOTON",
    *,
    energy: float = 6.0,
    modulated: bool = False,
    arc: bool = False,
    wedges: int = 0,
    compensators: int = 0,
    delivery_type: str = "TREATMENT",
) -> BeamTechnique:
    return BeamTechnique(
        radiation_type=radiation,
        beam_type="DYNAMIC" if modulated or arc else "STATIC",
        delivery_type=delivery_type,
        energies=(energy,),
        arc=arc,
        mlc_modulated=modulated,
        wedge_count=wedges,
        compensator_count=compensators,
    )


def plan(
    uid: str = PLAN,
    *,
    beams: tuple[BeamTechnique, ...] | None = None,
    isocenters: int = 1,
    motion: bool = False,
    volumetric: bool = True,
    fractions: int | None = None,
    approved_on: date | None = None,
    site: str | None = None,
    ion: bool = False,
    predecessors: tuple[str, ...] = (),
    concurrent: tuple[str, ...] = (),
    revision: int = 1,
) -> PlanTechnique:
    return PlanTechnique(
        uid=uid,
        event_id=f"ev-plan-{uid}-{revision}",
        revision=revision,
        ion=ion,
        beams=beams if beams is not None else (beam(), beam(), beam()),
        isocenter_count=isocenters,
        motion_management=motion,
        volumetric=volumetric,
        treatment_site=site,
        approved_on=approved_on,
        fractions_planned=((1, fractions),) if fractions else (),
        predecessor_uids=predecessors,
        concurrent_uids=concurrent,
    )


def imrt_plan(uid: str = PLAN, **kw: object) -> PlanTechnique:
    return plan(uid, beams=(beam(modulated=True, arc=True), beam(modulated=True, arc=True)), **kw)  # type: ignore[arg-type]


def record(
    number: int | None,
    when: datetime,
    *,
    plan_uid: str | None = PLAN,
    group: int = 1,
    uid: str | None = None,
    partial: bool = False,
    delivered: bool = True,
    kind: str = "beams",
    origin: str | None = "DEVICE",
    refs: tuple[str, ...] = (),
    revision: int = 1,
    **kw: object,
) -> TreatmentRecordFacts:
    uid = uid or f"rec-{plan_uid}-{group}-{number}-{when.isoformat()}"
    return TreatmentRecordFacts(
        record_uid=uid,
        event_id=f"ev-{uid}-{revision}",
        patient_id=PATIENT,
        treated_at=when,
        delivered=delivered,
        partial=partial,
        revision=revision,
        record_kind=kind,  # type: ignore[arg-type]
        content_origin=origin,
        plan_uid=plan_uid,
        fraction_group=group,
        fraction_numbers=() if number is None else (number,),
        referenced_record_uids=refs,
        **kw,  # type: ignore[arg-type]
    )


def treatment_days(start: date, n: int) -> list[date]:
    """n weekdays from start."""
    days, day = [], start
    while len(days) < n:
        if day.weekday() < 5:
            days.append(day)
        day += timedelta(days=1)
    return days


def daily(
    n: int, start: date = MONDAY_2026, *, plan_uid: str = PLAN, first_number: int = 1, **kw: object
) -> tuple[TreatmentRecordFacts, ...]:
    return tuple(
        record(first_number + i, at(day), plan_uid=plan_uid, **kw)  # type: ignore[arg-type]
        for i, day in enumerate(treatment_days(start, n))
    )


def weekly_notes(start: date, weeks: int) -> tuple[DocumentFacts, ...]:
    """One face-to-face management note every seven days (covers every 5-fraction block)."""
    return tuple(
        DocumentFacts(id=f"note-{i}", kind="management_note", on=start + timedelta(days=7 * i))
        for i in range(weeks)
    )


def review(
    number: int,
    *,
    revision: int = 1,
    status: str = "reviewed_on_time",
    on_time: bool | None = None,
    removed: bool = False,
    decision: str | None = "approved",
    imaging: tuple[str, ...] = ("cbct",),
    plan_uid: str = PLAN,
    group: int = 1,
) -> FractionReviewFacts:
    return FractionReviewFacts(
        event_id=f"ev-review-{plan_uid}-{group}-{number}-{revision}",
        plan_uid=plan_uid,
        fraction_group=group,
        fraction_number=number,
        revision=revision,
        removed=removed,
        review_status=None if removed else status,  # type: ignore[arg-type]
        on_time=(status == "reviewed_on_time") if on_time is None else on_time,
        decision=decision,  # type: ignore[arg-type]
        imaging=imaging,
    )


def course(**kw: object) -> CourseFacts:
    defaults: dict[str, object] = {
        "course_id": f"course:{PLAN}",
        "patient_id": PATIENT,
        "plans": (plan(),),
    }
    defaults.update(kw)
    return CourseFacts(**defaults)  # type: ignore[arg-type]
