"""The shapes resources and requests take in the API and in the seed YAML (one model each, so
the file and the API accept exactly the same thing), and their conversion to the domain's
plain data."""

from __future__ import annotations

from datetime import date, time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.calendar import WEEKDAYS, Weekday

from . import domain

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# The pattern bounds a slug to 64 characters already; max_length says so in the OpenAPI too.
SLUG_MAX_CHARS = 64
# A week's opening hours or shifts: a few windows a day at most.
MAX_WINDOWS = 50


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WindowIn(Strict):
    day: Weekday = Field(description="mon ... sun")
    start: time = Field(description="clinic-local, e.g. 07:30")
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> WindowIn:
        if self.end <= self.start:
            raise ValueError(
                f"{self.day} {self.start:%H:%M}-{self.end:%H:%M} ends before it starts"
            )
        return self

    def to_domain(self) -> domain.Window:
        return domain.Window(WEEKDAYS.index(self.day), self.start, self.end)


class RoomIn(Strict):
    id: str = Field(pattern=SLUG, max_length=SLUG_MAX_CHARS)
    name: str = Field(min_length=1, max_length=200)
    machine: str = Field(
        min_length=1, max_length=100, description="the SCP device registry's machine name"
    )
    hours: list[WindowIn] = Field(max_length=MAX_WINDOWS, description="opening hours per weekday")


class TherapistIn(Strict):
    id: str = Field(pattern=SLUG, max_length=SLUG_MAX_CHARS)
    name: str = Field(min_length=1, max_length=200)
    shifts: list[WindowIn] = Field(max_length=MAX_WINDOWS)


class ProceduralistIn(Strict):
    id: str = Field(pattern=SLUG, max_length=SLUG_MAX_CHARS)
    name: str = Field(min_length=1, max_length=200)
    specialty: str = Field(default="urology", max_length=100)
    blocks: list[WindowIn] = Field(
        max_length=MAX_WINDOWS, description="procedure blocks (fiducials, SpaceOAR)"
    )


class DeviceTypeIn(Strict):
    id: str = Field(pattern=SLUG, max_length=SLUG_MAX_CHARS)
    name: str = Field(min_length=1, max_length=200)
    stock: int = Field(ge=0)
    fabricated: bool = Field(
        default=False, description="made for the patient at simulation (mask, vacuum bag)"
    )


class Resources(Strict):
    """The seed file (``RTOPS_SCHEDULER_RESOURCES``)."""

    rooms: list[RoomIn] = []
    therapists: list[TherapistIn] = []
    proceduralists: list[ProceduralistIn] = []
    device_types: list[DeviceTypeIn] = []


class RequirementsIn(Strict):
    immobilization: list[Annotated[str, Field(max_length=SLUG_MAX_CHARS)]] = Field(
        default_factory=list, max_length=20, description="device type ids"
    )
    iv_contrast: bool = False
    four_d_ct: bool = False
    fiducials: bool = False
    spaceoar: bool = False
    notes: str | None = Field(default=None, max_length=4000)

    def to_domain(self) -> domain.Requirements:
        return domain.Requirements(
            immobilization=tuple(self.immobilization),
            iv_contrast=self.iv_contrast,
            four_d_ct=self.four_d_ct,
            fiducials=self.fiducials,
            spaceoar=self.spaceoar,
        )


class RequestIn(Strict):
    patient_id: str = Field(min_length=1, max_length=64)
    patient_name: str = Field(min_length=1, max_length=200)
    referring_physician: str = Field(min_length=1, max_length=200)
    treating_physician: str = Field(min_length=1, max_length=200)
    site: str = Field(min_length=1, max_length=100, description="anatomic site, e.g. prostate")
    urgency: domain.Urgency
    earliest_date: date | None = None
    requirements: RequirementsIn = Field(default_factory=RequirementsIn)


def windows_json(windows: list[WindowIn]) -> list[dict[str, Any]]:
    return [w.model_dump(mode="json") for w in windows]


def windows_of(stored: list[dict[str, Any]]) -> tuple[domain.Window, ...]:
    return tuple(WindowIn.model_validate(w).to_domain() for w in stored)


def requirements_of(stored: dict[str, Any]) -> domain.Requirements:
    return RequirementsIn.model_validate(stored).to_domain()
