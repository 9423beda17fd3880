"""The practice's billing settings and the payer's: arguments of the engine, never looked up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Component = Literal["professional", "technical"]
RemainderPolicy = Literal["mirror_77427", "any_remainder", "none"]


@dataclass(frozen=True)
class BillingSettings:
    """Per practice. Defaults are conventions unless a comment cites a rule."""

    zone: ZoneInfo
    # domain-billing.md s. 4: a freestanding centre bills split codes global; in a hospital the
    # physician bills -26 and the hospital the technical side.
    place_of_service: Literal["freestanding", "hospital"] = "freestanding"
    bills: frozenset[Component] = frozenset({"professional", "technical"})
    # CMS Pub 100-04 Ch. 13 s. 70: same-day sessions count separately only with a distinct
    # break; how long a break is distinct is a clinical convention (domain-dicom.md s. 4.2).
    bid_break: timedelta = timedelta(hours=6)
    # Whether a fraction interrupted and never completed counts (domain-dicom.md s. 4.2:
    # unconfirmed; CMS counts sessions, and a session that delivered dose plausibly is one).
    count_partial_fractions: bool = True
    # A course with no treatment for longer than this is ended (issue 11; no regulation).
    inactivity_days: int = 30
    # domain-billing.md s. 2.2: no official 77336 end-of-course remainder rule.
    physics_remainder_policy: RemainderPolicy = "mirror_77427"
    # 77300 "per calculation"; per treatment beam is common practice (unconfirmed).
    dosimetry_units_per: Literal["beam", "plan"] = "beam"
    # A management note this many days outside a 77427 block still documents it.
    management_note_grace_days: int = 0
    # Not the engine's: the service screens a course of at most five planned fractions as
    # possibly stereotactic from this dose per fraction (Gy) on, and holds its kind-dependent
    # charges until staff confirm the kind. A convention, not a regulation: CPT names no dose.
    stereotactic_dose_per_fraction_gy: float = 6.0

    @property
    def global_billing(self) -> bool:
        return self.place_of_service == "freestanding" and self.bills == {
            "professional",
            "technical",
        }


@dataclass(frozen=True)
class Payer:
    """Per payer. ``id`` selects the payer overrides of the rules file."""

    id: str = "medicare"
    medicare: bool = True
    # domain-billing.md s. 1.6.b: before 2026 commercial payers chose between the freestanding
    # G-codes and CPT; Medicare required the G-codes.
    legacy_freestanding_codes: Literal["g_codes", "cpt"] = "g_codes"
    # domain-billing.md s. 2.1 rule 10: the 77427 date of service differs by payer.
    management_service_date: Literal["block_end", "block_start"] = "block_end"
