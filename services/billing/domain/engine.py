"""The charge engine: a pure function of (course facts, rules, settings, payer, as-of date).

For each family of occurrences the rules file picks the code effective on the date of service
whose conditions hold; the rule's unit rule turns the occurrence into service lines; missing
documentation turns a line into a ``hold``; the practice's place of service and components turn
a line into claim lines with modifiers; bundles drop what another charge already pays for.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import NamedTuple

from services.billing.domain import occurrences as occ
from services.billing.domain import technique
from services.billing.domain.charges import BundledCharge, Charge, Unresolved
from services.billing.domain.course_end import (
    CourseStatus,
    UnitBlock,
    course_status,
    earned_blocks,
)
from services.billing.domain.facts import CourseFacts, CourseKind, DocumentFacts
from services.billing.domain.modifiers import lines_for
from services.billing.domain.occurrences import CourseContext, Occurrence
from services.billing.domain.policy import BillingSettings, Payer
from services.billing.domain.ruleset import Rule, RuleSet
from services.billing.domain.sessions import Session, count_sessions

# CPT add-on parenthetical (unconfirmed wording): 77293 only with 77295 or 77301.
ADD_ON_PRIMARIES = {"77293": frozenset({"77295", "77301"})}


class ServiceLine(NamedTuple):
    """A coded service before modifiers (a named tuple: one per charge, built fast)."""

    rule: Rule
    key: str
    units: int
    service_date: date
    period: tuple[date, date]
    evidence: tuple[str, ...]
    hold_reason: str | None = None


@dataclass(frozen=True)
class CourseEvaluation:
    course_id: str
    patient_id: str
    kind: CourseKind  # after the SRS/SBRT fraction limits
    status: CourseStatus
    sessions: tuple[Session, ...]
    charges: tuple[Charge, ...]
    bundled: tuple[BundledCharge, ...] = ()
    unresolved: tuple[Unresolved, ...] = ()

    @property
    def fractions_delivered(self) -> int:
        return self.status.sessions


def evaluate_course(
    course: CourseFacts,
    rules: RuleSet,
    settings: BillingSettings,
    payer: Payer,
    *,
    as_of: date,
) -> CourseEvaluation:
    """Every charge the course has earned by ``as_of`` (the clock, passed in)."""
    sessions = count_sessions(course.records, settings)
    external = tuple(s for s in sessions if s.kind in occ.EXTERNAL_KINDS)
    status = course_status(course, sessions, as_of=as_of, settings=settings, counted=external)
    plans = occ.latest_plans(course.plans)
    external_plans = [
        plans[u] for u in sorted({u for s in external for u in s.plan_uids}) if u in plans
    ]
    ctx = CourseContext(
        course=course,
        settings=settings,
        payer=payer,
        sessions=sessions,
        external=external,
        status=status,
        plans=plans,
        kind=occ.effective_kind(course.kind, len(external)),
        superficial=technique.superficial(external_plans),
        evidence={s.id: s.evidence for s in sessions},
    )

    lines: list[ServiceLine] = []
    unresolved: list[Unresolved] = []
    # Occurrences of one family often share one attribute mapping (delivery and guidance do,
    # per distinct plan set): the rules are selected once per mapping and effective-dates
    # interval. The mapping is kept alive in the memo, so its id is not reused meanwhile.
    chosen_for: dict[tuple[str, int, int], tuple[object, list[Rule]]] = {}
    for family in occ.FAMILIES:
        for occurrence in family(ctx):
            memo_key = (
                occurrence.family,
                id(occurrence.attrs),
                rules.interval(occurrence.service_date),
            )
            held = chosen_for.get(memo_key)
            if held is None:
                chosen = rules.select(occurrence.family, occurrence.service_date, occurrence.attrs)
                chosen_for[memo_key] = (occurrence.attrs, chosen)
            else:
                chosen = held[1]
            if not chosen:
                if _must_code(occurrence):
                    unresolved.append(_unresolved(course.course_id, occurrence))
                continue
            for rule in chosen:
                lines.extend(UNIT_RULES[rule.unit_rule](ctx, occurrence, rule))

    lines = _cap_units(_add_on_holds(lines))
    modifiers_of: dict[str, list[tuple[str, ...]]] = {}
    charges = [
        charge
        for line in lines
        for charge in _claim_lines(course, line, settings, rules.version, modifiers_of)
    ]
    kept, bundled = apply_bundles(charges, rules, payer)
    return CourseEvaluation(
        course_id=course.course_id,
        patient_id=course.patient_id,
        kind=ctx.kind,
        status=status,
        sessions=sessions,
        charges=tuple(sorted(kept, key=_charge_order)),
        bundled=tuple(sorted(bundled, key=lambda b: _charge_order(b.charge))),
        unresolved=tuple(sorted(unresolved, key=lambda u: (u.service_date, u.family, u.key))),
    )


# ---------------------------------------------------------------- unit rules


UnitRule = Callable[[CourseContext, Occurrence, Rule], list[ServiceLine]]


def _per_occurrence(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    hold = o.hold_reason
    if hold is None and rule.requires:
        hold = _missing_documents(ctx.course.documents, rule, o, ctx.settings)
    return [
        ServiceLine(
            rule, o.key, 1, o.service_date, (o.service_date, o.service_date), o.evidence, hold
        )
    ]


def _per_five(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    # CMS Pub 100-04 Ch. 13 s. 70: 3-4 leftover fractions at a course end earn one more unit,
    # and a course of 1-2 fractions earns none (77431 instead).
    return _blocks(ctx, o, rule, earned_blocks(ctx.status, "mirror_77427", minimum=3))


def _per_five_physics(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    blocks = earned_blocks(ctx.status, ctx.settings.physics_remainder_policy)
    # CCI 2006 (ACOA): 77336 may also be reported when the whole course is under five.
    if not blocks and any(1 <= p.count < 5 for p in ctx.status.closures):
        first_end = min(p.count for p in ctx.status.closures if 1 <= p.count < 5)
        blocks = [UnitBlock(index=1, first=1, last=first_end)]
    return _blocks(ctx, o, rule, blocks)


def _blocks(
    ctx: CourseContext, o: Occurrence, rule: Rule, blocks: Sequence[UnitBlock]
) -> list[ServiceLine]:
    out = []
    for block in blocks:
        sessions = ctx.external[block.first - 1 : block.last]
        if not sessions:
            continue
        period = (sessions[0].day, sessions[-1].day)
        on = period[0] if ctx.payer.management_service_date == "block_start" else period[1]
        block_occurrence = o._replace(
            key=f"unit-{block.index}",
            service_date=on,
            evidence=tuple(sorted({e for s in sessions for f in s.fractions for e in f.event_ids})),
            sessions=tuple(sessions),
        )
        hold = _missing_documents(ctx.course.documents, rule, block_occurrence, ctx.settings)
        out.append(_line(rule, block_occurrence, units=1, hold=hold, period=period))
    return out


def _whole_course_1_2(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    # CPT 77431: a complete course of one or two fractions only, known once the course ended.
    if not ctx.status.closed or not 1 <= ctx.status.sessions <= 2:
        return []
    return [_line(rule, o, units=1, period=(ctx.external[0].day, ctx.external[-1].day))]


def _per_course_at_end(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    # Per-course management (77432 / 77435) is billed when the course has ended.
    if not ctx.status.closed or not ctx.external:
        return []
    return [_line(rule, o, units=1, period=(ctx.external[0].day, ctx.external[-1].day))]


def _per_plan(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    hold = o.hold_reason
    if hold is None and o.extra.get("replan"):
        # A second plan for the course needs its documented reason (AAPC; Highmark R-4-016).
        documented = any(
            d.kind == "replan_justification" and d.plan_uid in o.plan_uids
            for d in ctx.course.documents
        )
        hold = None if documented else "missing_replan_justification"
    return [_line(rule, o, units=1, hold=hold)]


def _per_calculation(ctx: CourseContext, o: Occurrence, rule: Rule) -> list[ServiceLine]:
    if ctx.settings.dosimetry_units_per == "beam":
        units = max(int(o.extra.get("beams", 0)), 1)
    else:
        units = len(o.plan_uids)
    return [_line(rule, o, units=units, hold=o.hold_reason)]


UNIT_RULES: dict[str, UnitRule] = {
    "per_session": _per_occurrence,
    "per_fraction_max_5": _per_occurrence,
    "per_simulation_day": _per_occurrence,
    "per_simulation": _per_occurrence,
    "once_per_course": _per_occurrence,
    "per_five_fractions": _per_five,
    "per_five_physics": _per_five_physics,
    "whole_course_1_2": _whole_course_1_2,
    "per_course_at_end": _per_course_at_end,
    "per_plan": _per_plan,
    "per_calculation": _per_calculation,
    "recognised": lambda ctx, o, rule: [],
}


def _line(
    rule: Rule,
    o: Occurrence,
    *,
    units: int,
    hold: str | None = None,
    period: tuple[date, date] | None = None,
) -> ServiceLine:
    return ServiceLine(
        rule=rule,
        key=o.key,
        units=units,
        service_date=o.service_date,
        period=period or (o.service_date, o.service_date),
        evidence=o.evidence,
        hold_reason=hold,
    )


def _missing_documents(
    documents: Sequence[DocumentFacts], rule: Rule, o: Occurrence, settings: BillingSettings
) -> str | None:
    """The first document kind the rule requires that no document in the occurrence's span
    provides. A management note must record a face-to-face exam (ASTRO TM FAQ: each 77427 unit
    needs one by the physician)."""
    if not rule.requires:
        return None
    days = [s.day for s in o.sessions] or [o.service_date]
    grace = timedelta(days=settings.management_note_grace_days)
    start, end = min(days) - grace, max(days) + grace
    for kind in rule.requires:
        if not any(
            d.kind == kind
            and start <= d.on <= end
            and (d.face_to_face or kind != "management_note")
            for d in documents
        ):
            return f"missing_{kind}"
    return None


def _must_code(o: Occurrence) -> bool:
    """Deliveries must always be coded; a course-level occurrence no rule selects is simply not
    billable here (e.g. management of a superficial course)."""
    return o.family in {"linac_delivery", "proton_delivery", "brachy_delivery", "guidance"}


def _unresolved(course_id: str, o: Occurrence) -> Unresolved:
    reason = o.hold_reason or "no_rule_matches"
    return Unresolved(
        course_id=course_id,
        family=o.family,
        key=o.key,
        service_date=o.service_date,
        reason=reason,
        attrs=tuple(sorted((k, v) for k, v in o.attrs.items())),
    )


# ---------------------------------------------------------------- holds across lines


def _add_on_holds(lines: list[ServiceLine]) -> list[ServiceLine]:
    codes = {line.rule.code for line in lines}
    out = []
    for line in lines:
        primaries = ADD_ON_PRIMARIES.get(line.rule.code)
        if primaries and not primaries & codes and line.hold_reason is None:
            line = line._replace(hold_reason="add_on_without_primary")
        out.append(line)
    return out


def _cap_units(lines: list[ServiceLine]) -> list[ServiceLine]:
    """Lines beyond a rule's per-course maximum are held (77373: at most five per course)."""
    capped: dict[str, list[ServiceLine]] = defaultdict(list)
    out = []
    for line in lines:
        if line.rule.max_units is None:
            out.append(line)
        else:
            capped[line.rule.id].append(line)
    for rule_lines in capped.values():
        rule_lines.sort(key=lambda line: (line.service_date, line.key))
        limit = rule_lines[0].rule.max_units
        used = 0
        for line in rule_lines:
            used += line.units
            if limit is not None and used > limit and line.hold_reason is None:
                line = line._replace(hold_reason="exceeds_max_units")
            out.append(line)
    return out


