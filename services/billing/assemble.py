"""From the facts stored for one patient to the courses the engine evaluates (pure: no I/O,
no clock). docs/billing.md's table "Building the facts from events" is what this implements:

- plans are grouped into courses with ``shared.courses.group_courses`` (staff regroupings from
  the documents service override it);
- a course gets the treatment records, the assessed fraction states and the RT Treatment
  Summary Records that name its plans, its staff closures, and the notes the documents service
  signed for it;
- a simulation carries no plan: it belongs to the course that is next to start on or after its
  date, else to a course under way on that date (a re-simulation); with neither it waits for
  its course;
- a course's kind is the one staff confirmed, else conventional; ``screen_kind`` flags a course
  whose plan facts make it *possibly* stereotactic, and ``hold_unconfirmed_kind`` holds the
  charges whose code depends on the kind until staff confirm it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.billing.domain import (
    BeamTechnique,
    BrachyChannelFacts,
    CourseEvaluation,
    CourseFacts,
    DocumentFacts,
    FractionReviewFacts,
    PlanTechnique,
    RuleSet,
    SimulationFacts,
    StaffClosure,
    SummaryFacts,
    TreatmentRecordFacts,
)
from services.billing.domain.facts import CourseKind
from shared.courses import Grouping, PlanFacts, PlanLink, Regrouping, group_courses
from shared.events import CourseRegrouped, NoteSigned, PlanReceived, TreatmentSummarized
from shared.events.dicom import TreatmentRecorded
from shared.events.qa import FractionAssessed
from shared.events.scheduler import SimCompleted

DOCUMENT_KINDS = frozenset({"management_note", "physics_check", "replan_justification"})


@dataclass(frozen=True)
class StoredFact:
    kind: str
    key: str
    revision: int
    event_id: str
    event_time: datetime
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Assembled:
    grouping: Grouping
    courses: tuple[CourseFacts, ...]
    waiting: Mapping[str, int] = field(default_factory=dict)  # facts with no course yet, by kind
    # Courses whose plan facts make them possibly stereotactic, by course id (``screen_kind``).
    screens: Mapping[str, KindScreen] = field(default_factory=dict)


def assemble(
    patient_id: str,
    facts: Iterable[StoredFact],
    closures: Mapping[str, Sequence[StaffClosure]],
    *,
    zone: ZoneInfo,
    gap_days: int,
    kinds: Mapping[str, CourseKind] | None = None,
    stereotactic_dose_gy: float = 6.0,
    cache: FactCache | None = None,
) -> Assembled:
    """``kinds``: the kinds staff confirmed, by course id (others are conventional);
    ``stereotactic_dose_gy``: the dose per fraction from which a short course is screened as
    possibly stereotactic (``screen_kind``); ``cache``: facts parsed before (see
    ``FactCache``)."""
    kinds = kinds or {}
    parse = cache.parse if cache is not None else parse_fact
    by_kind: dict[str, list[StoredFact]] = defaultdict(list)
    for fact in facts:
        by_kind[fact.kind].append(fact)

    plans: dict[str, PlanReceived] = {f.key: parse(f) for f in _latest(by_kind["plan"])}
    plan_events = {f.key: f.event_id for f in _latest(by_kind["plan"])}
    records: list[TreatmentRecordFacts] = [parse(f) for f in by_kind["record"]]
    treated = _treated_days(records, zone)
    grouping = group_courses(
        (_plan_facts(p, patient_id, treated.get(uid)) for uid, p in plans.items()),
        regroupings=[parse(f) for f in by_kind["regrouping"]],
        gap_days=gap_days,
    )

    def course_of(plan_uid: str | None) -> str | None:
        return grouping.course_of(plan_uid) if plan_uid else None

    waiting: dict[str, int] = defaultdict(int)
    course_records: dict[str, list[TreatmentRecordFacts]] = defaultdict(list)
    for record in records:
        if (course := course_of(record.plan_uid)) is not None:
            course_records[course].append(record)
        else:
            waiting["record"] += 1
    reviews: dict[str, list[FractionReviewFacts]] = defaultdict(list)
    for fact in by_kind["assessed"]:
        review: FractionReviewFacts = parse(fact)
        if (course := course_of(review.plan_uid)) is not None:
            reviews[course].append(review)
        else:
            waiting["assessed"] += 1
    summaries: dict[str, list[SummaryFacts]] = defaultdict(list)
    for fact in _latest(by_kind["summary"]):
        summary: TreatmentSummarized = parse(fact)
        courses = {course_of(u) for u in (summary.plan_uids or (summary.plan_uid,))} - {None}
        for course in courses:
            summaries[course].append(_summary(fact, summary, zone))  # type: ignore[index]
        if not courses:
            waiting["summary"] += 1

    starts = {c.id: _course_start(c.plan_uids, plans, treated, zone) for c in grouping.courses}
    ends = {
        c.id: max((treated[u][1] for u in c.plan_uids if u in treated), default=None)
        for c in grouping.courses
    }
    simulations: dict[str, list[SimulationFacts]] = defaultdict(list)
    for fact in by_kind["simulation"]:
        sim: SimulationFacts = parse(fact)
        if (course := _course_of_simulation(sim.service_date, starts, ends)) is not None:
            simulations[course].append(sim)
        else:
            waiting["simulation"] += 1

    course_ids = {c.id for c in grouping.courses}
    documents: dict[str, list[DocumentFacts]] = defaultdict(list)
    for fact in _latest(by_kind["note"]):
        note: NoteSigned = parse(fact)
        if note.voided or note.kind not in DOCUMENT_KINDS:
            continue
        document = _document(note, zone)
        # A note names the documents service's course id; where billing grouped the plans
        # otherwise (a correction not yet arrived), its dates still confine what it documents.
        for course in [note.course_id] if note.course_id in course_ids else sorted(course_ids):
            documents[course].append(document)

    courses = tuple(
        CourseFacts(
            course_id=c.id,
            patient_id=patient_id,
            plans=tuple(_technique(plans[u], plan_events[u], zone) for u in c.plan_uids),
            records=tuple(course_records[c.id]),
            reviews=tuple(reviews[c.id]),
            simulations=tuple(simulations[c.id]),
            summaries=tuple(summaries[c.id]),
            closures=tuple(closures.get(c.id, ())),
            documents=tuple(documents[c.id]),
            kind=kinds.get(c.id, "conventional"),
        )
        for c in grouping.courses
    )
    screens = {
        c.id: screen
        for c in grouping.courses
        if (
            screen := screen_kind(
                [plans[u] for u in c.plan_uids], min_dose_per_fraction_gy=stereotactic_dose_gy
            )
        )
        is not None
    }
    return Assembled(grouping=grouping, courses=courses, waiting=dict(waiting), screens=screens)


# ---------------------------------------------------------------- course kind

# CPT 77373 / 77435: an SBRT course has at most five fractions; a longer one is billed as
# conventional (MAC LCD, domain-billing.md s. 1.5), so it is never a candidate.
STEREOTACTIC_MAX_FRACTIONS = 5
KIND_UNCONFIRMED = "course_kind_unconfirmed"
# Words of a Treatment Site (3010,0077) that name the brain or the skull's contents: a
# single-fraction course there is suggested as SRS (CPT 77371/77372/77432: cranial, one
# session), elsewhere as SBRT. Only a suggestion: staff confirm the kind.
_CRANIAL = re.compile(
    r"brain|cran|cereb|pituitar|sella|skull\s*base|vestibular|acoustic|trigemin|\bavm\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class KindScreen:
    """Why a course may be stereotactic, from its plans' facts alone (never from plan names or
    labels). DICOM has no attribute for SRS/SBRT: the kind waits for staff to confirm it."""

    suggested: CourseKind  # srs (cranial, one fraction) or sbrt
    fractions_planned: int  # the most any fraction group of the course's current plans plans
    dose_per_fraction_gy: float | None  # the highest stated; None when no plan states one
    threshold_gy: float
    cranial: bool
    plan_uids: tuple[str, ...]
    sites: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "suggested": self.suggested,
            "fractions_planned": self.fractions_planned,
            "dose_per_fraction_gy": self.dose_per_fraction_gy,
            "threshold_gy": self.threshold_gy,
            "cranial": self.cranial,
            "plan_uids": list(self.plan_uids),
            "sites": list(self.sites),
        }


def screen_kind(
    plans: Sequence[PlanReceived], *, min_dose_per_fraction_gy: float
) -> KindScreen | None:
    """A course is possibly stereotactic when its current photon plans (those no PREDECESSOR
    re-plan of the course replaced) plan at most five fractions in every fraction group, and
    either a group's dose per fraction is at or above ``min_dose_per_fraction_gy`` or, with no
    dose stated, the course is one fraction to a cranial site. A group's dose per fraction is
    the event's ``dose_per_fraction_gy`` (prescription / fractions), else, for a plan of one
    fraction group, the sum of its treatment beams' Beam Dose when every one states it. Any
    group of more than five fractions, or no planned fraction count, makes it conventional."""
    superseded = {
        r.sop_instance_uid
        for p in plans
        for r in p.referenced_plans
        if (r.relationship or "").upper() == "PREDECESSOR"
    }
    current = [p for p in plans if p.object.sop_instance_uid not in superseded] or list(plans)
    photon = [p for p in current if not p.ion and _photon(p)]
    counts = [g.fractions_planned for p in photon for g in p.fraction_groups]
    planned = [n for n in counts if n is not None]
    if not planned or max(planned) > STEREOTACTIC_MAX_FRACTIONS:
        return None
    doses = [d for p in photon for d in _doses_per_fraction(p) if d is not None]
    dose = max(doses, default=None)
    sites = tuple(sorted({p.treatment_site for p in photon if p.treatment_site}))
    cranial = any(_CRANIAL.search(site) for site in sites)
    fractions = max(planned)
    if dose is not None and dose < min_dose_per_fraction_gy:
        return None
    if dose is None and not (cranial and fractions == 1):
        return None
    return KindScreen(
        suggested="srs" if cranial and fractions == 1 else "sbrt",
        fractions_planned=fractions,
        dose_per_fraction_gy=dose,
        threshold_gy=min_dose_per_fraction_gy,
        cranial=cranial,
        plan_uids=tuple(sorted(p.object.sop_instance_uid for p in photon)),
        sites=sites,
    )


def _photon(plan: PlanReceived) -> bool:
    therapeutic = [b for b in plan.beams if (b.delivery_type or "TREATMENT").upper() == "TREATMENT"]
    types = {(b.radiation_type or "").upper() for b in therapeutic} or {
        t.upper() for t in plan.radiation_types
    }
    return "PHOTON" in types


def _doses_per_fraction(plan: PlanReceived) -> list[float | None]:
    out: list[float | None] = [g.dose_per_fraction_gy for g in plan.fraction_groups]
    if len(plan.fraction_groups) == 1 and out[0] is None:
        beams = [b for b in plan.beams if (b.delivery_type or "TREATMENT").upper() == "TREATMENT"]
        if beams and all(b.beam_dose_gy is not None for b in beams):
            out[0] = round(sum(b.beam_dose_gy or 0.0 for b in beams), 4)
    return out


def kind_dependent_families(rules: RuleSet) -> frozenset[str]:
    """Families whose code depends on the course's kind: those with a rule conditioned on
    ``course_kind`` (delivery, image guidance, management in the bundled rules)."""
    return frozenset(r.family for r in rules.rules if "course_kind" in r.when)


def hold_unconfirmed_kind(evaluation: CourseEvaluation, rules: RuleSet) -> CourseEvaluation:
    """The course was evaluated as conventional while its kind is unconfirmed: every charge of
    a kind-dependent family goes to ``hold`` (``course_kind_unconfirmed``) until staff say
    which codes apply (77427/77431 or 77432/77435, delivery or 77371-77373, IGRT or none)."""
    families = kind_dependent_families(rules)
    family_of = {r.id: r.family for r in rules.rules}
    charges = tuple(
        c._replace(status="hold", hold_reason=KIND_UNCONFIRMED)
        if family_of.get(c.rule) in families
        else c
        for c in evaluation.charges
    )
    return replace(evaluation, charges=charges)


# ---------------------------------------------------------------- one fact at a time


def parse_fact(fact: StoredFact) -> Any:
    """A stored payload validated into what ``assemble`` reads of its kind (a pure function of
    the payload and the event id: nothing of the zone or the other facts)."""
    return _PARSERS[fact.kind](fact)


class FactCache:
    """Facts parsed before, by (kind, key, revision, event id). A stored fact is never
    changed (``add_facts`` inserts a (kind, key, revision) once and nothing updates it), so
    what it parsed to stays right, and an evaluation needs the payload only of facts not
    held here (``missing``). Bounded: ``trim`` drops the oldest entries, between
    evaluations (never while an evaluation counts on an entry ``missing`` did not name)."""

    def __init__(self, max_size: int = 150_000) -> None:
        self._max = max_size
        self._parsed: dict[tuple[str, str, int, str], Any] = {}

    def __len__(self) -> int:
        return len(self._parsed)

    def holds(self, kind: str, key: str, revision: int, event_id: str) -> bool:
        return (kind, key, revision, event_id) in self._parsed or kind not in _PARSERS

    def parse(self, fact: StoredFact) -> Any:
        entry = (fact.kind, fact.key, fact.revision, fact.event_id)
        parsed = self._parsed.get(entry)
        if parsed is None:
            parsed = self._parsed[entry] = parse_fact(fact)
        return parsed

    def add(self, fact: StoredFact) -> None:
        """Parse a fact just stored, from its payload in hand (kinds ``assemble`` does not
        parse are skipped)."""
        if fact.kind in _PARSERS:
            self.parse(fact)

    def trim(self) -> None:
        if len(self._parsed) > self._max:
            for entry in list(self._parsed)[: len(self._parsed) - self._max // 2]:
                del self._parsed[entry]


def _latest(facts: Iterable[StoredFact]) -> list[StoredFact]:
    latest: dict[str, StoredFact] = {}
    for fact in facts:
        held = latest.get(fact.key)
        if held is None or fact.revision > held.revision:
            latest[fact.key] = fact
    return [latest[k] for k in sorted(latest)]


def _local_day(moment: datetime, zone: ZoneInfo) -> date:
    return moment.astimezone(zone).date()


def _plan_facts(
    plan: PlanReceived, patient_id: str, treated: tuple[date, date] | None
) -> PlanFacts:
    return PlanFacts(
        uid=plan.object.sop_instance_uid,
        patient_id=patient_id,
        intent=plan.intent,
        label=plan.label,
        frame_of_reference_uid=plan.frame_of_reference_uid,
        plan_date=plan.plan_date,
        first_treated_on=treated[0] if treated else None,
        last_treated_on=treated[1] if treated else None,
        references=tuple(
            PlanLink(uid=r.sop_instance_uid, relationship=r.relationship)
            for r in plan.referenced_plans
        ),
        revision=plan.object.revision,
    )


def _technique(plan: PlanReceived, event_id: str, zone: ZoneInfo) -> PlanTechnique:
    def related(relationship: str) -> tuple[str, ...]:
        return tuple(
            r.sop_instance_uid
            for r in plan.referenced_plans
            if (r.relationship or "").upper() == relationship
        )

    approved = (plan.approval_status or "").upper() == "APPROVED" and plan.reviewed_at
    return PlanTechnique(
        uid=plan.object.sop_instance_uid,
        event_id=event_id,
        revision=plan.object.revision,
        ion=plan.ion,
        beams=tuple(
            BeamTechnique(
                radiation_type=b.radiation_type,
                beam_type=b.beam_type,
                delivery_type=b.delivery_type,
                energies=b.energies,
                arc=b.gantry_rotation == "arc",
                mlc_modulated=b.mlc_modulated,
                wedge_count=b.wedge_count or 0,
                block_count=b.block_count or 0,
                compensator_count=b.compensator_count or 0,
            )
            for b in plan.beams
        ),
        isocenter_count=plan.isocenter_count,
        motion_management=plan.motion_management,
        volumetric=(plan.geometry or "").upper() == "PATIENT" or bool(plan.structure_set_uid),
        treatment_site=plan.treatment_site,
        approved_on=_local_day(plan.reviewed_at, zone) if approved else None,  # type: ignore[arg-type]
        plan_date=plan.plan_date,
        fractions_planned=tuple(
            (g.number, g.fractions_planned)
            for g in plan.fraction_groups
            if g.fractions_planned is not None
        ),
        predecessor_uids=related("PREDECESSOR"),
        concurrent_uids=related("CONCURRENT"),
    )


def _record(fact: StoredFact) -> TreatmentRecordFacts:
    r = TreatmentRecorded.model_validate(fact.payload)
    return TreatmentRecordFacts(
        record_uid=r.object.sop_instance_uid,
        event_id=fact.event_id,
        patient_id=r.patient.id,
        treated_at=r.treated_at,
        delivered=r.delivered,
        partial=r.partial,
        revision=r.object.revision,
        record_kind=r.record_kind,
        content_origin=r.content_origin,
        plan_uid=r.plan_uid,
        fraction_group=r.fraction_group_number,
        fraction_numbers=r.fraction_numbers,
        referenced_record_uids=r.referenced_record_uids,
        brachy_setup_types=tuple(s.setup_type for s in r.application_setups if s.setup_type),
        brachy_channels=tuple(
            BrachyChannelFacts(
                number=c.number,
                delivered=(c.delivered_total_time_s or 0) > 0 or (c.delivered_pulses or 0) > 0,
            )
            for s in r.application_setups
            for c in s.channels
        ),
    )


def _treated_days(
    records: Sequence[TreatmentRecordFacts], zone: ZoneInfo
) -> dict[str, tuple[date, date]]:
    """First and last day each plan delivered dose (latest revision of each record)."""
    latest: dict[str, TreatmentRecordFacts] = {}
    for r in records:
        if r.record_uid not in latest or r.revision > latest[r.record_uid].revision:
            latest[r.record_uid] = r
    days: dict[str, list[date]] = defaultdict(list)
    for r in latest.values():
        if r.plan_uid and r.delivered and r.treated_at and r.content_origin != "SIMULATION":
            days[r.plan_uid].append(_local_day(r.treated_at, zone))
    return {uid: (min(d), max(d)) for uid, d in days.items()}


def _review(fact: StoredFact) -> FractionReviewFacts:
    a = FractionAssessed.model_validate(fact.payload)
    return FractionReviewFacts(
        event_id=fact.event_id,
        plan_uid=a.plan_uid,
        fraction_group=a.fraction_group,
        fraction_number=a.fraction_number,
        revision=a.revision,
        removed=a.removed,
        review_status=a.review_status,
        on_time=a.on_time,
        decision=a.review.decision if a.review else None,
        imaging=a.imaging,
    )


def _simulation(fact: StoredFact) -> SimulationFacts:
    s = SimCompleted.model_validate(fact.payload)
    return SimulationFacts(
        event_id=fact.event_id,
        booking_id=s.booking_id,
        revision=s.revision,
        service_date=s.service_date,
        complexity=s.complexity,
        four_d_ct=s.four_d_ct,
        cancelled=s.cancelled,
    )


def _summary(fact: StoredFact, summary: TreatmentSummarized, zone: ZoneInfo) -> SummaryFacts:
    return SummaryFacts(
        event_id=fact.event_id,
        current_status=summary.current_status,
        recorded_on=summary.most_recent_treatment_date or _local_day(fact.event_time, zone),
    )


def _regrouping(fact: StoredFact) -> Regrouping:
    r = CourseRegrouped.model_validate(fact.payload)
    return Regrouping(plan_uids=frozenset(r.plan_uids), sequence=r.sequence)


_PARSERS: dict[str, Callable[[StoredFact], Any]] = {
    "plan": lambda f: PlanReceived.model_validate(f.payload),
    "record": _record,
    "assessed": _review,
    "summary": lambda f: TreatmentSummarized.model_validate(f.payload),
    "simulation": _simulation,
    "regrouping": _regrouping,
    "note": lambda f: NoteSigned.model_validate(f.payload),
}


def _document(note: NoteSigned, zone: ZoneInfo) -> DocumentFacts:
    """The day a note documents: its visit date, else the day it was signed, kept within the
    ISO week it names (a note signed after its week documents that week's Friday)."""
    year, week = (int(x) for x in note.week.split("-W"))
    monday = date.fromisocalendar(year, week, 1)
    on = note.visit_date or _local_day(note.signed_at, zone)
    if note.visit_date is None:
        if on < monday:
            on = monday
        elif on > monday + timedelta(days=6):
            on = monday + timedelta(days=4)
    return DocumentFacts(
        id=note.note_id,
        kind=note.kind,  # type: ignore[arg-type]
        on=on,
        plan_uid=note.plan_uid,
        face_to_face=note.face_to_face,
    )


# ---------------------------------------------------------------- simulations


def _course_start(
    plan_uids: Sequence[str],
    plans: Mapping[str, PlanReceived],
    treated: Mapping[str, tuple[date, date]],
    zone: ZoneInfo,
) -> date:
    """The first treatment day; for a course not treated yet, its earliest plan or approval
    date; date.max when nothing says."""
    first = [treated[u][0] for u in plan_uids if u in treated]
    if first:
        return min(first)
    dated = [
        d
        for u in plan_uids
        if u in plans
        for d in (
            plans[u].plan_date,
            _local_day(plans[u].reviewed_at, zone) if plans[u].reviewed_at else None,  # type: ignore[arg-type]
        )
        if d
    ]
    return min(dated, default=date.max)


def _course_of_simulation(
    day: date, starts: Mapping[str, date], ends: Mapping[str, date | None]
) -> str | None:
    upcoming = sorted((start, cid) for cid, start in starts.items() if start >= day)
    if upcoming:
        return upcoming[0][1]
    under_way = sorted(
        (start, cid)
        for cid, start in starts.items()
        if start <= day and (end := ends.get(cid)) is not None and day <= end
    )
    return under_way[-1][1] if under_way else None
