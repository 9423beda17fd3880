"""Audit log of every read and write of patient data: who, what, when, which patient.

Each service keeps its own ``audit_log`` table (``class AuditLog(AuditMixin, Base)``); writes
are recorded in the same transaction as the change, reads in their own. ``user`` is the
principal's stable identity (the token's ``sub``, qualified by an external issuer), never a
name the user can change (docs/identity.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from fastapi import Request
from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, Session, mapped_column

from shared.auth import Principal
from shared.db import UtcDateTime


class AuditMixin:
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    user: Mapped[str] = mapped_column(String(200))
    roles: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(10))
    resource: Mapped[str] = mapped_column(String(500))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)


def record_access(
    session: Session,
    model: type[AuditMixin],
    principal: Principal,
    *,
    action: str,
    resource: str,
    patient_ids: Iterable[str | None],
) -> None:
    """One row per patient touched (a list endpoint touching none still leaves one row)."""
    now = datetime.now(UTC)
    ids = sorted({p for p in patient_ids if p}) or [None]
    session.add_all(
        model(
            at=now,
            user=principal.user,
            roles=",".join(sorted(principal.roles)),
            action=action,
            resource=resource[:500],
            patient_id=pid,
        )  # type: ignore[call-arg]
        for pid in ids
    )


def record_request(
    session: Session,
    model: type[AuditMixin],
    principal: Principal,
    request: Request,
    *,
    patient_ids: Iterable[str | None],
    action: str = "read",
) -> None:
    """``record_access`` for an API request: the resource is its path and query string."""
    query = f"?{request.url.query}" if request.url.query else ""
    record_access(
        session,
        model,
        principal,
        action=action,
        resource=request.url.path + query,
        patient_ids=patient_ids,
    )
