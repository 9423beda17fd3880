"""Image-review compliance rules: pure functions over plain data, with time and policy passed in.

No clock, no settings, no I/O: ``now`` and the ``ReviewPolicy`` (with the clinic's calendar
already resolved to a set of closed days) are arguments, so every rule is tested table-driven.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from services.qa_tracker.overdue import status_at
from shared.calendar import (
    ClinicCalendar,
    add_business_hours,
)


class ReviewStatus(StrEnum):
    NOT_IMAGED = "not_imaged"
    PENDING = "pending"
    REVIEWED_ON_TIME = "reviewed_on_time"
    REVIEWED_LATE = "reviewed_late"
    # Documented after the due time with a reviewed_at before it, further back than the
    # policy's backdate_tolerance: attested on time, not shown on time (issue 15).
    REVIEWED_BACKDATED = "reviewed_backdated"
    OVERDUE = "overdue"


class Decision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class Reviewers(StrEnum):
    """Who may document a review of a fraction through the API or the pages."""

    OWN = "own"  # only the fraction's physician
    COVERING = "covering"  # the fraction's physician, or one covering for them that day
    ANY = "any"  # any physician


@dataclass(frozen=True)
class Coverage:
    """``covered_by`` reviews for ``physician`` (DICOM person names) from ``first`` to
    ``last``, both clinic days included."""

    physician: str
    covered_by: tuple[str, ...]
    first: date
    last: date


@dataclass(frozen=True)
class Tolerance:
    """Largest couch correction that needs no documented override (limits inclusive)."""

    translation_mm: float
    rotation_deg: float


@dataclass(frozen=True)
class ReviewPolicy:
    """Clinical conventions, not regulations, except where marked; every value configurable."""

    calendar: ClinicCalendar
    # ASTRO Coding FAQ, IGRT: images and shifts must be reviewed and approved by the radiation
    # oncologist before the patient's next treatment (the condition for billing IGRT).
    before_next_fraction: bool = True
    # Site policy: and in any case within this many business hours of the imaged fraction.
    max_business_hours: float = 24.0
    default_tolerance: Tolerance = Tolerance(translation_mm=5.0, rotation_deg=3.0)
    # By technique or site (keys compared case-insensitively), e.g. SBRT 2 mm / 1 degree.
    tolerances: Mapping[str, Tolerance] = field(
        default_factory=lambda: {"SBRT": Tolerance(translation_mm=2.0, rotation_deg=1.0)}
    )
    # A review dated further back than this before it was recorded is backdated: it needs a
    # reason and the system it was documented in, and it never counts as on time by its date.
    backdate_tolerance: timedelta = timedelta(hours=1)
    reviewers: Reviewers = Reviewers.COVERING
    coverage: Sequence[Coverage] = ()


@dataclass(frozen=True)
class Correction:
    """A couch correction from an image match: translation (mm) and rotation (degrees) per
    axis; either may be unknown."""

    translation_mm: tuple[float, float, float] | None = None
    rotation_deg: tuple[float, float, float] | None = None

    @property
    def largest_translation_mm(self) -> float | None:
        if self.translation_mm is None:
            return None
        return max(abs(v) for v in self.translation_mm)

    @property
    def largest_rotation_deg(self) -> float | None:
        if self.rotation_deg is None:
            return None
        return max(abs(v) for v in self.rotation_deg)


@dataclass(frozen=True)
class Review:
    """``recorded_at``: when a person documented it in rtops (the server's clock); None for a
    review a device attested (an RT Image approval carries its own review time), which the
    backdating rule does not apply to."""

    decision: Decision
    reviewed_at: datetime
    physician: str
    override_reason: str | None = None
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class FractionFacts:
    """What the rules need about one treated fraction."""

    treated_at: datetime
    imaged: bool
    next_fraction_at: datetime | None = None
    correction: Correction | None = None
    technique: str | None = None
    site: str | None = None
    reviews: Sequence[Review] = ()


@dataclass(frozen=True)
class Assessment:
    status: ReviewStatus
    due_at: datetime | None
    override_required: bool
    override_documented: bool
    rejected: bool  # the latest review rejected the images/shifts


# ---------------------------------------------------------------- time


def due_at(fraction: FractionFacts, policy: ReviewPolicy) -> datetime:
    """The earlier of the next fraction's start and the business-hour limit."""
    limit = add_business_hours(fraction.treated_at, policy.max_business_hours, policy.calendar)
    if policy.before_next_fraction and fraction.next_fraction_at is not None:
        return min(limit, fraction.next_fraction_at)
    return limit


# ---------------------------------------------------------------- corrections


def tolerance_for(policy: ReviewPolicy, *, technique: str | None, site: str | None) -> Tolerance:
    """The technique's tolerance, else the site's, else the default."""
    table = {k.casefold(): v for k, v in policy.tolerances.items()}
    for key in (technique, site):
        if key and key.casefold() in table:
            return table[key.casefold()]
    return policy.default_tolerance


def exceeds(correction: Correction | None, tolerance: Tolerance) -> bool:
    """True when any axis is beyond tolerance; a value exactly at the limit is within it."""
    if correction is None:
        return False
    translation = correction.largest_translation_mm
    rotation = correction.largest_rotation_deg
    return (translation is not None and translation > tolerance.translation_mm) or (
        rotation is not None and rotation > tolerance.rotation_deg
    )


# ---------------------------------------------------------------- backdating


def is_backdated(reviewed_at: datetime, recorded_at: datetime | None, policy: ReviewPolicy) -> bool:
    """Dated more than ``backdate_tolerance`` before it was recorded (the limit itself is not)."""
    return recorded_at is not None and recorded_at - reviewed_at > policy.backdate_tolerance


def shown_at(review: Review, policy: ReviewPolicy) -> datetime:
    """When rtops can show the review happened: its own time, or for a backdated one the time
    it was recorded (what it says happened earlier is an attestation, counted apart)."""
    if is_backdated(review.reviewed_at, review.recorded_at, policy):
        return review.recorded_at  # type: ignore[return-value]
    return review.reviewed_at


# ---------------------------------------------------------------- who may review


def may_review(
    policy: ReviewPolicy, reviewer: Sequence[str], physician: str | None, day: date
) -> str | None:
    """None when a physician known by the DICOM names ``reviewer`` may review a fraction of
    ``physician`` on clinic day ``day``; else why not. A fraction with no physician (its plan
    names none) is open to any physician: nobody else could review it."""
    if policy.reviewers == Reviewers.ANY or not physician:
        return None
    if not reviewer:
        return (
            "your sign-in is not mapped to a DICOM person name (RTOPS_UI_IDENTITIES or the "
            "identity provider's names claim), so rtops cannot tell whose fractions are yours"
        )
    if physician in reviewer:
        return None
    if policy.reviewers == Reviewers.COVERING:
        covering = any(
            c.physician == physician
            and c.first <= day <= c.last
            and bool(set(c.covered_by) & set(reviewer))
            for c in policy.coverage
        )
        if covering:
            return None
        return (
            f"this fraction is {physician}'s; the review policy lets only them or a physician "
            f"covering for them on {day.isoformat()} (the policy's coverage list) review it"
        )
    return f"this fraction is {physician}'s; the review policy lets only them review it"


# ---------------------------------------------------------------- status


def verdict(fraction: FractionFacts, policy: ReviewPolicy) -> Assessment:
    """The verdict as stored, without the clock: an unreviewed imaged fraction is PENDING
    with its due time (``overdue.status_at`` turns it into OVERDUE when read).

    Any review (approved or rejected) documents the review; the fraction is reviewed on time
    when one is shown (``shown_at``) at or before the due time. Failing that, a backdated
    review dated at or before the due time makes it ``reviewed_backdated``; else it is late.
    A rejected review stays a review, flagged ``rejected`` until a later review approves.
    """
    tolerance = tolerance_for(policy, technique=fraction.technique, site=fraction.site)
    override_required = fraction.imaged and exceeds(fraction.correction, tolerance)
    reviews = sorted(fraction.reviews, key=lambda r: r.reviewed_at)
    override_documented = any(r.override_reason and r.override_reason.strip() for r in reviews)
    rejected = bool(reviews) and reviews[-1].decision == Decision.REJECTED
    if not fraction.imaged:
        return Assessment(ReviewStatus.NOT_IMAGED, None, False, override_documented, rejected)
    due = due_at(fraction, policy)
    if reviews:
        if min(shown_at(r, policy) for r in reviews) <= due:
            status = ReviewStatus.REVIEWED_ON_TIME
        elif reviews[0].reviewed_at <= due:  # only a backdated review claims it was on time
            status = ReviewStatus.REVIEWED_BACKDATED
        else:
            status = ReviewStatus.REVIEWED_LATE
    else:
        status = ReviewStatus.PENDING
    return Assessment(status, due, override_required, override_documented, rejected)


def assess(fraction: FractionFacts, *, now: datetime, policy: ReviewPolicy) -> Assessment:
    """Review status of one fraction at ``now``: the verdict, overdue when read past due."""
    stored = verdict(fraction, policy)
    return replace(stored, status=ReviewStatus(status_at(stored.status, stored.due_at, now)))


# ---------------------------------------------------------------- weekly summary


@dataclass(frozen=True)
class SummaryRow:
    """Fractions alike in everything a weekly report counts (one, or ``count`` of them)."""

    machine: str | None
    physician: str | None
    status: ReviewStatus
    override_required: bool
    override_documented: bool
    count: int = 1


@dataclass(frozen=True)
class Tally:
    imaged_fractions: int
    reviewed_on_time: int
    reviewed_late: int
    reviewed_backdated: int
    overdue: int
    pending: int
    overrides_required: int
    overrides_documented: int
    compliance_pct: float | None  # reviewed on time / imaged fractions x 100
    # (on time + backdated) / imaged x 100: what compliance would be if every backdated
    # review's attested time were taken at its word.
    attested_compliance_pct: float | None

    def as_dict(self) -> dict[str, int | float | None]:
        return dict(self.__dict__)


def tally(rows: Iterable[SummaryRow]) -> Tally:
    imaged = [r for r in rows if r.status != ReviewStatus.NOT_IMAGED]
    counts: Counter[ReviewStatus] = Counter()
    for r in imaged:
        counts[r.status] += r.count
    total = sum(counts.values())
    on_time = counts[ReviewStatus.REVIEWED_ON_TIME]
    backdated = counts[ReviewStatus.REVIEWED_BACKDATED]
    return Tally(
        imaged_fractions=total,
        reviewed_on_time=on_time,
        reviewed_late=counts[ReviewStatus.REVIEWED_LATE],
        reviewed_backdated=backdated,
        overdue=counts[ReviewStatus.OVERDUE],
        pending=counts[ReviewStatus.PENDING],
        overrides_required=sum(r.count for r in imaged if r.override_required),
        overrides_documented=sum(
            r.count for r in imaged if r.override_required and r.override_documented
        ),
        compliance_pct=round(100.0 * on_time / total, 1) if total else None,
        attested_compliance_pct=round(100.0 * (on_time + backdated) / total, 1) if total else None,
    )


@dataclass(frozen=True)
class WeeklySummary:
    total: Tally
    by_machine: dict[str, Tally]
    by_physician: dict[str, Tally]


def weekly_summary(rows: Sequence[SummaryRow]) -> WeeklySummary:
    def group(key: str) -> dict[str, Tally]:
        names = sorted({getattr(r, key) or "unassigned" for r in rows})
        return {n: tally(r for r in rows if (getattr(r, key) or "unassigned") == n) for n in names}

    return WeeklySummary(
        total=tally(rows), by_machine=group("machine"), by_physician=group("physician")
    )


# ---------------------------------------------------------------- matching events to fractions
#
# Events arrive in any order and more than once, so matching is recomputed from everything
# known about a patient: the same facts give the same matches whatever the arrival order.


@dataclass(frozen=True)
class TreatedFraction:
    key: str
    patient_id: str
    machine: str | None
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True)
class ImagingSession:
    key: str
    patient_id: str
    machine: str | None
    acquired_at: datetime


