"""The documents service's rules: pure functions over plain data, no I/O.

- ``snapshot_of``: what a version keeps of an RT Plan (fractions, prescription, beams,
  machines, technique, approval) and ``changes_between`` two of them;
- ``version_history``: each course's plans (grouped by ``shared.courses``) in version order;
- the checklist of required documents per plan version (``ChecklistPolicy``, ``checklist``);
- the weekly documents per treatment week (``weekly_status``);
- ``flag_reasons``: why a delivered fraction is flagged;
- ``letter_facts``: what the referring-provider letter says.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from pydantic import BaseModel, Field

from shared.calendar import iso_week_of
from shared.courses import Grouping, PlanLink
from shared.events.dicom import PlanReceived

# ---------------------------------------------------------------- plan snapshots


@dataclass(frozen=True)
class PlanSnapshot:
    """What a plan version keeps of one RT Plan revision."""

    uid: str
    patient_id: str
    revision: int
    received_at: datetime
    label: str | None = None
    intent: str | None = None
    site: str | None = None
    plan_date: date | None = None
    approval_status: str | None = None
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    fractions: int | None = None
    prescription_gy: float | None = None
    beams: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    technique: str | None = None
    references: tuple[PlanLink, ...] = ()
    frame_of_reference_uid: str | None = None
    referring_physician: str | None = None
    prescription_description: str | None = None

    @property
    def approved(self) -> bool:
        """DICOM Approval module (PS3.3 C.8.8.16): APPROVED with Reviewer Name and Review
        Date/Time (type 2C when APPROVED). Evidence for the plan-approval item only, never for
        a signed written directive (domain-dicom.md s. 5.6)."""
        return (
            (self.approval_status or "").upper() == "APPROVED"
            and bool(self.reviewer)
            and self.reviewed_at is not None
        )

    @property
    def dose_per_fraction_gy(self) -> float | None:
        if self.prescription_gy is None or not self.fractions:
            return None
        return round(self.prescription_gy / self.fractions, 3)


def technique_of(plan: PlanReceived) -> str | None:
    """VMAT (modulated arcs), IMRT (modulated static beams), PROTON / ION, 3D, or None (no
    beams, e.g. brachytherapy)."""
    if plan.ion:
        return "PROTON" if "PROTON" in {t.upper() for t in plan.radiation_types} else "ION"
    beams = [b for b in plan.beams if (b.delivery_type or "TREATMENT").upper() == "TREATMENT"]
    if not beams:
        return None
    if any(b.mlc_modulated for b in beams):
        return "VMAT" if any(b.gantry_rotation == "arc" for b in beams) else "IMRT"
    return "3D"


def snapshot_of(plan: PlanReceived, received_at: datetime) -> PlanSnapshot:
    groups = plan.fraction_groups
    # A plan's fraction groups are usually phases delivered one after the other (a boost group
    # after the initial one): the plan's fractions and dose are taken as their sums.
    fractions = sum(g.fractions_planned or 0 for g in groups) or None
    doses = [g.prescription_dose_gy for g in groups if g.prescription_dose_gy is not None]
    if doses:
        prescription: float | None = round(sum(doses), 3)
    else:
        targets = [
            d.target_prescription_dose_gy
            for d in plan.dose_references
            if d.target_prescription_dose_gy is not None
        ]
        prescription = round(max(targets), 3) if targets else None
    beams = tuple(
        b.name or (f"#{b.number}" if b.number is not None else "?")
        for b in plan.beams
        if (b.delivery_type or "TREATMENT").upper() == "TREATMENT"
    )
    machines = tuple(sorted(set(plan.machines) | {b.machine for b in plan.beams if b.machine}))
    return PlanSnapshot(
        uid=plan.object.sop_instance_uid,
        patient_id=plan.patient.id,
        revision=plan.object.revision,
        received_at=received_at,
        label=plan.label,
        intent=plan.intent,
        site=plan.treatment_site,
        plan_date=plan.plan_date,
        approval_status=plan.approval_status,
        reviewer=plan.reviewer_name,
        reviewed_at=plan.reviewed_at,
        fractions=fractions,
        prescription_gy=prescription,
        beams=beams,
        machines=machines,
        technique=technique_of(plan),
        references=tuple(
            PlanLink(uid=r.sop_instance_uid, relationship=r.relationship)
            for r in plan.referenced_plans
        ),
        frame_of_reference_uid=plan.frame_of_reference_uid,
        referring_physician=plan.referring_physician,
        prescription_description=plan.prescription_description,
    )


def _show(value: object) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_COMPARED: tuple[tuple[str, str], ...] = (
    ("fractions", "fractions"),
    ("prescription_gy", "prescription (Gy)"),
    ("technique", "technique"),
    ("machines", "machine"),
    ("approval_status", "approval"),
    ("intent", "intent"),
    ("site", "site"),
)


def changes_between(before: PlanSnapshot | None, after: PlanSnapshot) -> tuple[str, ...]:
    """What changed from ``before`` (the predecessor, or the earlier revision of one plan) to
    ``after``, one line per fact, e.g. ``fractions: 28 -> 25``; empty when nothing did."""
    if before is None:
        return ()
    out = [
        f"{name}: {_show(getattr(before, attr))} -> {_show(getattr(after, attr))}"
        for attr, name in _COMPARED
        if getattr(before, attr) != getattr(after, attr)
    ]
    if before.beams != after.beams:
        added = [b for b in after.beams if b not in before.beams]
        removed = [b for b in before.beams if b not in after.beams]
        parts = [f"{len(before.beams)} -> {len(after.beams)}"]
        if added:
            parts.append(f"added {', '.join(added)}")
        if removed:
            parts.append(f"removed {', '.join(removed)}")
        out.append("beams: " + "; ".join(parts))
    return tuple(out)


# ---------------------------------------------------------------- versions


@dataclass(frozen=True)
class Version:
    plan_uid: str
    course_id: str
    number: int
    predecessor_uid: str | None
    predecessor_inferred: bool
    concurrent_uids: tuple[str, ...]
    superseded_by: str | None


def _relationship(link: PlanLink) -> str:
    return (link.relationship or "").strip().upper()


def _when(plan: PlanSnapshot) -> tuple[date, datetime, str]:
    return (plan.plan_date or plan.received_at.date(), plan.received_at, plan.uid)


def version_history(grouping: Grouping, plans: Mapping[str, PlanSnapshot]) -> dict[str, Version]:
    """Each course plan's version. CONCURRENT plans are one conceptual plan and share a number
    (domain-dicom.md s. 5.1); a plan referencing another as PREDECESSOR comes after it; plans
    with no such reference (many TPS exports leave the sequence empty) follow the course's
    earlier versions by date, their predecessor marked inferred. QA plans (grouping.excluded)
    have no version."""
    out: dict[str, Version] = {}
    for course in grouping.courses:
        members = [uid for uid in course.plan_uids if uid in plans]
        if members:
            out.update(_course_versions(course.id, members, plans))
    return out


def _find(parent: dict[str, str], uid: str) -> str:
    while parent[uid] != uid:
        uid = parent[uid]
    return uid


def _course_versions(
    course_id: str, members: list[str], plans: Mapping[str, PlanSnapshot]
) -> dict[str, Version]:
    member_set = set(members)
    parent = {uid: uid for uid in members}
    for uid in members:
        for link in plans[uid].references:
            if _relationship(link) == "CONCURRENT" and link.uid in member_set:
                a, b = _find(parent, uid), _find(parent, link.uid)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    units: dict[str, list[str]] = defaultdict(list)
    for uid in members:
        units[_find(parent, uid)].append(uid)
    for unit in units.values():
        unit.sort()
    explicit: dict[str, str] = {}  # unit -> the plan it names as PREDECESSOR
    after: dict[str, set[str]] = defaultdict(set)  # unit -> units it must follow
    for root, unit in units.items():
        for uid in unit:
            for link in plans[uid].references:
                if _relationship(link) == "PREDECESSOR" and link.uid in member_set:
                    other = _find(parent, link.uid)
                    if other != root:
                        after[root].add(other)
                        explicit.setdefault(root, link.uid)
    first_seen = {root: min(_when(plans[u]) for u in unit) for root, unit in units.items()}
    # Kahn's order, ties by date: a cycle (plans naming each other) falls back to dates.
    order: list[str] = []
    remaining = set(units)
    while remaining:
        ready = [r for r in remaining if not (after[r] & remaining)] or list(remaining)
        nxt = min(ready, key=first_seen.__getitem__)
        order.append(nxt)
        remaining.discard(nxt)
    number = {root: i + 1 for i, root in enumerate(order)}
    predecessor: dict[str, tuple[str | None, bool]] = {}
    for i, root in enumerate(order):
        if root in explicit:
            predecessor[root] = (explicit[root], False)
        elif i > 0:
            predecessor[root] = (units[order[i - 1]][0], True)
        else:
            predecessor[root] = (None, False)
    successor: dict[str, str] = {}
    for root in order:
        pred, _ = predecessor[root]
        if pred is not None:
            pred_root = _find(parent, pred)
            held = successor.get(pred_root)
            if held is None or number[_find(parent, held)] > number[root]:
                successor[pred_root] = units[root][0]
    out: dict[str, Version] = {}
    for root, unit in units.items():
        pred, inferred = predecessor[root]
        for uid in unit:
            out[uid] = Version(
                plan_uid=uid,
                course_id=course_id,
                number=number[root],
                predecessor_uid=pred,
                predecessor_inferred=inferred,
                concurrent_uids=tuple(u for u in unit if u != uid),
                superseded_by=successor.get(root),
            )
    return out


# ---------------------------------------------------------------- required documents

DOC_TYPES: tuple[str, ...] = (
    "written_directive",
    "dosimetry_plan_report",
    "physics_plan_qa",
    "patient_qa_measurement",
    "plan_approval",
    "management_note",
    "physics_check",
    "other",
)
PLAN_ITEMS: tuple[str, ...] = DOC_TYPES[:5]
WEEKLY_KINDS: tuple[str, ...] = ("management_note", "physics_check")


class ChecklistRule(BaseModel):
    """Adds or waives items for plans whose site contains ``site`` (case-insensitive) and/or
    whose technique is ``technique``."""

    site: str | None = None
    technique: str | None = None
    require: list[str] = Field(default_factory=list)
    waive: list[str] = Field(default_factory=list)

    def matches(self, site: str | None, technique: str | None) -> bool:
        if self.site and self.site.casefold() not in (site or "").casefold():
            return False
        return not (self.technique and self.technique.upper() != (technique or "").upper())


class ChecklistPolicy(BaseModel):
    """The required documents per plan version: ``base`` for every plan, then each matching
    rule in order. The default follows ACR-ASTRO practice parameters (written directive,
    dosimetry report, physics plan check, approval) and adds the patient-specific QA
    measurement for IMRT / VMAT (AAPM TG-218)."""

    base: list[str] = Field(
        default_factory=lambda: [
            "written_directive",
            "dosimetry_plan_report",
            "physics_plan_qa",
            "plan_approval",
        ]
    )
    rules: list[ChecklistRule] = Field(
        default_factory=lambda: [
            ChecklistRule(technique="IMRT", require=["patient_qa_measurement"]),
            ChecklistRule(technique="VMAT", require=["patient_qa_measurement"]),
        ]
    )

    def model_post_init(self, _: object) -> None:
        names = set(self.base) | {n for r in self.rules for n in (*r.require, *r.waive)}
        unknown = sorted(names - set(PLAN_ITEMS))
        if unknown:
            raise ValueError(f"unknown checklist items {unknown}; use {', '.join(PLAN_ITEMS)}")

    def required(self, site: str | None, technique: str | None) -> tuple[str, ...]:
        items = list(self.base)
        for rule in self.rules:
            if rule.matches(site, technique):
                items += [i for i in rule.require if i not in items]
                items = [i for i in items if i not in rule.waive]
        return tuple(i for i in PLAN_ITEMS if i in items)


@dataclass(frozen=True)
class Checklist:
    required: tuple[str, ...]
    missing: tuple[str, ...]
    evidence: Mapping[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing


def checklist(
    required: Sequence[str], filed: Mapping[str, str], *, approved_in_dicom: bool
) -> Checklist:
    """``filed``: document type -> the id of a document of that type filed for the version.
    The DICOM approval (``PlanSnapshot.approved``) satisfies ``plan_approval`` and nothing
    else: it is never taken as a signed written directive (domain-dicom.md s. 5.6)."""
    evidence = {t: filed[t] for t in required if t in filed}
    if "plan_approval" in required and "plan_approval" not in evidence and approved_in_dicom:
        evidence["plan_approval"] = "dicom:approval_status"
    missing = tuple(t for t in required if t not in evidence)
    return Checklist(required=tuple(required), missing=missing, evidence=evidence)


# Encapsulated PDF titles -> document type (a TPS report, a physics check); others are "other".
_TITLE_TYPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"written directive|prescription|\brx\b", re.I), "written_directive"),
    (
        re.compile(
            r"patient.?specific|\bpsqa\b|measurement|gamma|delta4|arccheck|portal dos", re.I
        ),
        "patient_qa_measurement",
    ),
    (
        re.compile(r"physics|plan check|second check|chart check|independent", re.I),
        "physics_plan_qa",
    ),
    (
        re.compile(r"plan report|dosimetry|treatment plan|dvh|plan summary", re.I),
        "dosimetry_plan_report",
    ),
)


def doc_type_of_title(title: str | None) -> str:
    for pattern, doc_type in _TITLE_TYPES:
        if title and pattern.search(title):
            return doc_type
    return "other"


# ---------------------------------------------------------------- weekly documents


@dataclass(frozen=True)
class WeekStatus:
    week: str
    fractions: int
    present: tuple[str, ...]
    missing: tuple[str, ...]


def weekly_status(
    treated_days: Iterable[date], notes: Iterable[tuple[str, str]]
) -> tuple[WeekStatus, ...]:
    """Per ISO week with treatment: the physician's management note and the physicist's weekly
    chart check (billing holds 77427 / 77336 without them, domain-billing.md s. 2).
    ``notes``: (week, kind) of the course's signed, not voided notes."""
    by_week: dict[str, int] = defaultdict(int)
    for day in treated_days:
        by_week[iso_week_of(day)] += 1
    held = set(notes)
    out = []
    for week in sorted(by_week):
        present = tuple(k for k in WEEKLY_KINDS if (week, k) in held)
        missing = tuple(k for k in WEEKLY_KINDS if (week, k) not in held)
        out.append(WeekStatus(week, by_week[week], present, missing))
    return tuple(out)


