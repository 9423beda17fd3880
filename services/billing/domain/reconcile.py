"""Expected charges against claim lines: the discrepancy report before a claim goes out.

Kinds (issue 11): ``missing_charge`` (earned, not claimed), ``unsupported_charge`` (claimed,
no evidence, or evidence on hold), ``excess_units``, ``duplicate_charge``, ``wrong_modifier``,
``bundled_charge``, ``deleted_code`` (not valid on the date of service, e.g. 77385 after 2025),
and ``unknown_code`` (a code the rules do not know: reported, never guessed).

A claim line matches an expected charge of the same patient and code whose period covers the
line's date (a 77427 line dated the first or the fifth day of its block matches either way).
Codes the rules only recognise (E/M, hyperthermia) have no facts behind them and are not judged.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Literal

from services.billing.domain.charges import BundledCharge, Charge
from services.billing.domain.ruleset import RuleSet

DiscrepancyKind = Literal[
    "missing_charge",
    "unsupported_charge",
    "excess_units",
    "duplicate_charge",
    "wrong_modifier",
    "bundled_charge",
    "deleted_code",
    "unknown_code",
]
COMPONENT_MODIFIERS = frozenset({"26", "TC"})
ZERO = timedelta(0)


@dataclass(frozen=True)
class ClaimLine:
    """One line of an imported claim (CSV, HL7 DFT^P03, X12 837P/837I all reduce to this)."""

    claim_id: str
    patient_id: str
    service_date: date
    cpt: str
    modifiers: tuple[str, ...] = ()
    units: int = 1
    line: int | None = None  # position in the source file, for the report

    @property
    def code(self) -> str:
        return _normal_code(self.cpt)

    @property
    def component(self) -> frozenset[str]:
        return _line_component(tuple(self.modifiers))


# A claim file repeats a few codes and modifier sets many times: each is normalised once.
@lru_cache(maxsize=4096)
def _normal_code(cpt: str) -> str:
    return cpt.strip().upper()


@lru_cache(maxsize=4096)
def _line_component(modifiers: tuple[str, ...]) -> frozenset[str]:
    return frozenset(m.strip().upper() for m in modifiers) & COMPONENT_MODIFIERS


@dataclass(frozen=True)
class Discrepancy:
    kind: DiscrepancyKind
    patient_id: str
    cpt: str
    service_date: date
    rule: str
    citation: str
    claim_id: str | None = None
    line: int | None = None
    charge_id: str | None = None
    units: int = 0
    detail: str = ""


def reconcile(
    expected: Iterable[Charge],
    claims: Iterable[ClaimLine],
    rules: RuleSet,
    *,
    payer_id: str = "medicare",
    bundled: Iterable[BundledCharge] = (),
    window: tuple[date, date] | None = None,
) -> tuple[Discrepancy, ...]:
    """``window``: only expected charges dated inside it can be missing (the claim file's
    period); claim lines are judged wherever they fall."""
    # A charge's id names it (course, code, occurrence, modifiers): one given twice counts once.
    unique = {c.id: c for c in expected}
    charges = unique.values()
    # Not a set: two identical lines are exactly what duplicate_charge reports.
    lines = sorted(claims, key=_line_order)
    remaining = {charge_id: c.units for charge_id, c in unique.items()}
    # Each (patient, code) group is put in order only if a claim line asks about it.
    by_code: dict[tuple[str, str], list[Charge]] = defaultdict(list)
    for charge in charges:
        by_code[(charge.patient_id, charge.cpt)].append(charge)
    covering: dict[tuple[str, str], _Covering] = {}  # built for the groups lines ask about
    suppressed: dict[tuple[str, str], list[BundledCharge]] = defaultdict(list)
    for b in bundled:  # in their order: the first that covers a line is reported
        suppressed[(b.charge.patient_id, b.charge.cpt)].append(b)

    out: list[Discrepancy] = []
    judged: list[ClaimLine] = []
    seen: set[tuple[str, date, str, frozenset[str]]] = set()
    for line in lines:
        code_problem = _code_problem(line, rules)
        if code_problem is not None:
            out.append(code_problem)
            continue
        judged.append(line)  # recognised codes still take part in the claim's bundles
        if _recognised_only(line.code, rules):
            continue
        identity = (line.patient_id, line.service_date, line.code, line.component)
        group = (line.patient_id, line.code)
        if group not in covering:
            covering[group] = _Covering(sorted(by_code.get(group, ()), key=_by_date_and_id))
        candidates = covering[group].candidates(line)
        units_left = line.units
        for charge in candidates:
            if units_left <= 0:
                break
            take = min(units_left, remaining[charge.id])
            if take <= 0:
                continue
            remaining[charge.id] -= take
            units_left -= take
            out.extend(_matched_problems(line, charge))
        if units_left > 0:
            out.append(
                _unmatched(
                    line,
                    units_left,
                    candidates,
                    identity in seen,
                    suppressed.get((line.patient_id, line.code), ()),
                    rules,
                )
            )
        seen.add(identity)

    out.extend(_claim_bundles(judged, rules, payer_id, out))
    for charge in charges:
        if charge.status != "ready" or remaining[charge.id] <= 0:
            continue
        if window and not window[0] <= charge.service_date <= window[1]:
            continue
        out.append(
            Discrepancy(
                kind="missing_charge",
                patient_id=charge.patient_id,
                cpt=charge.cpt,
                service_date=charge.service_date,
                rule=charge.rule,
                citation=charge.citation,
                charge_id=charge.id,
                units=remaining[charge.id],
                detail=_modifier_text(charge.modifiers),
            )
        )
    return tuple(sorted(set(out), key=_discrepancy_order))


# ---------------------------------------------------------------- helpers


def _by_date_and_id(charge: Charge) -> tuple[date, str]:
    return (charge.service_date, charge.id)


def _line_order(line: ClaimLine) -> tuple[object, ...]:
    return (
        line.patient_id,
        line.service_date,
        line.code,
        line.claim_id,
        -1 if line.line is None else line.line,
        tuple(sorted(line.modifiers)),
        line.units,
    )


def _discrepancy_order(d: Discrepancy) -> tuple[object, ...]:
    return (
        d.patient_id,
        d.service_date,
        d.cpt,
        d.kind,
        d.claim_id or "",
        -1 if d.line is None else d.line,
        d.charge_id or "",
        d.units,
        d.detail,
    )


def _code_problem(line: ClaimLine, rules: RuleSet) -> Discrepancy | None:
    if not rules.known(line.code):
        return _claim_discrepancy("unknown_code", line, "unknown_code", "", line.units)
    if rules.valid_on(line.code, line.service_date):
        return None
    rule = max(rules.rules_for_code(line.code), key=lambda r: (r.effective_to or date.max, r.id))
    when = (
        f"valid {rule.effective_from or '...'} to {rule.effective_to or '...'}"
        if rule.effective_from or rule.effective_to
        else ""
    )
    return _claim_discrepancy("deleted_code", line, rule.id, rule.citation, line.units, when)


def _recognised_only(code: str, rules: RuleSet) -> bool:
    return all(r.unit_rule == "recognised" for r in rules.rules_for_code(code))


class _Covering:
    """One patient's charges of one code, by the start of their periods: the charges whose
    period covers a day start at most the group's longest period before it. Positions keep
    the charges' order for ties."""

    def __init__(self, charges: Sequence[Charge]) -> None:
        self.positions = sorted(range(len(charges)), key=lambda i: charges[i].period[0])
        self.charges = [charges[i] for i in self.positions]
        self.starts = [c.period[0] for c in self.charges]
        self.longest = max((c.period[1] - c.period[0] for c in self.charges), default=ZERO)

    def covering(self, on: date) -> list[tuple[int, Charge]]:
        try:
            first = bisect_left(self.starts, on - max(self.longest, ZERO))
        except OverflowError:
            first = 0
        return [
            (self.positions[i], self.charges[i])
            for i in range(first, bisect_right(self.starts, on))
            if on <= self.charges[i].period[1]
        ]

    def candidates(self, line: ClaimLine) -> list[Charge]:
        """Charges the line can stand for, best first: same modifiers, then its own date
        (then the charges' order)."""
        on = line.service_date
        component = line.component
        ranked = sorted(
            self.covering(on),
            key=lambda pc: (
                _component(pc[1].modifiers) != component,
                pc[1].service_date != on,
                pc[1].service_date,
                pc[1].id,
                pc[0],
            ),
        )
        return [c for _, c in ranked]


