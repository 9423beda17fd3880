"""From treatment records to fractions to treatment sessions, the unit every count uses.

- A fraction is (plan, fraction group, Current Fraction Number): an interrupted fraction resumed
  in a later record, even on a later day, is one fraction (domain-dicom.md s. 4.2); so is a
  record that names the interrupted one in its Referenced Treatment Record Sequence.
- A session is the fractions of one local day whose starts follow each other by less than the
  distinct break (CMS Pub 100-04 Ch. 13 s. 70: twice-daily sessions with a distinct break are
  each payable). Concurrent boost groups delivered together are therefore one session, not the
  sum of their fraction numbers (domain-dicom.md s. 4.2).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Generic, NamedTuple, TypeVar, overload

from services.billing.domain.facts import TreatmentRecordFacts
from services.billing.domain.policy import BillingSettings

T = TypeVar("T")
FractionKey = tuple[str, int, int | None]  # (plan UID or "record:<uid>", group, number)


class _computed_once(Generic[T]):
    """``functools.cached_property`` without its lock: before Python 3.12 that takes a lock
    on every first access, a measurable cost over 27,000 sessions. Like it, the value goes
    into the instance's ``__dict__`` (writable on a frozen dataclass), where later reads find
    it without calling this descriptor."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self._compute = compute
        self._name = compute.__name__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _computed_once[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._compute(instance)
        return value


class Fraction(NamedTuple):
    """A delivered fraction (a named tuple: one per record, built fast)."""

    key: FractionKey
    started_at: datetime
    kind: str  # record kind: beams / ion_beams / brachy
    partial: bool
    record_uids: tuple[str, ...]
    event_ids: tuple[str, ...]

    @property
    def plan_uid(self) -> str | None:
        return None if self.key[0].startswith("record:") else self.key[0]


@dataclass(frozen=True)
class Session:
    id: str  # local day and ordinal within it: "2026-03-02#2"
    day: date
    started_at: datetime
    kind: str
    fractions: tuple[Fraction, ...]

    # Not cached: kept sessions would hold every evidence tuple (about 45 MB more for 5,000
    # courses); a course's span reads its fractions' event ids directly instead.
    @property
    def evidence(self) -> tuple[str, ...]:
        return tuple(sorted({e for f in self.fractions for e in f.event_ids}))

    # Read many times per evaluation: computed on first use and kept in the instance's
    # __dict__ (not a field, so equality, hashing, repr and replace() are unchanged).
    @_computed_once
    def plan_uids(self) -> tuple[str, ...]:
        return tuple(sorted({f.plan_uid for f in self.fractions if f.plan_uid}))

    @property
    def partial(self) -> bool:
        return all(f.partial for f in self.fractions)


def latest_records(records: Iterable[TreatmentRecordFacts]) -> list[TreatmentRecordFacts]:
    """One record per UID, its highest revision (ties broken by content, not arrival)."""
    latest: dict[str, TreatmentRecordFacts] = {}
    for record in records:
        held = latest.get(record.record_uid)
        if held is None or later_revision(record, held):
            latest[record.record_uid] = record
    return sorted(latest.values(), key=lambda r: r.record_uid)


def later_revision(new: Any, held: Any) -> bool:
    """``(new.revision, repr(new)) > (held.revision, repr(held))``, the repr (content, not
    arrival, breaks a tie) built only when the revisions tie."""
    if new.revision != held.revision:
        return bool(new.revision > held.revision)
    return new is not held and repr(new) > repr(held)


def fractions_of(records: Iterable[TreatmentRecordFacts]) -> list[Fraction]:
    """Delivered fractions: simulated or non-delivering records and records without a time
    are not treatment."""
    usable = [
        r
        for r in latest_records(records)
        if r.delivered
        and r.treated_at is not None
        and (r.content_origin or "").upper() != "SIMULATION"
    ]
    by_uid = {r.record_uid: r for r in usable}
    keys_of: dict[str, list[FractionKey]] = {r.record_uid: _keys(r) for r in usable}
    links = [
        (record.record_uid, ref)
        for record in usable
        for ref in record.referenced_record_uids
        if ref in by_uid
    ]
    members: dict[FractionKey, list[TreatmentRecordFacts]] = defaultdict(list)
    if links:
        root = _joined(keys_of, links)
        for uid, keys in keys_of.items():
            for k in keys:
                members[root(k)].append(by_uid[uid])
    else:  # the common case: no record continues another, every key is its own fraction
        for uid, keys in keys_of.items():
            for k in keys:
                members[k].append(by_uid[uid])

    fractions = []
    for key, recs in members.items():
        if len(recs) == 1:
            (first,) = recs
            fractions.append(
                Fraction(
                    key=key,
                    started_at=first.treated_at,  # type: ignore[arg-type]
                    kind=first.record_kind,
                    partial=first.partial,
                    record_uids=(first.record_uid,),
                    event_ids=(first.event_id,),
                )
            )
            continue
        recs = sorted(set(recs), key=lambda r: r.record_uid)
        first = min(recs, key=lambda r: (r.treated_at, r.record_uid))
        fractions.append(
            Fraction(
                key=key,
                started_at=first.treated_at,  # type: ignore[arg-type]
                kind=first.record_kind,
                # One record completing the fraction makes it whole.
                partial=all(r.partial for r in recs),
                record_uids=tuple(r.record_uid for r in recs),
                event_ids=tuple(sorted({r.event_id for r in recs})),
            )
        )
    return sorted(fractions, key=lambda f: (f.started_at, _order(f.key)))


def _joined(
    keys_of: dict[str, list[FractionKey]], links: list[tuple[str, str]]
) -> Callable[[FractionKey], FractionKey]:
    """Union-find over fraction keys: a record continuing another (its Referenced Treatment
    Record) joins their fractions; the smallest key of each set names it."""
    parent: dict[FractionKey, FractionKey] = {k: k for ks in keys_of.values() for k in ks}

    def find(k: FractionKey) -> FractionKey:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for uid, ref in links:
        for a in keys_of[uid]:
            for b in keys_of[ref]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb, key=_order)] = min(ra, rb, key=_order)
    return find


