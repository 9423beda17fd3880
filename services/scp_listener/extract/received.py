"""What the SCP reads from one received object of an accepted SOP class: its event (plans,
records, registrations, documents) or its per-instance image facts (images), by the route
``sop.STORAGE`` gives the class. One entry point, so that the fuzz harness
(``tests/fuzz/harness.py``) runs every reader the ingest runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from services.scp_listener import sop
from services.scp_listener.extract.document import document_received
from services.scp_listener.extract.images import image_facts
from services.scp_listener.extract.plan import plan_received
from services.scp_listener.extract.records import treatment_recorded, treatment_summarized
from services.scp_listener.extract.registration import registration_received
from shared.events import DicomEvent, SourceDevice, StoredObject

_BUILDERS = {
    "plan": plan_received,
    "treatment": treatment_recorded,
    "summary": treatment_summarized,
    "registration": registration_received,
    "document": document_received,
}


@dataclass(frozen=True)
class Extracted:
    event: DicomEvent | None
    # an image's facts for its series' imaging event (None for every other object)
    facts: dict[str, Any] | None


def extract_received(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> Extracted:
    """The event or image facts of a decoded object of an accepted storage SOP class
    (``obj.sop_class_uid``). Raises ``ValueError`` / ``TypeError`` / ``MalformedObject`` for
    values that make no sense (answered 0xC210); anything else it raises is a bug."""
    route = sop.STORAGE[obj.sop_class_uid]
    if route == "image":
        return Extracted(None, image_facts(ds, obj.sop_class_uid, source, clinic_tz))
    if route == "store_only":
        return Extracted(None, None)
    return Extracted(_BUILDERS[route](ds, obj, source, clinic_tz), None)
