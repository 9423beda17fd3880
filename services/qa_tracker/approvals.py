"""Reviews adopted from RT Image approvals: an approved image reviews the fraction it
prepared, and follows the image when later facts move it to another fraction, or goes when
the image prepares none any more. Reviews documented through the API never move.

``plan_placements`` decides (pure); ``apply_placements`` writes the decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from services.qa_tracker.derive import Approval
from services.qa_tracker.store import Fraction, ReviewRow
from services.qa_tracker.store.rebuild_queries import APPROVAL


@dataclass
class Placements:
    keep: list[tuple[str, str]] = field(default_factory=list)  # (image, fraction key)
    move: list[tuple[str, str, str | None]] = field(default_factory=list)  # (image, to, from)
    add: list[Approval] = field(default_factory=list)
    remove: list[tuple[str, str | None]] = field(default_factory=list)  # (image, from)

    def touched(self) -> set[str]:
        """The fraction keys whose reviews change."""
        keys = {to for _, to, _ in self.move} | {a.fraction_key for a in self.add}
        keys |= {was for _, _, was in self.move if was is not None}
        keys |= {was for _, was in self.remove if was is not None}
        return keys


def plan_placements(stored: Mapping[str, str | None], wanted: Mapping[str, Approval]) -> Placements:
    """``stored``: each adopted approval's RT Image -> the key of the fraction it is on (None
    when that fraction is outside the rebuild's scope); ``wanted``: where they belong now."""
    plan = Placements()
    for image, was in stored.items():
        target = wanted.get(image)
        if target is None:  # its image prepares no fraction now
            plan.remove.append((image, was))
        elif target.fraction_key != was:
            plan.move.append((image, target.fraction_key, was))
        else:
            plan.keep.append((image, was))
    plan.add = [a for image, a in wanted.items() if image not in stored]
    return plan


def apply_placements(
    session: Session,
    plan: Placements,
    *,
    rows: Mapping[str, Any],
    fractions: Mapping[str, Fraction],
    reviews: dict[str, list[Any]],
    now: datetime,
) -> list[tuple[str, Any]]:
    """Write ``plan``; ``rows`` are the stored approvals by image. Adds each fraction's
    approvals to ``reviews``; returns the (fraction key, review) placements to announce."""
    announce: list[tuple[str, Any]] = []
    if plan.remove:
        gone = [rows[image].id for image, _ in plan.remove]
        session.execute(delete(ReviewRow).where(ReviewRow.id.in_(gone)))
    for image, key in plan.keep:
        reviews[key].append(rows[image])
    targets = {to for _, to, _ in plan.move} | {a.fraction_key for a in plan.add}
    if any(fractions[k].id is None for k in targets):
        session.flush()  # new fractions need their ids
    for image, key, _ in plan.move:
        row = rows[image]
        session.execute(
            update(ReviewRow).where(ReviewRow.id == row.id).values(fraction_id=fractions[key].id)
        )
        reviews[key].append(row)
        announce.append((key, row))
    for approval in plan.add:
        review = ReviewRow(
            fraction_id=fractions[approval.fraction_key].id,
            decision="approved",
            comment=None,
            override_reason=None,
            reviewed_at=approval.reviewed_at,
            physician=approval.physician,
            recorded_at=now,
            source=APPROVAL,
            source_ref=approval.sop_uid,
        )
        session.add(review)
        reviews[approval.fraction_key].append(review)
        announce.append((approval.fraction_key, review))
    if plan.add:
        session.flush()  # the announcements carry the reviews' ids
    return announce
