"""The QA tracker's events about fractions, queued in the caller's transaction.

``rtops.qa.review.documented`` announces a review once per fraction it is placed on.
``rtops.qa.fraction.assessed`` is a fraction's current verdict: published when the verdict
(the payload without its revision) differs from the last one published for that key, which
``fraction_revision`` remembers as a digest beside the revision, also after the fraction is
gone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from services.qa_tracker import domain
from services.qa_tracker.assessment import review_facts
from services.qa_tracker.keys import FractionKey
from services.qa_tracker.store import Fraction, FractionRevision
from services.qa_tracker.store.rebuild_queries import revisions_of
from shared.events import EventPayload, Patient
from shared.events.qa import FractionAssessed, ReviewDocumented
from shared.outbox import emit, emit_many

REMOVED = "removed"  # the digest of a fraction that is gone
LATE, BACKDATED = domain.ReviewStatus.REVIEWED_LATE.value, domain.ReviewStatus.REVIEWED_BACKDATED


def about(fraction: Fraction) -> dict[str, Any]:
    """The fields every event about a fraction carries."""
    return {
        "patient": Patient(id=fraction.patient_id, name=fraction.patient_name),
        "fraction_key": fraction.key,
        "plan_uid": fraction.plan_uid,
        "fraction_number": fraction.fraction_number,
        "treated_at": fraction.treated_at,
        "machine": fraction.machine,
    }


def announce_review(
    session: Session, fraction: Fraction, review: Any, policy: domain.ReviewPolicy
) -> None:
    """After the fraction's verdict: the event carries its due time and override need; a
    backdated review is on time only by when it was recorded (``domain.shown_at``)."""
    due = fraction.due_at
    shown = domain.shown_at(review_facts(review), policy)
    payload = ReviewDocumented(
        **about(fraction),
        review_id=review.id,
        decision=review.decision,
        physician=review.physician,
        reviewed_at=review.reviewed_at,
        due_at=due,
        on_time=due is None or shown <= due,
        override_required=fraction.override_required,
        override_reason=review.override_reason,
        origin=review.source,
    )
    emit(session, payload, subject=fraction.key)


def qualifying_review(reviews: Sequence[Any]) -> Any | None:
    """The first review documented (``domain.verdict`` decides the status by it)."""
    return min(reviews, key=lambda r: r.reviewed_at, default=None)


def verdict_fields(fraction: Fraction, reviews: Sequence[Any]) -> dict[str, Any]:
    """The assessed event's fields but the revision, as JSON values."""
    review = qualifying_review(reviews)
    return {
        **_key_fields(fraction),
        "removed": False,
        # Version 1 of the event knows no "reviewed_backdated": it is sent as late, so no
        # consumer (billing) takes a backdated review for one on time.
        "review_status": LATE if fraction.review_status == BACKDATED else fraction.review_status,
        "on_time": fraction.review_status == "reviewed_on_time",
        "due_at": _iso(fraction.due_at),
        "treated_at": _iso(fraction.treated_at),
        "machine": fraction.machine,
        "physician": fraction.physician,
        "review": None
        if review is None
        else {
            "id": review.id,
            "decision": review.decision,
            "physician": review.physician,
            "reviewed_at": _iso(review.reviewed_at),
            "origin": review.source,
        },
        "override_required": fraction.override_required,
        "override_documented": fraction.override_documented,
        "imaging": list(fraction.imaging or ()),
    }


def _key_fields(fraction: Fraction) -> dict[str, Any]:
    """Which fraction an assessed event is about: its key, whole and in parts."""
    key = FractionKey.parse(fraction.key)
    return {
        "patient": {"id": fraction.patient_id, "name": fraction.patient_name},
        "fraction_key": fraction.key,
        "plan_uid": key.plan_uid,
        "fraction_group": key.group,
        "fraction_number": key.number,
    }


def removed_fields(fraction: Fraction) -> dict[str, Any]:
    return {
        **_key_fields(fraction),
        "removed": True,
        "treated_at": _iso(fraction.treated_at),
        "machine": fraction.machine,
        "physician": fraction.physician,
    }


def digest_of(fields: dict[str, Any]) -> str:
    if fields["removed"]:
        return REMOVED
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def publish_assessed(
    session: Session,
    assessed: Iterable[tuple[Fraction, Sequence[Any]]],
    removed: Iterable[Fraction] = (),
) -> int:
    """``fraction.assessed`` for each fraction whose verdict differs from the last one
    published (``assessed``: fractions with their reviews, after ``store_verdict``), and for
    each ``removed`` fraction that had been announced. Returns how many were queued."""
    candidates = [(f, verdict_fields(f, reviews)) for f, reviews in assessed]
    candidates += [(f, removed_fields(f)) for f in removed]
    if not candidates:
        return 0
    known = revisions_of(session, (f.key for f, _ in candidates))
    queued: list[tuple[EventPayload, str]] = []
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for fraction, fields in candidates:
        digest = digest_of(fields)
        last = known.get(fraction.key)
        if last is None and fields["removed"]:
            continue  # never announced: nothing to retract
        if last is not None and last[1] == digest:
            continue
        revision = 1 if last is None else last[0] + 1
        row = {"key": fraction.key, "revision": revision, "digest": digest}
        (inserts if last is None else updates).append(row)
        known[fraction.key] = (revision, digest)
        payload = FractionAssessed.model_validate({**fields, "revision": revision})
        queued.append((payload, fraction.key))
    # Core executemany, not ORM objects: thousands per busy day.
    if inserts:
        session.execute(insert(FractionRevision), inserts)
    if updates:
        session.execute(update(FractionRevision), updates)
    emit_many(session, queued)
    return len(queued)


def _iso(value: datetime | None) -> str | None:
    # In UTC: a time computed in the clinic's zone and the same time read back from the
    # database must give the same digest.
    return None if value is None else value.astimezone(UTC).isoformat()