# ---------------------------------------------------------------- flags

FLAG_REASONS: tuple[str, ...] = ("unapproved", "superseded", "documents_incomplete")


def flag_reasons(
    *, approved: bool, superseded: bool, missing_documents: Sequence[str]
) -> tuple[str, ...]:
    """Why a delivered fraction is flagged, as of its delivery: the version was not approved,
    a later version already existed, or its checklist was incomplete."""
    out = []
    if not approved:
        out.append("unapproved")
    if superseded:
        out.append("superseded")
    if missing_documents:
        out.append("documents_incomplete")
    return tuple(out)


# ---------------------------------------------------------------- letters


def person_name(pn: str | None) -> str | None:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``) as a reader writes it:
    ``Dr. Olga Oncologist``."""
    if not pn:
        return None
    parts = [p.strip() for p in pn.split("=")[0].split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    words = [prefix, given, middle, family]
    text = " ".join(w for w in words if w)
    return f"{text}, {suffix}" if suffix else (text or None)


@dataclass(frozen=True)
class LetterFacts:
    course_id: str
    patient_id: str
    patient_name: str | None
    birth_date: date | None
    referring_provider: str | None
    treatment_site: str | None
    intent: str | None
    prescription_gy: float | None
    fractions: int | None
    dose_per_fraction_gy: float | None
    start_date: date
    treating_physician: str | None
    department_contact: str
    plan_label: str | None
    plan_uids: tuple[str, ...]


def letter_facts(
    *,
    course_id: str,
    patient_name: str | None,
    birth_date: date | None,
    plans: Sequence[PlanSnapshot],
    start_date: date,
    department_contact: str,
    referral: str | None = None,
) -> LetterFacts:
    """The letter of a course whose first fraction was delivered on ``start_date``. ``plans``:
    the course's current versions (CONCURRENT plans together), the treated one first. The
    referral (the scheduler's) wins over the plan's Referring Physician's Name."""
    first = plans[0]
    fractions = first.fractions
    prescription = first.prescription_gy
    concurrent = [p for p in plans[1:] if p.prescription_gy is not None]
    if concurrent and prescription is not None:
        # Concurrent plans are one conceptual plan (domain-dicom.md s. 5.1): doses add up,
        # fractions are counted once.
        prescription = round(prescription + sum(p.prescription_gy or 0 for p in concurrent), 3)
    referring = referral or next(
        (p.referring_physician for p in plans if p.referring_physician), None
    )
    return LetterFacts(
        course_id=course_id,
        patient_id=first.patient_id,
        patient_name=person_name(patient_name),
        birth_date=birth_date,
        referring_provider=person_name(referring),
        treatment_site=first.site,
        intent=(first.intent or "").capitalize() or None,
        prescription_gy=prescription,
        fractions=fractions,
        dose_per_fraction_gy=round(prescription / fractions, 3)
        if prescription is not None and fractions
        else None,
        start_date=start_date,
        treating_physician=person_name(next((p.reviewer for p in plans if p.reviewer), None)),
        department_contact=department_contact,
        plan_label=first.label,
        plan_uids=tuple(p.uid for p in plans),
    )
