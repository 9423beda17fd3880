"""The charge rules as data: their model, parsing and validation (docs/billing.md has the format).

A rule says which code a *family* of occurrences (a session's delivery, a plan's dosimetry, a
course's management) gets, from when to when, under which conditions (``when``: attributes the
engine computes from facts, never from names), with which component, unit rule, documentation
and citation. Bundles say which codes are never paid beside which others, and in what window.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

Component = Literal["professional", "technical", "split", "none"]
UNIT_RULES = frozenset(
    {
        "per_session",
        "per_five_fractions",
        "whole_course_1_2",
        "once_per_course",
        "per_course_at_end",
        "per_five_physics",
        "per_plan",
        "per_calculation",
        "per_simulation_day",
        "per_simulation",
        "per_fraction_max_5",
        "recognised",
    }
)
BUNDLED_RULES = Path(__file__).resolve().parent.parent / "rules" / "charge_rules.yaml"


class RulesError(ValueError):
    """The rules file is malformed; the message names the rule and the field to fix."""


@dataclass(frozen=True)
class Rule:
    id: str
    code: str
    family: str
    slot: str
    component: Component
    unit_rule: str
    citation: str
    effective_from: date | None = None
    effective_to: date | None = None  # inclusive
    when: Mapping[str, Any] = field(default_factory=dict)
    modifiers: tuple[str, ...] = ()  # always appended (e.g. 77387-26 from 2026)
    requires: tuple[str, ...] = ()  # document kinds a ready charge needs
    max_units: int | None = None

    def effective(self, on: date) -> bool:
        return (self.effective_from is None or self.effective_from <= on) and (
            self.effective_to is None or on <= self.effective_to
        )

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        return all(attrs.get(k) == v for k, v in self.when.items())


@dataclass(frozen=True)
class Window:
    before: int = 0
    after: int = 0


@dataclass(frozen=True)
class Bundle:
    """``bundled`` codes are not paid beside a ``primary`` code for the same patient dated
    from ``window.before`` days before to ``window.after`` days after it."""

    id: str
    primary: frozenset[str]
    bundled: frozenset[str]
    window: Window
    citation: str
    payer_windows: Mapping[str, Window] = field(default_factory=dict)

    def window_for(self, payer_id: str) -> Window:
        return self.payer_windows.get(payer_id, self.window)


_UNHASHABLE = object()


@dataclass(frozen=True)
class RuleSet:
    """The rules and bundles of one rules file. Indexes by family and by code, and the
    memo of :meth:`select`, are built from the (immutable) rules at construction and are not
    part of equality, hashing or repr."""

    version: str
    rules: tuple[Rule, ...]
    bundles: tuple[Bundle, ...]
    _by_family: Mapping[str, tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _by_code: Mapping[str, tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    # Per family: the ``when`` keys any of its rules reads, so a memo key holds only those.
    _family_keys: Mapping[str, tuple[str, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    # Dates where some rule's effectiveness changes: between two of them, every rule is
    # effective or not throughout, so select's memo keys on the interval, not the day.
    _boundaries: tuple[date, ...] = field(init=False, repr=False, compare=False, default=())
    _selected: dict[tuple[Any, ...], tuple[Rule, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _valid: dict[tuple[str, int], bool] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        by_family: dict[str, list[Rule]] = {}
        by_code: dict[str, list[Rule]] = {}
        keys: dict[str, dict[str, None]] = {}
        bounds: set[date] = set()
        for rule in self.rules:
            by_family.setdefault(rule.family, []).append(rule)
            by_code.setdefault(rule.code, []).append(rule)
            keys.setdefault(rule.family, {}).update(dict.fromkeys(rule.when))
            if rule.effective_from is not None:
                bounds.add(rule.effective_from)
            if rule.effective_to is not None and rule.effective_to < date.max:
                bounds.add(rule.effective_to + timedelta(days=1))
        object.__setattr__(self, "_by_family", {k: tuple(v) for k, v in by_family.items()})
        object.__setattr__(self, "_by_code", {k: tuple(v) for k, v in by_code.items()})
        object.__setattr__(self, "_family_keys", {k: tuple(v) for k, v in keys.items()})
        object.__setattr__(self, "_boundaries", tuple(sorted(bounds)))
        object.__setattr__(self, "_selected", {})
        object.__setattr__(self, "_valid", {})

    def family(self, family: str) -> list[Rule]:
        return list(self._by_family.get(family, ()))

    def interval(self, on: date) -> int:
        """Which effective-dates interval ``on`` falls in: every rule is effective or not
        throughout one."""
        return bisect_right(self._boundaries, on)

    def select(self, family: str, on: date, attrs: Mapping[str, Any]) -> list[Rule]:
        """One rule per slot of the family: the effective rule whose conditions all hold, the
        most specific where several do (ties by code, so the choice never depends on order).
        Memoized on (family, the effective-dates interval of ``on``, the attributes the
        family's rules read)."""
        values = tuple(attrs.get(k) for k in self._family_keys.get(family, ()))
        key = (family, bisect_right(self._boundaries, on), values)
        try:
            chosen = self._selected.get(key, _UNHASHABLE)
        except TypeError:  # an unhashable attribute value: no memo
            return self._select(family, on, attrs)
        if chosen is _UNHASHABLE:
            chosen = self._selected[key] = tuple(self._select(family, on, attrs))
        return list(chosen)  # type: ignore[arg-type]

    def _select(self, family: str, on: date, attrs: Mapping[str, Any]) -> list[Rule]:
        chosen: dict[str, Rule] = {}
        for rule in self._by_family.get(family, ()):
            if not (rule.effective(on) and rule.matches(attrs)):
                continue
            held = chosen.get(rule.slot)
            if held is None or (-len(rule.when), rule.code, rule.id) < (
                -len(held.when),
                held.code,
                held.id,
            ):
                chosen[rule.slot] = rule
        return [chosen[slot] for slot in sorted(chosen)]

    def rules_for_code(self, code: str) -> list[Rule]:
        return list(self._by_code.get(code, ()))

    def known(self, code: str) -> bool:
        return code in self._by_code

    def valid_on(self, code: str, on: date) -> bool:
        key = (code, bisect_right(self._boundaries, on))  # constant between two boundaries
        valid = self._valid.get(key)
        if valid is None:
            valid = self._valid[key] = any(r.effective(on) for r in self._by_code.get(code, ()))
        return valid


# ---------------------------------------------------------------- parsing


def parse_rules(text: str) -> RuleSet:
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise RulesError(f"the rules file is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise RulesError("the rules file must be a mapping with 'format', 'version', 'rules'")
    if data.get("format") != 1:
        raise RulesError(f"unsupported rules format {data.get('format')!r}; expected 1")
    version = str(data.get("version") or "")
    if not version:
        raise RulesError("the rules file needs a 'version'")
    rules = tuple(
        rule for i, item in enumerate(data.get("rules") or ()) for rule in _rules(i, item)
    )
    ids = [r.id for r in rules]
    if len(ids) != len(set(ids)):
        raise RulesError(f"rule ids must be unique: {sorted({i for i in ids if ids.count(i) > 1})}")
    bundles = tuple(_bundle(i, item) for i, item in enumerate(data.get("bundles") or ()))
    return RuleSet(version=version, rules=rules, bundles=bundles)


def load_bundled_rules() -> RuleSet:
    """The rules file shipped in ``services/billing/rules/`` (read once by the caller)."""
    return parse_rules(BUNDLED_RULES.read_text(encoding="utf-8"))


def expand_codes(items: Iterable[str]) -> frozenset[str]:
    """Codes and inclusive ranges: "77316-77318", "G6003-G6014"."""
    codes: set[str] = set()
    for item in items:
        text = str(item).strip().upper()
        match = re.fullmatch(r"([A-Z]?)(\d+)-([A-Z]?)(\d+)", text)
        if match is None:
            codes.add(text)
            continue
        prefix, start, prefix_end, end = match.groups()
        if prefix != prefix_end or len(start) != len(end) or int(start) > int(end):
            raise RulesError(f"bad code range {item!r}")
        codes.update(f"{prefix}{n:0{len(start)}d}" for n in range(int(start), int(end) + 1))
    return frozenset(codes)


def _rules(index: int, item: Any) -> list[Rule]:
    """One rule, or one per code of a ``codes`` list (ranges allowed), ids suffixed by code."""
    if not isinstance(item, Mapping):
        raise RulesError(f"rules[{index}] must be a mapping")
    if "codes" not in item:
        return [_rule(index, item)]
    return [
        _rule(index, {**item, "id": f"{item.get('id')}:{code}", "code": code})
        for code in sorted(expand_codes(item["codes"]))
    ]


def _rule(index: int, item: Mapping[str, Any]) -> Rule:
    where = f"rules[{index}] ({item.get('id') or item.get('code')})"
    for key in ("id", "code", "family", "component", "unit_rule", "citation"):
        if not item.get(key):
            raise RulesError(f"{where}: '{key}' is required")
    if item["unit_rule"] not in UNIT_RULES:
        raise RulesError(f"{where}: unknown unit_rule {item['unit_rule']!r}")
    if item["component"] not in ("professional", "technical", "split", "none"):
        raise RulesError(f"{where}: component must be professional, technical, split or none")
    rule = Rule(
        id=str(item["id"]),
        code=str(item["code"]).upper(),
        family=str(item["family"]),
        slot=str(item.get("slot") or item["family"]),
        component=item["component"],
        unit_rule=str(item["unit_rule"]),
        citation=str(item["citation"]),
        effective_from=_date(where, item.get("effective_from")),
        effective_to=_date(where, item.get("effective_to")),
        when=dict(item.get("when") or {}),
        modifiers=tuple(str(m).upper() for m in item.get("modifiers") or ()),
        requires=tuple(str(r) for r in item.get("requires") or ()),
        max_units=item.get("max_units"),
    )
    if rule.effective_from and rule.effective_to and rule.effective_from > rule.effective_to:
        raise RulesError(f"{where}: effective_from is after effective_to")
    return rule


def _bundle(index: int, item: Any) -> Bundle:
    if not isinstance(item, Mapping):
        raise RulesError(f"bundles[{index}] must be a mapping")
    where = f"bundles[{index}] ({item.get('id')})"
    for key in ("id", "primary", "bundled", "citation"):
        if not item.get(key):
            raise RulesError(f"{where}: '{key}' is required")
    return Bundle(
        id=str(item["id"]),
        primary=expand_codes(item["primary"]),
        bundled=expand_codes(item["bundled"]),
        window=_window(item.get("window")),
        citation=str(item["citation"]),
        payer_windows={str(k): _window(v) for k, v in (item.get("payer_windows") or {}).items()},
    )


def _window(value: Any) -> Window:
    value = value or {}
    return Window(before=int(value.get("before", 0)), after=int(value.get("after", 0)))


def _date(where: str, value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise RulesError(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from exc
