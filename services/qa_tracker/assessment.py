"""Storing the rules' verdict on a fraction row (``domain.verdict``, without the clock)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.qa_tracker import domain
from services.qa_tracker.store import Fraction

DOCUMENTED = "api"  # ReviewRow.source of a review documented by a person (API or pages)


def store_verdict(fraction: Fraction, reviews: Sequence[Any], policy: domain.ReviewPolicy) -> None:
    """``reviews``: the fraction's review rows (ORM objects or plain rows)."""
    result = domain.verdict(facts_of(fraction, reviews), policy)
    fraction.due_at = result.due_at
    fraction.review_status = result.status.value
    fraction.override_required = result.override_required
    fraction.override_documented = result.override_documented
    fraction.rejected = result.rejected


def facts_of(fraction: Fraction, reviews: Sequence[Any]) -> domain.FractionFacts:
    correction = None
    if fraction.translation_mm or fraction.rotation_deg:
        correction = domain.Correction(
            translation_mm=tuple(fraction.translation_mm)  # type: ignore[arg-type]
            if fraction.translation_mm
            else None,
            rotation_deg=tuple(fraction.rotation_deg)  # type: ignore[arg-type]
            if fraction.rotation_deg
            else None,
        )
    return domain.FractionFacts(
        treated_at=fraction.treated_at,
        imaged=fraction.imaged,
        next_fraction_at=fraction.next_fraction_at,
        correction=correction,
        technique=fraction.technique,
        site=fraction.site,
        reviews=[review_facts(r) for r in reviews],
    )


def review_facts(row: Any) -> domain.Review:
    """A review row (ORM object or plain row) as the rules see it: its record time counts
    only for reviews people documented (``source`` "api"); a device's approval carries the
    time it was made."""
    return domain.Review(
        domain.Decision(row.decision),
        row.reviewed_at,
        row.physician,
        row.override_reason,
        recorded_at=row.recorded_at if row.source == DOCUMENTED else None,
    )
