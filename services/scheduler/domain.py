"""The scheduler's rules as pure functions over plain data: what a simulation needs (its
duration, its complexity, its proceduralist appointment) and what still blocks it. No clock,
no settings lookups, no I/O: ``now`` and the ``Policy`` are arguments. The slot search is in
``slots``, the batch optimiser in ``batch``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal

Urgency = Literal["emergent", "urgent", "routine"]
URGENCIES: tuple[Urgency, ...] = ("emergent", "urgent", "routine")
Complexity = Literal["simple", "intermediate", "complex"]
CONSENT_KINDS = ("iv_contrast", "simulation", "fiducials", "spaceoar")

# Blocking reasons, in the order the queue shows them.
IV_CONTRAST_CONSENT = "iv_contrast_consent"
EGFR = "egfr"
EGFR_LOW = "egfr_low"
DEVICE_STOCK = "device_stock"
NO_PROCEDURALIST = "no_proceduralist"
NO_ROOM = "no_room"


@dataclass(frozen=True)
class Window:
    """A weekly window: opening hours, a shift, a procedure block (clinic-local times)."""

    weekday: int  # 0 = Monday
    start: time
    end: time


@dataclass(frozen=True)
class Room:
    id: str
    machine: str
    hours: tuple[Window, ...]


@dataclass(frozen=True)
class Staff:
    """A therapist (``windows`` are shifts) or a proceduralist (``windows`` are blocks)."""

    id: str
    windows: tuple[Window, ...]


@dataclass(frozen=True)
class DeviceType:
    id: str
    stock: int
    fabricated: bool = False  # made for the patient (a thermoplastic mask, a vacuum bag)


@dataclass(frozen=True)
class Requirements:
    immobilization: tuple[str, ...] = ()
    iv_contrast: bool = False
    four_d_ct: bool = False
    fiducials: bool = False
    spaceoar: bool = False

    @property
    def needs_procedure(self) -> bool:
        return self.fiducials or self.spaceoar


@dataclass(frozen=True)
class Durations:
    base: int = 30
    mask: int = 20
    four_d: int = 15
    contrast: int = 15
    procedure: int = 30


@dataclass(frozen=True)
class SitePolicy:
    implant_gap_days: int = 7
    egfr_required: bool = False


@dataclass(frozen=True)
class UrgencyTarget:
    business_days: int
    weight: float


@dataclass(frozen=True)
class Policy:
    therapists_needed: int = 2
    durations: Durations = field(default_factory=Durations)
    step_minutes: int = 15
    horizon_days: int = 90
    default_site: SitePolicy = field(default_factory=SitePolicy)
    sites: Mapping[str, SitePolicy] = field(default_factory=dict)
    egfr_max_age_days: int = 30
    egfr_min: float = 30.0
    urgency: Mapping[str, UrgencyTarget] = field(
        default_factory=lambda: {
            "emergent": UrgencyTarget(1, 10.0),
            "urgent": UrgencyTarget(3, 3.0),
            "routine": UrgencyTarget(10, 1.0),
        }
    )

    def site(self, name: str) -> SitePolicy:
        return self.sites.get(name.strip().lower(), self.default_site)


@dataclass(frozen=True)
class Consent:
    kind: str
    signed_at: datetime


@dataclass(frozen=True)
class Lab:
    kind: str  # "egfr"
    value: float
    measured_at: datetime


def duration_minutes(
    req: Requirements, devices: Mapping[str, DeviceType], durations: Durations
) -> int:
    """The simulation slot: mask fabrication and 4D-CT lengthen it (the issue), contrast too
    (the injection and its observation)."""
    minutes = durations.base
    if any(devices[d].fabricated for d in req.immobilization if d in devices):
        minutes += durations.mask
    if req.four_d_ct:
        minutes += durations.four_d
    if req.iv_contrast:
        minutes += durations.contrast
    return minutes


def complexity(req: Requirements, devices: Mapping[str, DeviceType]) -> Complexity:
    """77280 / 77285 / 77290 as billing reads it: "complex (incl. contrast, custom
    immobilization ...)" (CPT 77290, domain-billing.md s. 1.3); a stock (not custom) device
    or a 4D-CT makes it intermediate; otherwise simple."""
    custom = any(devices[d].fabricated for d in req.immobilization if d in devices)
    if req.iv_contrast or custom or req.needs_procedure:
        return "complex"
    if req.immobilization or req.four_d_ct:
        return "intermediate"
    return "simple"


def blocking(
    req: Requirements,
    *,
    site: SitePolicy,
    consents: Iterable[Consent],
    labs: Iterable[Lab],
    free_units: Mapping[str, int],
    proceduralists: int,
    rooms: int,
    now: datetime,
    policy: Policy,
) -> list[str]:
    """What keeps a request from being booked; empty when it can be. ``free_units``: device
    type -> units in stock and not reserved (a request's own reservation excluded)."""
    reasons: list[str] = []
    if req.iv_contrast:
        if not any(c.kind == "iv_contrast" and c.signed_at <= now for c in consents):
            reasons.append(IV_CONTRAST_CONSENT)
        if site.egfr_required:
            oldest = now - timedelta(days=policy.egfr_max_age_days)
            recent = [lab for lab in labs if lab.kind == "egfr" and oldest <= lab.measured_at]
            if not recent:
                reasons.append(EGFR)
            elif max(recent, key=lambda lab: lab.measured_at).value < policy.egfr_min:
                reasons.append(EGFR_LOW)
    if any(free_units.get(d, 0) < 1 for d in req.immobilization):
        reasons.append(DEVICE_STOCK)
    if req.needs_procedure and proceduralists == 0:
        reasons.append(NO_PROCEDURALIST)
    if rooms == 0:
        reasons.append(NO_ROOM)
    return reasons


def business_days_waited(
    created: date, today: date, is_business_day: Callable[[date], bool]
) -> int:
    """Business days from the request's day to today, the request's day not counted."""
    days, day = 0, created
    while day < today:
        day += timedelta(days=1)
        if is_business_day(day):
            days += 1
    return days


def first_free_unit(stock: int, reserved: Iterable[int]) -> int | None:
    """The lowest unit number of a device type not reserved, None when every unit is (a
    reservation holds one unit: the database's unique index on (type, unit) makes two bookings
    never hold the same)."""
    taken = set(reserved)
    unit = 0
    while unit in taken:
        unit += 1
    return unit if unit < stock else None
