"""Which plans form one treatment course: one pure function shared by billing and documents.

The rule (architecture.md, domain-dicom.md s. 5.1):
- PREDECESSOR chains are one course (a re-plan references the plan it was derived from);
- CONCURRENT plans are one conceptual plan, so one course;
- plans with intent VERIFICATION / MACHINE_QA / SERVICE, or verifying another plan
  (VERIFIED_PLAN), never join a course;
- plans that neither reference nor are referenced by a course plan are grouped by the heuristic
  of domain-dicom.md s. 5.1: same patient, same RT Plan Label stem, same Frame of Reference
  (when both state one) and dates no further apart than ``gap_days``; a PRIOR reference keeps
  the two plans apart (the earlier one was delivered before the current treatment);
- staff corrections (``rtops.documents.course.regrouped``) override all of it for the plans
  they name.

The result does not depend on the order of the input: grouping is the connected components of
a fixed set of edges, and a course's id comes from its plans, not from the input order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

NON_COURSE_INTENTS = frozenset({"VERIFICATION", "MACHINE_QA", "SERVICE"})
LINKING_RELATIONSHIPS = frozenset({"PREDECESSOR", "CONCURRENT"})
COURSE_ID_PREFIX = "course:"
DEFAULT_GAP_DAYS = 30  # clinical convention for a split course, not a regulation; configurable

# Trailing version markers a planner adds to a label: "Prostate v2", "PROST_R1", "Lung rev 3",
# "Breast-2", "H&N replan".
_VERSION_SUFFIX = re.compile(r"(?:\s*(?:v|ver|version|rev|r|replan|re plan|adapt)?\s*\d*)$")


@dataclass(frozen=True)
class PlanLink:
    """One item of the plan's Referenced RT Plan Sequence."""

    uid: str
    relationship: str | None = None


@dataclass(frozen=True)
class PlanFacts:
    """What the grouping needs about one plan (built from ``rtops.dicom.plan.received``; the
    treatment dates, where the caller knows them, from its treatment records)."""

    uid: str
    patient_id: str
    intent: str | None = None
    label: str | None = None
    frame_of_reference_uid: str | None = None
    plan_date: date | None = None
    first_treated_on: date | None = None
    last_treated_on: date | None = None
    references: tuple[PlanLink, ...] = ()
    revision: int = 1  # a changed object under the same UID; the highest wins


@dataclass(frozen=True)
class Regrouping:
    """A staff correction: exactly these plans form one course. A plan named by several
    corrections follows the one with the highest ``sequence``."""

    plan_uids: frozenset[str]
    sequence: int


@dataclass(frozen=True)
class Course:
    id: str
    patient_id: str
    plan_uids: tuple[str, ...]  # sorted
    corrected: bool = False  # formed by a staff correction


@dataclass(frozen=True)
class Grouping:
    courses: tuple[Course, ...]  # sorted by id
    excluded: tuple[str, ...] = ()  # plans that never join a course (QA intents)
    _by_plan: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def course_of(self, plan_uid: str) -> str | None:
        return self._by_plan.get(plan_uid)


def label_stem(label: str | None) -> str:
    """The label without case, punctuation or a trailing version marker."""
    if not label:
        return ""
    text = re.sub(r"[^0-9a-z]+", " ", label.casefold()).strip()
    stem = _VERSION_SUFFIX.sub("", text).strip()
    return stem or text


def is_course_plan(plan: PlanFacts) -> bool:
    if (plan.intent or "").strip().upper() in NON_COURSE_INTENTS:
        return False
    return not any(_relationship(link) == "VERIFIED_PLAN" for link in plan.references)


def group_courses(
    plans: Iterable[PlanFacts],
    *,
    regroupings: Iterable[Regrouping] = (),
    gap_days: int = DEFAULT_GAP_DAYS,
) -> Grouping:
    """Group a set of plans (any patients) into courses; see the module docstring."""
    latest = _latest_revisions(plans)
    eligible = {uid: p for uid, p in latest.items() if is_course_plan(p)}
    excluded = tuple(sorted(uid for uid in latest if uid not in eligible))
    pinned = _pinned(regroupings, eligible)

    parent: dict[str, str] = {uid: uid for uid in eligible}

    def find(uid: str) -> str:
        while parent[uid] != uid:
            parent[uid] = parent[parent[uid]]
            uid = parent[uid]
        return uid

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            # The smaller root wins so that the forest's shape does not depend on edge order.
            parent[max(ra, rb)] = min(ra, rb)

    for a, b in _automatic_edges(eligible, pinned, gap_days):
        union(a, b)
    for members in pinned.values():
        first, *rest = sorted(members)
        for uid in rest:
            union(first, uid)

    components: dict[str, list[str]] = defaultdict(list)
    for uid in eligible:
        components[find(uid)].append(uid)

    courses = []
    pinned_plans = {uid for members in pinned.values() for uid in members}
    for members in components.values():
        members.sort()
        courses.append(
            Course(
                id=COURSE_ID_PREFIX + _first_plan(members, eligible),
                patient_id=eligible[members[0]].patient_id,
                plan_uids=tuple(members),
                corrected=any(uid in pinned_plans for uid in members),
            )
        )
    courses.sort(key=lambda c: c.id)
    by_plan = {uid: c.id for c in courses for uid in c.plan_uids}
    return Grouping(courses=tuple(courses), excluded=excluded, _by_plan=by_plan)


