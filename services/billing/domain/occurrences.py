"""The things a course bills for, one family at a time, with the attributes rules select on.

An occurrence is a session's delivery, a session's image guidance, a course's management or
physics, a course's clinical planning, a (conceptual) plan, a simulation day. Attributes come
from facts only: technique facts of the plans delivered in the session, the record kind, the
simulation's complexity, the course's kind named by staff.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Any, NamedTuple

from services.billing.domain import technique
from services.billing.domain.course_end import CourseStatus
from services.billing.domain.facts import (
    CourseFacts,
    CourseKind,
    FractionReviewFacts,
    PlanTechnique,
    SimulationFacts,
    TreatmentRecordFacts,
)
from services.billing.domain.policy import BillingSettings, Payer
from services.billing.domain.sessions import Session, later_revision, latest_records

EXTERNAL_KINDS = frozenset({"beams", "ion_beams"})
COMPLEXITY_ORDER = {"simple": 1, "intermediate": 2, "complex": 3}


class Occurrence(NamedTuple):
    """A thing to bill. A named tuple, not a dataclass: an evaluation makes one per session
    and family (tens of thousands per 1,000 courses), and a tuple is built several times
    faster."""

    family: str
    key: str
    service_date: date
    attrs: Mapping[str, Any]
    evidence: tuple[str, ...] = ()
    sessions: tuple[Session, ...] = ()
    plan_uids: tuple[str, ...] = ()
    hold_reason: str | None = None  # a reason known before any rule (a review's state)
    extra: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class CourseContext:
    """What every family reads: computed once per evaluation."""

    course: CourseFacts
    settings: BillingSettings
    payer: Payer
    sessions: tuple[Session, ...]
    external: tuple[Session, ...]
    status: CourseStatus
    plans: Mapping[str, PlanTechnique]
    kind: CourseKind
    superficial: bool
    # Each session's evidence by session id, computed once: delivery and guidance both name it.
    evidence: Mapping[str, tuple[str, ...]]

    @property
    def code_set(self) -> str:
        if self.settings.place_of_service == "hospital":
            return "cpt"
        return self.payer.legacy_freestanding_codes

    def course_attrs(self) -> dict[str, Any]:
        return {
            "course_kind": self.kind,
            "superficial": self.superficial,
            "srs_platform": self.course.srs_platform,
            "code_set": self.code_set,
        }

    def evidence_of(self, session: Session) -> tuple[str, ...]:
        return self.evidence[session.id]

    def plans_of(self, uids: Sequence[str]) -> list[PlanTechnique]:
        return [self.plans[u] for u in uids if u in self.plans]


def latest_plans(plans: Sequence[PlanTechnique]) -> dict[str, PlanTechnique]:
    latest: dict[str, PlanTechnique] = {}
    for plan in plans:
        held = latest.get(plan.uid)
        if held is None or later_revision(plan, held):
            latest[plan.uid] = plan
    return latest


def effective_kind(kind: CourseKind, external_sessions: int) -> CourseKind:
    # SROA: cranial radiosurgery in more than one fraction is billed with the SBRT codes.
    if kind == "srs" and external_sessions > 1:
        kind = "sbrt"
    # MAC LCD: a course longer than five fractions is not SBRT; bill conventional codes.
    if kind == "sbrt" and external_sessions > 5:
        kind = "conventional"
    return kind


# ---------------------------------------------------------------- delivery


def delivery(ctx: CourseContext) -> list[Occurrence]:
    out = []
    records: dict[str, TreatmentRecordFacts] | None = None
    course_attrs = ctx.course_attrs()
    # Technique levels depend only on the session's kind and plans: once per distinct pair,
    # and the sessions of one pair share one attribute mapping (read-only from here on).
    shared: dict[tuple[str, tuple[str, ...]], tuple[Mapping[str, Any], bool]] = {}
    for session in ctx.sessions:
        if session.kind == "beams" or session.kind == "ion_beams":
            family = "linac_delivery" if session.kind == "beams" else "proton_delivery"
            key = (session.kind, session.plan_uids)
            held = shared.get(key)
            if held is None:
                plans = ctx.plans_of(session.plan_uids)
                if session.kind == "beams":
                    levels = {
                        "level": technique.level_2026(plans),
                        "legacy_level": technique.legacy_level(plans),
                        "modulated": technique.modulated(plans),
                        "imrt_method": technique.imrt_method(plans),
                        "imrt_class": technique.imrt_class(plans),
                        "energy_band": technique.energy_band(plans),
                    }
                else:
                    levels = {"proton_level": technique.proton_level(plans)}
                held = shared[key] = (course_attrs | levels, bool(plans))
            attrs, planned = held
        else:
            family = "brachy_delivery"
            if records is None:
                records = {r.record_uid: r for r in latest_records(ctx.course.records)}
            session_records = [
                records[uid] for f in session.fractions for uid in f.record_uids if uid in records
            ]
            attrs, planned = course_attrs | technique.brachy_attrs(session_records), True
        out.append(
            Occurrence(
                family=family,
                key=session.id,
                service_date=session.day,
                attrs=attrs,
                evidence=ctx.evidence_of(session),
                sessions=(session,),
                plan_uids=session.plan_uids,
                hold_reason=None if planned else "plan_facts_missing",
            )
        )
    return out


# ---------------------------------------------------------------- image guidance


def guidance(ctx: CourseContext) -> list[Occurrence]:
    """Image guidance per session, from the QA tracker's assessed state of its fractions. The
    latest revision of each fraction decides (ASTRO IGRT FAQ: billable only when reviewed and
    approved before the next treatment); a session is guided once however many fraction groups
    it delivered."""
    if ctx.kind != "conventional" or ctx.superficial:
        return []  # stereotactic delivery includes guidance; 77401 has none to bill
    # A fact stored twice is harmless here: the latest and the holds read the same either way.
    history: dict[tuple[str | None, int, int | None], list[FractionReviewFacts]] = defaultdict(list)
    newest: dict[tuple[str | None, int, int | None], FractionReviewFacts] = {}
    for review in ctx.course.reviews:
        key = (review.plan_uid, review.fraction_group, review.fraction_number)
        history[key].append(review)
        held = newest.get(key)
        if held is None or later_revision(review, held):
            newest[key] = review
    out = []
    course_attrs = ctx.course_attrs()
    # Per distinct (plans, imaging): one attribute mapping, shared by its sessions.
    shared: dict[tuple[tuple[str, ...], str | None], Mapping[str, Any]] = {}
    for session in ctx.external:
        fractions = session.fractions
        if len(fractions) == 1:  # the common case: no list built
            revisions = history.get(fractions[0].key)
            if not revisions:
                continue
            latest = [newest[fractions[0].key]]
        else:
            revisions = [r for f in fractions for r in history.get(f.key, ())]
            if not revisions:
                continue
            latest = [newest[f.key] for f in fractions if f.key in newest]
        reason = _review_hold(latest, revisions)
        if reason == "not_imaged":
            continue
        imaging = {kind for r in latest if not r.removed for kind in r.imaging}
        shown = "cbct" if "cbct" in imaging else ("kv_2d" if "kv_2d" in imaging else None)
        attrs = shared.get((session.plan_uids, shown))
        if attrs is None:
            modulated = technique.modulated(ctx.plans_of(session.plan_uids))
            attrs = shared[(session.plan_uids, shown)] = course_attrs | {
                "imaging": shown,
                "modulated": modulated,
            }
        out.append(
            Occurrence(
                family="guidance",
                key=session.id,
                service_date=session.day,
                attrs=attrs,
                evidence=tuple(sorted({*ctx.evidence_of(session), *(r.event_id for r in latest)})),
                sessions=(session,),
                plan_uids=session.plan_uids,
                hold_reason=reason,
            )
        )
    return out


def _review_hold(
    latest: Sequence[FractionReviewFacts], revisions: Sequence[FractionReviewFacts]
) -> str | None:
    """None when billable; else why not (``not_imaged``: nothing to bill at all)."""
    if len(latest) == 1:  # the common case: one fraction, approved on time
        (r,) = latest
        if (
            not r.removed
            and r.review_status != "not_imaged"
            and r.on_time
            and r.decision != "rejected"
        ):
            return None
    current = [r for r in latest if not r.removed and r.review_status != "not_imaged"]
    approved_on_time = [r for r in current if r.on_time and r.decision != "rejected"]
    if approved_on_time:
        return None
    if any(r.on_time for r in current):
        return "review_rejected"  # reviewed in time, but the physician did not approve
    if any(r.on_time for r in revisions):
        # An earlier revision showed the review on time; the latest no longer does.
        return "review_withdrawn"
    if not current:
        return "not_imaged"
    if any(r.review_status == "pending" for r in current):
        return "review_pending"
    return "review_late"


# ---------------------------------------------------------------- course-level families


def management(ctx: CourseContext) -> list[Occurrence]:
    if not ctx.external:
        return []  # brachytherapy codes include their management (domain-billing.md s. 1.9)
    return [_course_occurrence(ctx, "management", ctx.external[-1].day)]


def physics(ctx: CourseContext) -> list[Occurrence]:
    if not ctx.external:
        return []
    return [_course_occurrence(ctx, "physics", ctx.external[-1].day)]


def clinical_planning(ctx: CourseContext) -> list[Occurrence]:
    """Once per course (Highmark MA R-4-016), once the course has been treated: its
    complexity is the most complex delivered external plan's; its date the earliest approval."""
    delivered = sorted({u for s in ctx.external for u in s.plan_uids})
    plans = ctx.plans_of(delivered)
    if not plans:
        return []
    level = max((technique.legacy_level([p]) or 0 for p in plans), default=0) or None
    occurrence = _course_occurrence(ctx, "clinical_planning", _plan_date(plans, ctx.external))
    return [
        occurrence._replace(
            attrs={**occurrence.attrs, "planning_level": level},
            evidence=tuple(sorted({p.event_id for p in plans})),
            plan_uids=tuple(delivered),
        )
    ]


