"""REST side of the SCP: what has been received (for operations staff checking a device's
traffic), and the stored objects themselves. Both read patient data, so every call is
audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import pydicom
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener import extract, sop
from services.scp_listener.objectstore import ObjectStore
from services.scp_listener.store import AuditLog, DicomObject, object_revision, received_objects
from shared.audit import record_request
from shared.auth import DeviceOperator, RecordReader
from shared.errors import NotFound, RuleViolation
from shared.pagination import page_of
from shared.params import CursorQuery, PatientIdQuery, TimeRangeDep, UidPath, UidQuery

router = APIRouter(prefix="/v1", tags=["objects"])


def get_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]


def get_store(request: Request) -> ObjectStore:
    return request.app.state.ingestor.store  # type: ignore[no-any-return]


StoreDep = Annotated[ObjectStore, Depends(get_store)]


class ObjectOut(BaseModel):
    sop_instance_uid: str
    revision: int
    sop_class_uid: str
    series_instance_uid: str | None
    patient_id: str | None
    calling_ae: str
    received_at: datetime
    size: int
    sha256: str
    storage_key: str


class ObjectPage(BaseModel):
    items: list[ObjectOut]
    next_cursor: str | None


@router.get("/objects", response_model=ObjectPage)
def list_objects(
    principal: DeviceOperator,
    factory: FactoryDep,
    request: Request,
    received: TimeRangeDep,
    patient_id: PatientIdQuery = None,
    # An AE title is at most 16 characters (VR AE, PS3.5 table 6.2-1).
    calling_ae: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    sop_class_uid: UidQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: CursorQuery = None,
) -> ObjectPage:
    """Stored objects, newest first; ``next_cursor`` continues the listing."""
    query = received_objects(
        patient_id=patient_id,
        calling_ae=calling_ae,
        sop_class_uid=sop_class_uid,
        received_from=received.start,
        received_to=received.end,
    )
    with factory.begin() as session:
        page, next_cursor = page_of(session, query, [DicomObject.id], cursor=cursor, limit=limit)
        record_request(
            session, AuditLog, principal, request, patient_ids=[r.patient_id for r in page]
        )
        items = [ObjectOut.model_validate(r, from_attributes=True) for r in page]
    return ObjectPage(items=items, next_cursor=next_cursor)


@router.get(
    "/objects/{sop_instance_uid}/content",
    response_class=Response,
    responses={
        200: {
            "content": {"application/dicom": {}, "application/pdf": {}},
            "description": "the stored file, or the encapsulated PDF with format=pdf",
        }
    },
)
def object_content(
    sop_instance_uid: UidPath,
    principal: RecordReader,
    factory: FactoryDep,
    store: StoreDep,
    request: Request,
    revision: Annotated[int | None, Query(ge=1)] = None,
    as_format: Annotated[Literal["dicom", "pdf"], Query(alias="format")] = "dicom",
) -> Response:
    """The stored bytes of an object's latest revision (or ``revision``) as received, file
    meta added; ``format=pdf`` returns an Encapsulated PDF's document itself."""
    with factory.begin() as session:
        row = object_revision(session, sop_instance_uid, revision)
        if row is None:
            which = f"revision {revision} of " if revision is not None else ""
            raise NotFound(
                f"no {which}object {sop_instance_uid} has been received; "
                "GET /v1/objects lists what has"
            )
        if as_format == "pdf" and row.sop_class_uid != sop.ENCAPSULATED_PDF:
            raise RuleViolation(
                f"object {sop_instance_uid} is a {sop.NAMES.get(row.sop_class_uid, 'DICOM')} "
                "object, not an Encapsulated PDF: ask without format=pdf"
            )
        record_request(session, AuditLog, principal, request, patient_ids=[row.patient_id])
        path = store.path(row.storage_key)
        filename = f"{row.sop_instance_uid}.{row.revision}"
    if as_format == "pdf":
        document = extract.encapsulated_document(pydicom.dcmread(path))
        if document is None:
            raise NotFound(f"object {sop_instance_uid} holds no encapsulated document")
        return Response(
            document,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{filename}.pdf"'},
        )
    return FileResponse(path, media_type="application/dicom", filename=f"{filename}.dcm")
