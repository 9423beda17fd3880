"""Encapsulated PDF -> ``DocumentReceived``, and the encapsulated document's own bytes."""

from __future__ import annotations

from pydicom.dataset import Dataset

from services.scp_listener import sop
from services.scp_listener.extract.readers import (
    first,
    integer,
    items,
    patient,
    stamp,
    text,
)
from shared.events import SourceDevice, StoredObject
from shared.events.dicom import DocumentReceived

_PLAN_CLASSES = frozenset({sop.RT_PLAN, sop.RT_ION_PLAN})


def document_received(
    ds: Dataset, obj: StoredObject, source: SourceDevice, clinic_tz: str
) -> DocumentReceived:
    return DocumentReceived(
        patient=patient(ds),
        source=source,
        object=obj,
        title=text(ds, "DocumentTitle"),
        mime_type=text(ds, "MIMETypeOfEncapsulatedDocument"),
        content_at=stamp(ds, "ContentDate", "ContentTime", clinic_tz),
        referenced_plan_uid=referenced_plan_uid(ds),
        referenced_study_uid=text(first(ds, "ReferencedStudySequence"), "ReferencedSOPInstanceUID")
        or text(ds, "StudyInstanceUID"),
    )


def referenced_plan_uid(ds: Dataset) -> str | None:
    """The plan a report is about. A TPS that says so uses the Referenced RT Plan Sequence;
    others list the plan among the General Reference module's Referenced Instance Sequence or
    the Encapsulated Document module's Source Instance Sequence, where only the SOP class tells
    a plan from anything else."""
    if uid := text(first(ds, "ReferencedRTPlanSequence"), "ReferencedSOPInstanceUID"):
        return uid
    for keyword in ("ReferencedInstanceSequence", "SourceInstanceSequence"):
        for ref in items(ds, keyword):
            uid = text(ref, "ReferencedSOPInstanceUID")
            if uid and text(ref, "ReferencedSOPClassUID") in _PLAN_CLASSES:
                return uid
    return None


def encapsulated_document(ds: Dataset) -> bytes | None:
    """The document's bytes. Encapsulated Document (0042,0011) is OB and so padded to an even
    length; Encapsulated Document Length (0042,0015), when sent, gives the true length."""
    value = ds.get("EncapsulatedDocument")
    if not isinstance(value, bytes):
        return None
    length = integer(ds, "EncapsulatedDocumentLength")
    if length is not None and 0 <= length <= len(value):
        return value[:length]
    return value