def _course_occurrence(ctx: CourseContext, family: str, on: date) -> Occurrence:
    return Occurrence(
        family=family,
        key="course",
        service_date=on,
        attrs=ctx.course_attrs(),
        evidence=tuple(sorted({e for s in ctx.external for f in s.fractions for e in f.event_ids})),
        sessions=ctx.external,
    )


def _plan_date(plans: Sequence[PlanTechnique], sessions: Sequence[Session]) -> date:
    approved = [p.approved_on for p in plans if p.approved_on]
    if approved:
        return min(approved)
    dated = [p.plan_date for p in plans if p.plan_date]
    if dated:
        return min(dated)
    return sessions[0].day


# ---------------------------------------------------------------- plans


def plans(ctx: CourseContext) -> list[Occurrence]:
    """One occurrence per conceptual plan that was delivered: CONCURRENT plans are one
    (domain-dicom.md s. 5.1); a plan derived (PREDECESSOR) from another delivered plan is a
    re-plan, which per-plan codes bill only with a documented reason."""
    delivered: dict[str, list[Session]] = defaultdict(list)
    for session in ctx.sessions:
        for uid in session.plan_uids:
            delivered[uid].append(session)
    known = {uid: ctx.plans[uid] for uid in delivered if uid in ctx.plans}
    sets = _concurrent_sets(known)
    records: dict[str, TreatmentRecordFacts] | None = None  # only a brachy plan reads them
    out = []
    for members in sets:
        plan_list = [known[u] for u in members]
        # By id, not in a set: a session's id names it, and hashing whole sessions is slow.
        by_id = {s.id: s for u in members for s in delivered[u]}
        sessions = sorted(by_id.values(), key=lambda s: (s.started_at, s.id))
        brachy = all(s.kind == "brachy" for s in sessions)
        attrs = ctx.course_attrs() | {
            "brachy": brachy,
            "ion": any(p.ion for p in plan_list),
            "volumetric": any(p.volumetric for p in plan_list),
            "modulated": technique.modulated(plan_list),
        }
        if brachy:
            if records is None:
                records = {r.record_uid: r for r in latest_records(ctx.course.records)}
            attrs |= technique.brachy_attrs(_records_of(sessions, records))
        derived_from = {u for p in plan_list for u in p.predecessor_uids} - set(members)
        out.append(
            Occurrence(
                family="plan",
                key=members[0],
                service_date=_plan_date(plan_list, sessions),
                attrs=attrs,
                evidence=tuple(sorted({p.event_id for p in plan_list})),
                sessions=tuple(sessions),
                plan_uids=tuple(members),
                extra={
                    "replan": bool(derived_from & set(known)),
                    "beams": sum(1 for p in plan_list for b in p.beams if b.therapeutic),
                },
            )
        )
    return out


