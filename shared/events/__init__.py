"""The event contract: one CloudEvents 1.0 envelope and versioned, frozen payload models.

Producers may add fields to a payload at any time (readers ignore unknown fields); a change
that removes or re-types a field adds a new ``version`` and an upcaster in ``UPCASTERS``.
The JSON Schemas of every payload are exported to ``docs/events/`` (``rtops schemas``).

One module per producer: ``base`` (envelope, ids, shared building blocks), ``dicom`` (the
SCP), ``qa`` (the QA tracker), ``scheduler``, ``documents``, ``billing``; ``registry`` parses
any of them. Import from ``shared.events``.
"""

from __future__ import annotations

from shared.events.base import (
    EVENT_NAMESPACE,
    SUBJECT_PREFIX,
    CloudEvent,
    DicomEvent,
    EventPayload,
    Frozen,
    InvalidEvent,
    Patient,
    SourceDevice,
    envelope,
    event_id,
)
from shared.events.billing import (
    ChargePosted,
    ChargeVoided,
)
from shared.events.dicom import (
    BeamDelivery,
    CouchPosition,
    DoseReference,
    FractionGroup,
    FractionGroupSummary,
    ImageApproval,
    ImagingAcquired,
    Override,
    PlannedBeam,
    PlanReceived,
    PlanReference,
    RegistrationItem,
    RegistrationReceived,
    StoredObject,
    TreatmentRecorded,
    TreatmentSummarized,
    Vector3,
)
from shared.events.documents import (
    CourseRegrouped,
    NoteSigned,
)
from shared.events.qa import (
    DigestItem,
    ReviewDigest,
    ReviewDocumented,
    ReviewOverdue,
)
from shared.events.registry import (
    PAYLOADS,
    UPCASTERS,
    json_schemas,
    parse_event,
)
from shared.events.scheduler import (
    BookingChanged,
    SimCompleted,
)

__all__ = [
    "EVENT_NAMESPACE",
    "PAYLOADS",
    "SUBJECT_PREFIX",
    "UPCASTERS",
    "BeamDelivery",
    "BookingChanged",
    "ChargePosted",
    "ChargeVoided",
    "CloudEvent",
    "CouchPosition",
    "CourseRegrouped",
    "DicomEvent",
    "DigestItem",
    "DoseReference",
    "EventPayload",
    "FractionGroup",
    "FractionGroupSummary",
    "Frozen",
    "ImageApproval",
    "ImagingAcquired",
    "InvalidEvent",
    "NoteSigned",
    "Override",
    "Patient",
    "PlanReceived",
    "PlanReference",
    "PlannedBeam",
    "RegistrationItem",
    "RegistrationReceived",
    "ReviewDigest",
    "ReviewDocumented",
    "ReviewOverdue",
    "SimCompleted",
    "SourceDevice",
    "StoredObject",
    "TreatmentRecorded",
    "TreatmentSummarized",
    "Vector3",
    "envelope",
    "event_id",
    "json_schemas",
    "parse_event",
]