def count_sessions(
    records: Iterable[TreatmentRecordFacts], settings: BillingSettings
) -> tuple[Session, ...]:
    """The course's treatment sessions in time order."""
    fractions = [
        f for f in fractions_of(records) if settings.count_partial_fractions or not f.partial
    ]
    by_day: dict[tuple[date, str], list[Fraction]] = defaultdict(list)
    for fraction in fractions:
        day = fraction.started_at.astimezone(settings.zone).date()
        by_day[(day, fraction.kind)].append(fraction)

    sessions: list[Session] = []
    on_day: dict[date, int] = defaultdict(int)  # sessions so far on each day, of any kind
    for (day, kind), day_fractions in sorted(by_day.items()):
        clusters: list[list[Fraction]] = []
        for fraction in day_fractions:  # already in time order
            previous = clusters[-1][-1] if clusters else None
            if previous is None or fraction.started_at - previous.started_at >= settings.bid_break:
                clusters.append([fraction])
            else:
                clusters[-1].append(fraction)
        ordinal_base = on_day[day]
        on_day[day] += len(clusters)
        for i, cluster in enumerate(clusters, start=1):
            sessions.append(
                Session(
                    id=f"{day.isoformat()}#{ordinal_base + i}",
                    day=day,
                    started_at=cluster[0].started_at,
                    kind=kind,
                    fractions=tuple(cluster),
                )
            )
    return tuple(sorted(sessions, key=lambda s: (s.started_at, s.id)))


def _keys(record: TreatmentRecordFacts) -> list[FractionKey]:
    course = record.plan_uid or f"record:{record.record_uid}"
    group = record.fraction_group or 1  # as the QA tracker keys its fractions
    if len(record.fraction_numbers) == 1:  # the common case
        return [(course, group, record.fraction_numbers[0])]
    numbers: list[int | None] = sorted(set(record.fraction_numbers)) or [None]
    if numbers == [None]:
        # Without a fraction number the record is its own fraction.
        return [(f"record:{record.record_uid}", group, None)]
    return [(course, group, n) for n in numbers]


def _order(key: FractionKey) -> tuple[str, int, int]:
    return (key[0], key[1], -1 if key[2] is None else key[2])
