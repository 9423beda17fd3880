"""Read the attributes rtops needs from a stored DICOM header and turn them into event payloads.

One module per kind of object; ``readers`` holds the tolerant primitives and the decoding of a
received header. Every Type 2 attribute may be present but empty, and many exports omit Type 3
ones: each reader tolerates both and follows the fallbacks of ``../shared/docs/domain-dicom.md``
(s. 11). Pure functions over a pydicom ``Dataset`` (no I/O, no clock, no settings lookups),
except ``read_header``, which decodes the received file.

The names below are re-exported so that callers write ``extract.text(ds, ...)``.
"""

from __future__ import annotations

from services.scp_listener.extract.document import (
    document_received,
    encapsulated_document,
    referenced_plan_uid,
)
from services.scp_listener.extract.images import classify, image_facts
from services.scp_listener.extract.plan import gantry_rotation, mlc_modulated, plan_received
from services.scp_listener.extract.readers import (
    DEFER_BYTES,
    MAX_SEQUENCE_DEPTH,
    MalformedObject,
    Undecodable,
    check_complete,
    decode_sequences,
    first,
    get_value,
    integer,
    items,
    number,
    numbers,
    parse_date,
    parse_datetime,
    patient,
    read_header,
    referenced_uids,
    stamp,
    text,
)
from services.scp_listener.extract.received import Extracted, extract_received
from services.scp_listener.extract.records import (
    brachy_setups,
    treatment_recorded,
    treatment_summarized,
)
from services.scp_listener.extract.registration import (
    elekta_couch_shift_mm,
    registration_received,
    rigid_components,
)

__all__ = [
    "DEFER_BYTES",
    "MAX_SEQUENCE_DEPTH",
    "Extracted",
    "MalformedObject",
    "Undecodable",
    "brachy_setups",
    "check_complete",
    "classify",
    "decode_sequences",
    "document_received",
    "elekta_couch_shift_mm",
    "encapsulated_document",
    "extract_received",
    "first",
    "gantry_rotation",
    "get_value",
    "image_facts",
    "integer",
    "items",
    "mlc_modulated",
    "number",
    "numbers",
    "parse_date",
    "parse_datetime",
    "patient",
    "plan_received",
    "read_header",
    "referenced_plan_uid",
    "referenced_uids",
    "registration_received",
    "rigid_components",
    "stamp",
    "text",
    "treatment_recorded",
    "treatment_summarized",
]
