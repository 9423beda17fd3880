"""The device registry: calling AE title -> what the sending device is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import SourceDevice


class Device(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    role: Literal["linac", "ct_simulator", "tps", "ois", "other"]
    machine: str | None = None
    site: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    def as_source(self) -> SourceDevice:
        return SourceDevice(
            ae_title=self.ae_title, role=self.role, machine=self.machine, site=self.site
        )


class Registry(BaseModel):
    devices: list[Device]

    def by_ae(self) -> dict[str, Device]:
        return {d.ae_title: d for d in self.devices}


def load_registry(path: Path) -> dict[str, Device]:
    """Parse the YAML; a duplicate AE title is a configuration error, not a silent override."""
    registry = Registry.model_validate(yaml.safe_load(path.read_text()) or {"devices": []})
    titles = [d.ae_title for d in registry.devices]
    duplicates = sorted({t for t in titles if titles.count(t) > 1})
    if duplicates:
        raise ValueError(f"{path}: AE title(s) listed twice: {', '.join(duplicates)}")
    return registry.by_ae()