def _component(modifiers: tuple[str, ...]) -> frozenset[str]:
    return _charge_component(tuple(modifiers))


@lru_cache(maxsize=4096)
def _charge_component(modifiers: tuple[str, ...]) -> frozenset[str]:
    return frozenset(modifiers) & COMPONENT_MODIFIERS


def _matched_problems(line: ClaimLine, charge: Charge) -> list[Discrepancy]:
    out = []
    if charge.status != "ready":
        out.append(
            _claim_discrepancy(
                "unsupported_charge",
                line,
                charge.rule,
                charge.citation,
                line.units,
                f"charge on hold: {charge.hold_reason}",
                charge.id,
            )
        )
    if _component(charge.modifiers) != line.component:
        out.append(
            _claim_discrepancy(
                "wrong_modifier",
                line,
                charge.rule,
                charge.citation,
                line.units,
                f"expected {_modifier_text(charge.modifiers)}, "
                f"claimed {_modifier_text(line.modifiers)}",
                charge.id,
            )
        )
    return out


def _unmatched(
    line: ClaimLine,
    units: int,
    candidates: list[Charge],
    repeated: bool,
    suppressed: Sequence[BundledCharge],
    rules: RuleSet,
) -> Discrepancy:
    """``suppressed``: the bundled charges of the line's patient and code."""
    for b in suppressed:
        c = b.charge
        if c.period[0] <= line.service_date <= c.period[1]:
            return _claim_discrepancy(
                "bundled_charge",
                line,
                b.bundle,
                b.citation,
                units,
                f"included in {b.primary_charge_id}",
                c.id,
            )
    if repeated:
        return _claim_discrepancy(
            "duplicate_charge", line, _rule_id(line, rules), _citation(line, rules), units
        )
    if candidates:
        best = candidates[0]
        return _claim_discrepancy(
            "excess_units",
            line,
            best.rule,
            best.citation,
            units,
            f"{units} unit(s) beyond the evidence",
            best.id,
        )
    return _claim_discrepancy(
        "unsupported_charge",
        line,
        _rule_id(line, rules),
        _citation(line, rules),
        units,
        "no delivered treatment, plan or simulation supports it",
    )


