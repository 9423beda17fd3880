"""Every payload by (type, version), parsing with upcasters, and the exported JSON Schemas."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from shared.events import billing, dicom, documents, qa, scheduler
from shared.events.base import CloudEvent, EventPayload, InvalidEvent

PAYLOADS: tuple[type[EventPayload], ...] = (
    *dicom.PAYLOADS,
    *qa.PAYLOADS,
    *scheduler.PAYLOADS,
    *documents.PAYLOADS,
    *billing.PAYLOADS,
)
_BY_TYPE: dict[tuple[str, int], type[EventPayload]] = {
    (p.type, p.model_fields["version"].default): p for p in PAYLOADS
}
# (type, old version) -> function turning old data into the next version's data.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}


def parse_event(raw: bytes | str) -> CloudEvent:
    """Parse an envelope and its payload; raise ``InvalidEvent`` with the reason otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"event is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise InvalidEvent("event has no CloudEvents 'data' object")
    type_ = body.get("type")
    if not isinstance(type_, str):
        raise InvalidEvent(f"event has no string 'type' (got {type_!r})")
    data = dict(body["data"])
    version = data.get("version")
    if not isinstance(version, int):
        raise InvalidEvent(f"event {type_!r} has no integer data.version")
    while (type_, version) in UPCASTERS:
        data = UPCASTERS[(type_, version)](data)
        version = data["version"]
    model = _BY_TYPE.get((type_, version))  # type: ignore[arg-type]
    if model is None:
        raise InvalidEvent(f"unknown event type/version {type_!r} v{version}")
    try:
        payload = model.model_validate(data)
        return CloudEvent.model_validate({**body, "data": payload})
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {type_} v{version}: {exc}") from exc


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload, keyed by event type."""
    return {p.type: p.model_json_schema(mode="serialization") for p in PAYLOADS}
