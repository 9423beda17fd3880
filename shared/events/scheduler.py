"""Payloads of the scheduler's events (``rtops.scheduler.*``). Defined before the scheduler
exists so that billing can be built and tested against the contract."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import Field

from shared.events.base import EventPayload


class SimCompleted(EventPayload):
    """A simulation CT was performed (the booking's state, not an announcement): billing charges
    the simulation from it (77280 / 77285 / 77290 by ``complexity``, 77293 with ``four_d_ct``;
    one simulation code per date of service, domain-billing.md s. 1.3). A corrected completion
    (say the complexity was recorded wrong) is the same booking with a higher ``revision``; the
    latest revision wins, and ``cancelled`` retracts a completion recorded in error."""

    type: ClassVar[str] = "rtops.scheduler.sim.completed"
    version: Literal[1] = 1
    request_id: str = Field(description="the simulation request (the order) this booking served")
    booking_id: str
    revision: int = Field(default=1, ge=1, description="only increases per booking")
    service_date: date = Field(description="local date of service in the clinic's zone")
    performed_at: datetime | None = Field(default=None, description="scan start, UTC")
    complexity: Literal["simple", "intermediate", "complex"]
    four_d_ct: bool = Field(default=False, description="respiratory-correlated (4D) CT acquired")
    iv_contrast: bool = False
    immobilization: tuple[str, ...] = Field(
        default=(), description="devices made or used, e.g. 'vac-lok', 'thermoplastic mask'"
    )
    study_instance_uid: str | None = None
    series_instance_uids: tuple[str, ...] = ()
    treating_physician: str | None = None
    site: str | None = Field(default=None, description="anatomic site simulated")
    room: str | None = None
    cancelled: bool = Field(default=False, description="the completion was recorded in error")

    def business_key(self) -> str:
        return f"sim:{self.booking_id}:{self.revision}"


class BookingChanged(EventPayload):
    """A simulation booking's state (not an announcement): booked, moved (the old booking is
    ``cancelled`` and a new one ``booked``), cancelled, or completed by its simulation CT. Per
    booking, ``revision`` only increases and the latest wins; for the department's other
    systems (a worklist on the CT console, the oncology information system's calendar)."""

    type: ClassVar[str] = "rtops.scheduler.booking.changed"
    version: Literal[1] = 1
    request_id: str
    booking_id: str
    revision: int = Field(ge=1, description="only increases per booking")
    status: Literal["booked", "completed", "cancelled"]
    start: datetime = Field(description="UTC")
    end: datetime = Field(description="UTC")
    room: str
    machine: str | None = Field(default=None, description="the room's device registry machine")
    therapists: tuple[str, ...] = ()
    procedure_start: datetime | None = Field(
        default=None, description="fiducial / SpaceOAR placement before the simulation, UTC"
    )
    proceduralist: str | None = None
    site: str | None = None
    urgency: Literal["emergent", "urgent", "routine"] | None = None
    treating_physician: str | None = None
    reason: str | None = Field(default=None, description="why it was cancelled or moved")
    referring_physician: str | None = Field(
        default=None,
        description="the order's referring physician (the documents service addresses the "
        "treatment-start letter to them)",
    )

    def business_key(self) -> str:
        return f"booking:{self.booking_id}:{self.revision}"


PAYLOADS: tuple[type[EventPayload], ...] = (SimCompleted, BookingChanged)