@dataclass(frozen=True)
class Match:
    key: str
    patient_id: str
    machine: str | None
    at: datetime
    series_keys: tuple[str, ...] = ()


def match_imaging(
    fractions: Sequence[TreatedFraction],
    sessions: Sequence[ImagingSession],
    *,
    zone: ZoneInfo,
    same_machine: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Imaging session key -> the fraction it prepared: same patient, same machine (or the
    machine its imaging device belongs to, ``same_machine``), same clinic day, acquired at or
    before the end of that fraction's delivery; of several, the first fraction not yet
    finished when the image was taken. Sessions matching no fraction are left out."""
    alias = same_machine or {}
    matched: dict[str, str] = {}
    for session in sessions:
        day = session.acquired_at.astimezone(zone).date()
        machine = alias.get(session.machine or "", session.machine)
        candidates = [
            f
            for f in fractions
            if f.patient_id == session.patient_id
            and (machine is None or f.machine is None or f.machine == machine)
            and f.started_at.astimezone(zone).date() == day
            and session.acquired_at <= f.ended_at
        ]
        if candidates:
            best = min(candidates, key=lambda f: (f.ended_at, f.key))
            matched[session.key] = best.key
    return matched


def next_fraction_starts(fractions: Sequence[TreatedFraction]) -> dict[str, datetime | None]:
    """Fraction key -> when the same patient's next fraction started (None for the last)."""
    by_patient: dict[str, list[TreatedFraction]] = {}
    for f in fractions:
        by_patient.setdefault(f.patient_id, []).append(f)
    result: dict[str, datetime | None] = {}
    for items in by_patient.values():
        ordered = sorted(items, key=lambda f: (f.started_at, f.key))
        for i, f in enumerate(ordered):
            later = [g.started_at for g in ordered[i + 1 :] if g.started_at > f.started_at]
            result[f.key] = later[0] if later else None
    return result


def match_registrations(
    registrations: Sequence[Match], sessions: Sequence[ImagingSession], *, zone: ZoneInfo
) -> dict[str, str]:
    """Registration key -> the imaging session it matched: the session whose series it
    names, else the latest session of the same patient and machine, the same clinic day,
    acquired at or before the registration."""
    by_key = {s.key: s for s in sessions}
    matched: dict[str, str] = {}
    for reg in registrations:
        named = [k for k in reg.series_keys if k in by_key]
        if named:
            matched[reg.key] = sorted(named)[0]
            continue
        day = reg.at.astimezone(zone).date()
        earlier = [
            s
            for s in sessions
            if s.patient_id == reg.patient_id
            and (reg.machine is None or s.machine is None or s.machine == reg.machine)
            and s.acquired_at.astimezone(zone).date() == day
            and s.acquired_at <= reg.at
        ]
        if earlier:
            matched[reg.key] = max(earlier, key=lambda s: (s.acquired_at, s.key)).key
    return matched