def _claim_bundles(
    lines: list[ClaimLine], rules: RuleSet, payer_id: str, found: list[Discrepancy]
) -> list[Discrepancy]:
    """Bundled pairs on the claims themselves, whatever the engine expected (a payer denies
    77300 beside a claimed 77306 even when rtops never derived the 77306)."""
    flagged = {
        (d.claim_id, d.line, d.cpt, d.service_date) for d in found if d.kind == "bundled_charge"
    }
    positions: dict[str, list[int]] = defaultdict(list)  # each code's lines, in line order
    for i, line in enumerate(lines):
        positions[line.code].append(i)
    out = []
    for bundle in rules.bundles:
        window = bundle.window_for(payer_id)
        primaries: dict[str, list[ClaimLine]] = defaultdict(list)  # by patient, in line order
        for i in sorted(i for code in bundle.primary for i in positions.get(code, ())):
            primaries[lines[i].patient_id].append(lines[i])
        for i in sorted(i for code in bundle.bundled for i in positions.get(code, ())):
            line = lines[i]
            if (line.claim_id, line.line, line.code, line.service_date) in flagged:
                continue
            for primary in primaries.get(line.patient_id, ()):
                if primary is line:
                    continue
                lo = primary.service_date - timedelta(days=window.before)
                hi = primary.service_date + timedelta(days=window.after)
                if lo <= line.service_date <= hi:
                    out.append(
                        _claim_discrepancy(
                            "bundled_charge",
                            line,
                            bundle.id,
                            bundle.citation,
                            line.units,
                            f"claimed beside {primary.code} of {primary.service_date.isoformat()}",
                        )
                    )
                    flagged.add((line.claim_id, line.line, line.code, line.service_date))
                    break
    return out


def _rule_id(line: ClaimLine, rules: RuleSet) -> str:
    effective = [r for r in rules.rules_for_code(line.code) if r.effective(line.service_date)]
    return min(effective, key=lambda r: r.id).id if effective else line.code


def _citation(line: ClaimLine, rules: RuleSet) -> str:
    effective = [r for r in rules.rules_for_code(line.code) if r.effective(line.service_date)]
    return min(effective, key=lambda r: r.id).citation if effective else ""


def _claim_discrepancy(
    kind: DiscrepancyKind,
    line: ClaimLine,
    rule: str,
    citation: str,
    units: int,
    detail: str = "",
    charge_id: str | None = None,
) -> Discrepancy:
    return Discrepancy(
        kind=kind,
        patient_id=line.patient_id,
        cpt=line.code,
        service_date=line.service_date,
        rule=rule,
        citation=citation,
        claim_id=line.claim_id,
        line=line.line,
        charge_id=charge_id,
        units=units,
        detail=detail,
    )


def _modifier_text(modifiers: Iterable[str]) -> str:
    mods = sorted(m.upper() for m in modifiers)
    return "-" + "-".join(mods) if mods else "no modifier"