# ---------------------------------------------------------------- claim lines and bundles


def _claim_lines(
    course: CourseFacts,
    line: ServiceLine,
    settings: BillingSettings,
    version: str,
    modifiers_of: dict[str, list[tuple[str, ...]]],
) -> list[Charge]:
    """``modifiers_of``: each rule's modifier sets, filled on first use (one per evaluation)."""
    rule = line.rule
    lines = modifiers_of.get(rule.id)
    if lines is None:
        lines = modifiers_of[rule.id] = lines_for(rule, settings)
    status = "hold" if line.hold_reason else "ready"
    prefix = f"{course.course_id}|{rule.code}|{line.key}|"
    return [
        Charge(
            id=prefix + "-".join(modifiers),
            patient_id=course.patient_id,
            course_id=course.course_id,
            cpt=rule.code,
            modifiers=modifiers,
            units=line.units,
            service_date=line.service_date,
            status=status,
            hold_reason=line.hold_reason,
            evidence=line.evidence,
            rule=rule.id,
            citation=rule.citation,
            period=line.period,
            rules_version=version,
        )
        for modifiers in lines
    ]


def apply_bundles(
    charges: Sequence[Charge], rules: RuleSet, payer: Payer
) -> tuple[list[Charge], list[BundledCharge]]:
    """Drop each charge a bundle includes in another charge of the same patient within the
    bundle's window. Every test runs against the unbundled set, so the result does not depend
    on the order of charges or bundles."""
    bundled: dict[str, BundledCharge] = {}
    by_code: dict[str, list[Charge]] = defaultdict(list)
    for charge in charges:
        by_code[charge.cpt].append(charge)
    for bundle in rules.bundles:
        included = [c for code in bundle.bundled for c in by_code.get(code, ())]
        if not included:
            continue
        primaries = sorted(
            (c for code in bundle.primary for c in by_code.get(code, ())), key=_charge_order
        )
        window = bundle.window_for(payer.id)
        for charge in included:
            if charge.id in bundled:
                continue
            for primary in primaries:
                if primary.patient_id != charge.patient_id or primary.id == charge.id:
                    continue
                lo = primary.service_date - timedelta(days=window.before)
                hi = primary.service_date + timedelta(days=window.after)
                if lo <= charge.service_date <= hi:
                    bundled[charge.id] = BundledCharge(
                        charge, bundle.id, primary.id, bundle.citation
                    )
                    break
    kept = [c for c in charges if c.id not in bundled]
    return kept, list(bundled.values())


def _charge_order(charge: Charge) -> tuple[date, str, str]:
    return (charge.service_date, charge.cpt, charge.id)
