"""Rebuilding the fractions a batch may have changed, in the batch's transaction.

Per chunk of patients: read what their scopes need (``store.rebuild_queries``, which also
widens each scope: ``scope``), derive what the fractions should be (``derive``, pure), then
write it: fraction columns, matches, adopted approvals (``approvals``), the verdicts of the
fractions whose inputs changed (``assessment``) and their events (``announcements``). Every
fraction in scope is recomputed from all facts on its days, so the result does not depend on
arrival order, and the whole patient would give the same answer. Outside the scope only the
previous fraction can change: its next fraction, and so its due time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from services.qa_tracker import domain
from services.qa_tracker.announcements import announce_review, publish_assessed
from services.qa_tracker.approvals import apply_placements, plan_placements
from services.qa_tracker.assessment import store_verdict
from services.qa_tracker.derive import derive
from services.qa_tracker.scope import Scope
from services.qa_tracker.store import Fraction, ImagingSeries, Registration
from services.qa_tracker.store.rebuild_queries import APPROVAL, Loaded, load_chunk

CHUNK = 200  # patients per set of queries


class Rebuilder:
    def __init__(
        self,
        *,
        policy: domain.ReviewPolicy,
        imaging_devices: dict[str, str],
        clock: Callable[[], datetime],
    ) -> None:
        self._policy = policy
        self._devices = imaging_devices
        self._now = clock

    def rebuild(
        self, session: Session, scopes: dict[str, Scope], *, reassess: bool = False
    ) -> None:
        """Recompute the fractions in each patient's scope. ``reassess`` applies the rules
        even to fractions whose facts did not change (after a policy change)."""
        # The recorded facts first; then reads would flush every fraction change before each
        # query, so the rest flushes once, at commit.
        session.flush()
        with session.no_autoflush:
            ordered = sorted(scopes)
            for start in range(0, len(ordered), CHUNK):
                chunk = {p: scopes[p] for p in ordered[start : start + CHUNK]}
                loaded = load_chunk(session, chunk, self._policy.calendar.zone)
                writes = _Writes()
                for patient_id in chunk:
                    self._patient(session, patient_id, loaded, writes, reassess)
                writes.flush(session)

    def _patient(
        self, session: Session, patient_id: str, loaded: Loaded, writes: _Writes, reassess: bool
    ) -> None:
        scope = loaded.scopes[patient_id]
        sessions = loaded.sessions[patient_id]
        registrations = loaded.registrations[patient_id]
        derived = derive(
            patient_id,
            scope=scope,
            records=loaded.records[patient_id],
            sessions=sessions,
            named_sessions=loaded.named_sessions[patient_id],
            registrations=registrations,
            plans=loaded.plans.get(patient_id, {}),
            timeline=loaded.timeline[patient_id],
            zone=self._policy.calendar.zone,
            imaging_devices=self._devices,
        )
        writes.match(ImagingSeries, "series_uid", "fraction_key", sessions, derived.session_matches)
        writes.match(
            Registration, "sop_uid", "session_uid", registrations, derived.registration_matches
        )
        stored = {f.key: f for f in loaded.fractions[patient_id]}
        fractions: dict[str, Fraction] = {}
        changed: set[str] = set()
        for key, values in derived.fractions.items():
            fraction = stored.pop(key, None)
            if fraction is None:
                fraction = Fraction(
                    key=key,
                    overdue_notified=False,
                    review_status="pending",
                    override_required=False,
                    override_documented=False,
                    rejected=False,
                    **values,
                )
                session.add(fraction)
                changed.add(key)
            elif _update(fraction, values):
                changed.add(key)
            fractions[key] = fraction
        reviews = {
            key: [r for r in loaded.reviews.get(f.id, []) if r.source != APPROVAL]  # type: ignore[arg-type]
            for key, f in fractions.items()
        }
        key_of = {f.id: f.key for f in loaded.fractions[patient_id]}
        adopted = loaded.approvals.get(patient_id, {})
        placements = plan_placements(
            {image: key_of.get(row.fraction_id) for image, row in adopted.items()},
            derived.approvals,
        )
        changed |= placements.touched()
        announce = apply_placements(
            session,
            placements,
            rows=adopted,
            fractions=fractions,
            reviews=reviews,
            now=self._now(),
        )
        # The verdict depends only on these values and the reviews, not on the clock:
        # unchanged inputs, unchanged verdict.
        assessed = [(f, reviews[k]) for k, f in fractions.items() if k in changed or reassess]
        previous = loaded.previous.get(patient_id)
        if previous is not None and (
            _update(previous, {"next_fraction_at": derived.next_start.get(previous.key)})
            or reassess
        ):
            assessed.append((previous, loaded.reviews.get(previous.id, [])))
        for fraction, its_reviews in assessed:
            store_verdict(fraction, its_reviews, self._policy)
        for key, review in announce:
            announce_review(session, fractions[key], review, self._policy)
        removed = []
        for gone in stored.values():  # e.g. a record revision renumbered its fraction
            # Its adopted approvals went with their images; reviews documented through the
            # API keep it.
            if not any(r.source != APPROVAL for r in loaded.reviews.get(gone.id, [])):
                session.delete(gone)
                removed.append(gone)
        writes.assessed += assessed
        writes.removed += removed


class _Writes:
    """What a chunk writes once for all its patients: the changed matches (one executemany
    per table) and the fraction events (one query for their revisions)."""

    def __init__(self) -> None:
        self.matches: dict[Any, list[dict[str, Any]]] = {}
        self.assessed: list[tuple[Fraction, Any]] = []
        self.removed: list[Fraction] = []

    def match(
        self, model: Any, key: str, column: str, rows: Iterable[Any], matches: dict[str, str]
    ) -> None:
        """Queue the new match of each fact whose stored one changed."""
        self.matches.setdefault(model, []).extend(
            {key: getattr(row, key), column: matches.get(getattr(row, key))}
            for row in rows
            if getattr(row, column) != matches.get(getattr(row, key))
        )

    def flush(self, session: Session) -> None:
        for model, changes in self.matches.items():
            if changes:  # ORM bulk UPDATE by primary key
                session.execute(update(model), changes)
        publish_assessed(session, self.assessed, self.removed)


def _update(row: object, values: dict[str, Any]) -> bool:
    """Assign only changed values, so an unchanged row is not written; True if any changed."""
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed
