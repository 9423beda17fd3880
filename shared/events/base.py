"""The envelope and the building blocks every payload shares: CloudEvents 1.0 structured mode,
deterministic event ids, and the ``EventPayload`` base class with its ``business_key``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SUBJECT_PREFIX = "rtops"
# Fixed namespace so that the same business key always yields the same event id, which
# JetStream's duplicate window and the consumers' inbox both key on.
EVENT_NAMESPACE = uuid.UUID("5b0b7a3e-2f7c-4d38-9d4c-7a61f1c0e0a1")


class InvalidEvent(ValueError):
    """An event that cannot be parsed: wrong envelope, unknown type or version, bad payload."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


# ---------------------------------------------------------------- building blocks


class Patient(Frozen):
    id: str = Field(description="Patient ID (0010,0020); empty when the object had none")
    issuer: str | None = Field(default=None, description="Issuer of Patient ID (0010,0021)")
    name: str | None = Field(default=None, description="Patient's Name (0010,0010), DICOM PN")
    birth_date: date | None = None


class SourceDevice(Frozen):
    ae_title: str = Field(description="calling AE title of the association")
    role: Literal["linac", "ct_simulator", "tps", "ois", "other"]
    machine: str | None = Field(default=None, description="machine name from the registry")
    site: str | None = None


class EventPayload(Frozen):
    """Every payload: a type, a version and the business key its event id derives from."""

    type: ClassVar[str]
    version: int
    patient: Patient

    def business_key(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


class DicomEvent(EventPayload):
    """Fields every payload derived from a stored DICOM object carries."""

    source: SourceDevice


# ---------------------------------------------------------------- envelope


class CloudEvent(Frozen):
    """CloudEvents 1.0 structured-mode envelope (JSON)."""

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    time: datetime
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    data: EventPayload

    @property
    def nats_subject(self) -> str:
        return self.type

    def to_json(self) -> bytes:
        body = self.model_dump(mode="json", exclude_none=True)
        body["data"] = self.data.model_dump(mode="json")
        body["data"]["version"] = self.data.version
        return json.dumps(body, separators=(",", ":")).encode()


def event_id(type_: str, business_key: str) -> str:
    """Deterministic id: a re-sent object or a replayed outbox row gets the same one."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{type_}|{business_key}"))


def envelope(
    payload: EventPayload, *, source: str, subject: str | None = None, time: datetime | None = None
) -> CloudEvent:
    return CloudEvent(
        id=event_id(payload.type, payload.business_key()),
        source=source,
        type=payload.type,
        time=time or datetime.now(UTC),
        subject=subject,
        dataschema=f"urn:rtops:schema:{payload.type}:v{payload.version}",
        data=payload,
    )