# ---------------------------------------------------------------- helpers


def _relationship(link: PlanLink) -> str:
    return (link.relationship or "").strip().upper()


def _latest_revisions(plans: Iterable[PlanFacts]) -> dict[str, PlanFacts]:
    latest: dict[str, PlanFacts] = {}
    for plan in plans:
        held = latest.get(plan.uid)
        # repr breaks a tie between two differing facts of one revision deterministically.
        if held is None or (plan.revision, repr(plan)) > (held.revision, repr(held)):
            latest[plan.uid] = plan
    return latest


def _pinned(
    regroupings: Iterable[Regrouping], eligible: Mapping[str, PlanFacts]
) -> dict[int, frozenset[str]]:
    """Members of each correction that is still the latest for them, by sequence. A correction
    never adds a QA plan to a course and never joins two patients."""
    latest_for: dict[str, tuple[int, frozenset[str]]] = {}
    for regrouping in regroupings:
        for uid in regrouping.plan_uids:
            held = latest_for.get(uid)
            key = (regrouping.sequence, regrouping.plan_uids)
            if held is None or (key[0], sorted(key[1])) > (held[0], sorted(held[1])):
                latest_for[uid] = key
    groups: dict[tuple[int, tuple[str, ...], str], set[str]] = defaultdict(set)
    for uid, (sequence, members) in latest_for.items():
        if uid in eligible:
            groups[(sequence, tuple(sorted(members)), eligible[uid].patient_id)].add(uid)
    return {i: frozenset(m) for i, (_, m) in enumerate(sorted(groups.items()))}


def _automatic_edges(
    plans: Mapping[str, PlanFacts], pinned: Mapping[int, frozenset[str]], gap_days: int
) -> list[tuple[str, str]]:
    pinned_plans = {uid for members in pinned.values() for uid in members}
    free = {uid: p for uid, p in plans.items() if uid not in pinned_plans}

    edges: list[tuple[str, str]] = []
    referenced: set[str] = set()
    prior_pairs: set[frozenset[str]] = set()
    for plan in free.values():
        for link in plan.references:
            relationship = _relationship(link)
            if relationship == "PRIOR":
                prior_pairs.add(frozenset((plan.uid, link.uid)))
            if relationship not in LINKING_RELATIONSHIPS:
                continue
            other = free.get(link.uid)
            if other is None or other.patient_id != plan.patient_id:
                continue
            edges.append((plan.uid, link.uid))
            referenced.update((plan.uid, link.uid))

    # Plans that state a linking reference (even to a plan not received) are placed by it.
    linked = referenced | {
        p.uid
        for p in free.values()
        if any(_relationship(r) in LINKING_RELATIONSHIPS for r in p.references)
    }
    by_patient: dict[str, list[PlanFacts]] = defaultdict(list)
    for plan in free.values():
        by_patient[plan.patient_id].append(plan)
    for group in by_patient.values():
        group.sort(key=lambda p: p.uid)
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.uid in linked and b.uid in linked:
                    continue
                if frozenset((a.uid, b.uid)) in prior_pairs:
                    continue
                if _heuristically_same_course(a, b, gap_days):
                    edges.append((a.uid, b.uid))
    return edges


def _heuristically_same_course(a: PlanFacts, b: PlanFacts, gap_days: int) -> bool:
    stem = label_stem(a.label)
    if not stem or stem != label_stem(b.label):
        return False
    fa, fb = a.frame_of_reference_uid, b.frame_of_reference_uid
    if fa and fb and fa != fb:
        return False
    span_a, span_b = _span(a), _span(b)
    if span_a is None or span_b is None:
        return True  # no dates: label stem and frame of reference decide
    gap = max(span_a[0], span_b[0]) - min(span_a[1], span_b[1])
    return gap.days <= gap_days


def _span(plan: PlanFacts) -> tuple[date, date] | None:
    days = [d for d in (plan.plan_date, plan.first_treated_on, plan.last_treated_on) if d]
    return (min(days), max(days)) if days else None


def _first_plan(members: list[str], plans: Mapping[str, PlanFacts]) -> str:
    """The course's first plan: among plans no other member names as derived from (roots of the
    PREDECESSOR chain), the earliest by date, then by UID."""
    member_set = set(members)
    derived = {
        uid
        for uid in members
        for link in plans[uid].references
        if _relationship(link) == "PREDECESSOR" and link.uid in member_set
    }
    roots = [uid for uid in members if uid not in derived] or members

    def key(uid: str) -> tuple[date, str]:
        span = _span(plans[uid])
        return (span[0] if span else date.max, uid)

    return min(roots, key=key)
