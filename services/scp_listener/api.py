"""REST side of the SCP: what has been received (for operations staff checking a device's
traffic). Listing objects reads patient identifiers, so every call is audited."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener.store import AuditLog, DicomObject
from shared.audit import record_access
from shared.auth import Principal, require_roles
from shared.errors import RuleViolation

router = APIRouter(prefix="/v1", tags=["objects"])
Reader = Annotated[Principal, require_roles("admin", "physicist", "therapist", "dosimetrist")]


def get_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory  # type: ignore[no-any-return]


FactoryDep = Annotated[sessionmaker[Session], Depends(get_factory)]


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
    principal: Reader,
    factory: FactoryDep,
    request: Request,
    patient_id: str | None = None,
    calling_ae: str | None = None,
    sop_class_uid: str | None = None,
    received_from: Annotated[datetime | None, Query(alias="from")] = None,
    received_to: Annotated[datetime | None, Query(alias="to")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> ObjectPage:
    """Stored objects, newest first; ``next_cursor`` continues the listing."""
    query = select(DicomObject).order_by(DicomObject.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(DicomObject.id < _decode_cursor(cursor))
    if patient_id:
        query = query.where(DicomObject.patient_id == patient_id)
    if calling_ae:
        query = query.where(DicomObject.calling_ae == calling_ae)
    if sop_class_uid:
        query = query.where(DicomObject.sop_class_uid == sop_class_uid)
    if received_from:
        query = query.where(DicomObject.received_at >= received_from)
    if received_to:
        query = query.where(DicomObject.received_at < received_to)
    with factory.begin() as session:
        rows = session.scalars(query).all()
        page = rows[:limit]
        record_access(
            session,
            AuditLog,
            principal,
            action="read",
            resource=str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
            patient_ids=[r.patient_id for r in page],
        )
        items = [ObjectOut.model_validate(r, from_attributes=True) for r in page]
    next_cursor = _encode_cursor(page[-1].id) if len(rows) > limit else None
    return ObjectPage(items=items, next_cursor=next_cursor)


def _encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(str(row_id).encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except ValueError as exc:
        raise RuleViolation("cursor is not one this API returned; start without it") from exc