def _concurrent_sets(plans: Mapping[str, PlanTechnique]) -> list[list[str]]:
    parent = {u: u for u in plans}

    def find(u: str) -> str:
        while parent[u] != u:
            u = parent[u]
        return u

    for plan in plans.values():
        for other in plan.concurrent_uids:
            if other in parent:
                a, b = find(plan.uid), find(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    sets: dict[str, list[str]] = defaultdict(list)
    for uid in sorted(plans):
        sets[find(uid)].append(uid)
    return [sets[k] for k in sorted(sets)]


def _records_of(
    sessions: Sequence[Session], records: Mapping[str, TreatmentRecordFacts]
) -> list[TreatmentRecordFacts]:
    return [
        records[uid]
        for s in sessions
        for f in s.fractions
        for uid in f.record_uids
        if uid in records
    ]


# ---------------------------------------------------------------- simulation


def simulations(ctx: CourseContext) -> list[Occurrence]:
    """One per date of service (ASTRO Treatment Planning FAQ: one simulation charge per day),
    the most complex of the day's bookings; a corrected booking's latest revision wins and a
    cancelled one is gone."""
    latest: dict[str, SimulationFacts] = {}
    for sim in set(ctx.course.simulations):
        held = latest.get(sim.booking_id)
        if held is None or later_revision(sim, held):
            latest[sim.booking_id] = sim
    by_day: dict[date, list[SimulationFacts]] = defaultdict(list)
    for sim in latest.values():
        if not sim.cancelled:
            by_day[sim.service_date].append(sim)
    out = []
    for day in sorted(by_day):
        sims = by_day[day]
        complexity = max((s.complexity for s in sims), key=COMPLEXITY_ORDER.__getitem__)
        out.append(
            Occurrence(
                family="simulation",
                key=f"sim-{day.isoformat()}",
                service_date=day,
                attrs=ctx.course_attrs()
                | {"complexity": complexity, "four_d_ct": any(s.four_d_ct for s in sims)},
                evidence=tuple(sorted(s.event_id for s in sims)),
            )
        )
    return out


FAMILIES = (delivery, guidance, management, physics, clinical_planning, plans, simulations)
