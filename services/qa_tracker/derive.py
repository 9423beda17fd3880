"""The pure part of a rebuild: one patient's facts in scope -> what the fractions should be.

No Session: the input is the rows ``store.rebuild_queries`` read (anything with the columns),
the output is plain values the rebuild then writes: each fraction's columns, the new matches
of imaging series and registrations, the next start of the fraction before the scope, and the
approved RT Images that review a fraction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from services.qa_tracker import domain
from services.qa_tracker.keys import FractionKey, keys_of_record
from services.qa_tracker.scope import Scope


@dataclass(frozen=True)
class Approval:
    """An RT Image approved in the OIS, reviewing the fraction its image prepared."""

    sop_uid: str
    fraction_key: str
    physician: str
    reviewed_at: datetime


@dataclass(frozen=True)
class Derived:
    # Fraction key -> the fraction's columns (everything but the review verdict).
    fractions: dict[str, dict[str, Any]]
    # Series UID -> fraction key; registration SOP UID -> series UID (None: no match).
    session_matches: dict[str, str]
    registration_matches: dict[str, str]
    # Fraction key -> the start of the same patient's next fraction, also for stored
    # fractions outside the scope (the previous one's due time depends on it).
    next_start: dict[str, datetime | None]
    approvals: dict[str, Approval]  # by RT Image SOP UID


def derive(
    patient_id: str,
    *,
    scope: Scope,
    records: Sequence[Any],
    sessions: Sequence[Any],
    named_sessions: Sequence[Any],
    registrations: Sequence[Any],
    plans: Mapping[str, Any],
    timeline: Sequence[Any],
    zone: ZoneInfo,
    imaging_devices: Mapping[str, str],
) -> Derived:
    grouped: dict[FractionKey, list[Any]] = defaultdict(list)
    for record in records:
        for key in keys_of_record(record):
            grouped[key].append(record)
    treated = [
        domain.TreatedFraction(
            str(key),
            patient_id,
            rs[0].machine,
            min(r.started_at for r in rs),
            max(r.ended_at for r in rs),
        )
        for key, rs in grouped.items()
    ]
    imaging = [
        domain.ImagingSession(s.series_uid, patient_id, s.machine, s.acquired_at) for s in sessions
    ]
    session_of = domain.match_imaging(treated, imaging, zone=zone, same_machine=imaging_devices)
    reg_of = domain.match_registrations(
        [
            domain.Match(r.sop_uid, patient_id, r.machine, r.content_at, tuple(r.moving_series))
            for r in registrations
        ],
        imaging
        + [
            domain.ImagingSession(s.series_uid, patient_id, s.machine, s.acquired_at)
            for s in named_sessions
        ],
        zone=zone,
    )
    derived_keys = {str(k) for k in grouped}
    outside = [
        domain.TreatedFraction(f.key, patient_id, None, f.treated_at, f.ended_at)
        for f in timeline
        if not scope.overlaps(f.treated_at, f.ended_at) and f.key not in derived_keys
    ]
    next_start = domain.next_fraction_starts(treated + outside)
    fractions: dict[str, dict[str, Any]] = {}
    for key, t in zip(grouped, treated, strict=True):
        rs = grouped[key]
        plan = plans.get(rs[0].plan_uid or "")
        mine = [s for s in sessions if session_of.get(s.series_uid) == t.key]
        my_series = {s.series_uid for s in mine}
        my_regs = sorted(
            (r for r in registrations if reg_of.get(r.sop_uid) in my_series),
            key=lambda r: r.content_at,
        )
        latest = my_regs[-1] if my_regs else None
        fractions[t.key] = {
            "patient_id": patient_id,
            "patient_name": rs[0].patient_name,
            "plan_uid": rs[0].plan_uid,
            "fraction_number": key.number,
            "machine": t.machine,
            "treated_at": t.started_at,
            "ended_at": t.ended_at,
            "partial": any(r.partial for r in rs),
            "therapist_override": any(r.therapist_override for r in rs),
            "next_fraction_at": next_start[t.key],
            "imaged": bool(mine),
            "imaging": sorted({s.classification for s in mine}) or None,
            "physician": plan.physician if plan else None,
            "technique": plan.technique if plan else None,
            "site": plan.site if plan else None,
            "translation_mm": latest.translation_mm if latest else None,
            "rotation_deg": latest.rotation_deg if latest else None,
        }
    return Derived(
        fractions=fractions,
        session_matches=session_of,
        registration_matches=reg_of,
        next_start=next_start,
        approvals=approvals_of(sessions, session_of),
    )


def approvals_of(sessions: Sequence[Any], session_of: Mapping[str, str]) -> dict[str, Approval]:
    """Approved RT Images (Approval Status APPROVED with a time) of matched series; an image
    listed twice counts once, for the first series naming it."""
    found: dict[str, Approval] = {}
    for s in sessions:
        key = session_of.get(s.series_uid)
        if key is None:
            continue
        for a in s.approvals:
            if a.get("status") == "APPROVED" and a.get("reviewed_at"):
                found.setdefault(
                    a["sop_instance_uid"],
                    Approval(
                        a["sop_instance_uid"],
                        key,
                        a.get("reviewer_name") or "unknown",
                        datetime.fromisoformat(a["reviewed_at"]),
                    ),
                )
    return found
