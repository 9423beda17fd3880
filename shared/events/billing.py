"""Payloads of the billing service's events (``rtops.billing.*``)."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar, Literal

from pydantic import Field

from shared.events.base import EventPayload


class ChargePosted(EventPayload):
    """A charge's current state (state, not an announcement): published when billing derives a
    new charge and whenever it changes (status, hold reason, units, evidence), with a
    ``revision`` that only increases per charge id. ``removed`` retracts a charge the facts no
    longer support (a record revised away, a course regrouped). The latest revision wins."""

    type: ClassVar[str] = "rtops.billing.charge.posted"
    version: Literal[1] = 1
    charge_id: str = Field(description="deterministic: course|code|occurrence|modifiers")
    revision: int = Field(ge=1, description="per charge id; the highest is current")
    removed: bool = False
    course_id: str
    cpt: str
    modifiers: tuple[str, ...] = ()
    units: int
    service_date: date
    period_start: date = Field(description="first day of service it stands for (a 77427 block)")
    period_end: date
    status: Literal["ready", "hold"]
    hold_reason: str | None = Field(
        default=None, description="e.g. review_withdrawn, missing_management_note"
    )
    evidence: tuple[str, ...] = Field(default=(), description="event ids behind the charge")
    rule: str = Field(description="id of the rule in the rules file")
    citation: str
    rules_version: str

    def business_key(self) -> str:
        return f"charge:{self.charge_id}:{self.revision}"


class ChargeVoided(EventPayload):
    """An exported charge is no longer supported: it went to ``hold`` or the facts no longer
    give it. The claim line already sent is a discrepancy to correct with the payer; billing
    counts the charge as not exported from now on."""

    type: ClassVar[str] = "rtops.billing.charge.voided"
    version: Literal[1] = 1
    charge_id: str
    revision: int = Field(ge=1, description="the charge's revision that voided it")
    course_id: str
    cpt: str
    modifiers: tuple[str, ...] = ()
    units: int
    service_date: date
    reason: Literal["hold", "removed"]
    hold_reason: str | None = None
    exported_at: datetime | None = Field(default=None, description="when it was exported")

    def business_key(self) -> str:
        return f"voided:{self.charge_id}:{self.revision}"


PAYLOADS: tuple[type[EventPayload], ...] = (ChargePosted, ChargeVoided)
