"""Which events billing keeps, and under which key: each fact is stored once per (kind, key,
revision), so a redelivered event or a revision already held changes nothing.

| Event | Kind | Key | Revision |
| --- | --- | --- | --- |
| ``rtops.dicom.plan.received`` | plan | SOP Instance UID | object revision |
| ``rtops.dicom.treatment.recorded`` (all kinds) | record | SOP Instance UID | revision |
| ``rtops.dicom.treatment.summarized`` | summary | SOP Instance UID | object revision |
| ``rtops.qa.fraction.assessed`` | assessed | fraction key | its revision |
| ``rtops.scheduler.sim.completed`` | simulation | booking id | its revision |
| ``rtops.documents.course.regrouped`` | regrouping | regrouping id | its sequence |
| ``rtops.documents.note.signed`` | note | note id | its revision |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.events import (
    CloudEvent,
    CourseRegrouped,
    NoteSigned,
    PlanReceived,
    SimCompleted,
    TreatmentRecorded,
    TreatmentSummarized,
)
from shared.events.qa import FractionAssessed

# The event types billing reads (its consumer's filter subjects).
EVENT_TYPES: tuple[str, ...] = (
    PlanReceived.type,
    TreatmentRecorded.type,
    TreatmentSummarized.type,
    FractionAssessed.type,
    SimCompleted.type,
    CourseRegrouped.type,
    NoteSigned.type,
)


@dataclass(frozen=True)
class FactIn:
    kind: str
    key: str
    revision: int
    patient_id: str
    event_id: str
    event_time: datetime
    payload: dict[str, Any]


def fact_of(event: CloudEvent) -> FactIn | None:
    """The fact an event states, or None for an event billing has no use for (or one that
    names no patient: nothing can be billed to it)."""
    data = event.data
    if not data.patient.id:
        return None
    match data:
        case PlanReceived() | TreatmentRecorded() | TreatmentSummarized():
            kind = {
                PlanReceived: "plan",
                TreatmentRecorded: "record",
                TreatmentSummarized: "summary",
            }[type(data)]
            key, revision = data.object.sop_instance_uid, data.object.revision
        case FractionAssessed():
            kind, key, revision = "assessed", data.fraction_key, data.revision
        case SimCompleted():
            kind, key, revision = "simulation", data.booking_id, data.revision
        case CourseRegrouped():
            kind, key, revision = "regrouping", data.regrouping_id, data.sequence
        case NoteSigned():
            kind, key, revision = "note", data.note_id, data.revision
        case _:
            return None
    return FactIn(
        kind=kind,
        key=key,
        revision=revision,
        patient_id=data.patient.id,
        event_id=event.id,
        event_time=event.time,
        payload=data.model_dump(mode="json"),
    )
