"""Charges into the store and out as events: each charge by its deterministic id, with a
revision per published version; ``rtops.billing.charge.posted`` for a new or changed charge
(``removed`` when the facts no longer give it), ``rtops.billing.charge.voided`` when an
exported charge goes to hold or disappears. Runs in the caller's transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from services.billing.domain import Charge
from services.billing.store import ChargeRow
from services.billing.store.queries import charges_of
from shared.events import ChargePosted, ChargeVoided, EventPayload, Patient
from shared.outbox import emit_many

log = structlog.get_logger(__name__)


def store_charges(
    session: Session, patient_id: str, charges: Sequence[Charge], *, now: datetime
) -> None:
    """Upsert the patient's charges by id and queue what changed (see the module docstring)."""
    held = charges_of(session, patient_id=patient_id)
    patient = Patient(id=patient_id)
    out: list[tuple[EventPayload, str | None]] = []
    for charge in charges:
        fields = charge_fields(charge)
        digest = _digest(fields)
        row = held.pop(charge.id, None)
        if row is not None and row.digest == digest and not row.removed:
            continue
        voided = (
            row is not None
            and row.exported
            and not row.removed
            and row.status == "ready"
            and charge.status == "hold"
        )
        if row is None:
            row = ChargeRow(id=charge.id, patient_id=patient_id, revision=0, exported=False)
            session.add(row)
        if voided:
            out.append((_voided(row, charge, patient, "hold"), charge.id))
        row.course_id = charge.course_id
        row.cpt = charge.cpt
        row.modifiers = list(charge.modifiers)
        row.units = charge.units
        row.service_date = charge.service_date
        row.period_start, row.period_end = charge.period
        row.status = charge.status
        row.hold_reason = charge.hold_reason
        row.evidence = list(charge.evidence)
        row.rule = charge.rule
        row.citation = charge.citation
        row.rules_version = charge.rules_version
        row.revision += 1
        row.digest = digest
        row.removed = False
        row.updated_at = now
        if voided:
            row.exported = False
        out.append((_posted(row, patient), charge.id))
    for row in held.values():
        if row.removed:
            continue
        if row.exported:
            out.append((_voided(row, None, patient, "removed"), row.id))
            row.exported = False
        row.revision += 1
        row.removed = True
        row.updated_at = now
        out.append((_posted(row, patient), row.id))
    emit_many(session, out)
    if out:
        log.info("charges changed", patient_id=patient_id, events=len(out))


def charge_fields(charge: Charge) -> dict[str, Any]:
    return {
        "id": charge.id,
        "patient_id": charge.patient_id,
        "course_id": charge.course_id,
        "cpt": charge.cpt,
        "modifiers": list(charge.modifiers),
        "units": charge.units,
        "service_date": charge.service_date.isoformat(),
        "period": [charge.period[0].isoformat(), charge.period[1].isoformat()],
        "status": charge.status,
        "hold_reason": charge.hold_reason,
        "evidence": list(charge.evidence),
        "rule": charge.rule,
        "citation": charge.citation,
        "rules_version": charge.rules_version,
    }


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _posted(row: ChargeRow, patient: Patient) -> ChargePosted:
    return ChargePosted(
        patient=patient,
        charge_id=row.id,
        revision=row.revision,
        removed=row.removed,
        course_id=row.course_id,
        cpt=row.cpt,
        modifiers=tuple(row.modifiers),
        units=row.units,
        service_date=row.service_date,
        period_start=row.period_start,
        period_end=row.period_end,
        status=row.status,  # type: ignore[arg-type]
        hold_reason=row.hold_reason,
        evidence=tuple(row.evidence),
        rule=row.rule,
        citation=row.citation,
        rules_version=row.rules_version,
    )


def _voided(row: ChargeRow, charge: Charge | None, patient: Patient, reason: str) -> ChargeVoided:
    """The void names the charge as it was exported (the row before this change) and the
    revision that voids it."""
    return ChargeVoided(
        patient=patient,
        charge_id=row.id,
        revision=row.revision + 1,
        course_id=row.course_id,
        cpt=row.cpt,
        modifiers=tuple(row.modifiers),
        units=row.units,
        service_date=row.service_date,
        reason=reason,  # type: ignore[arg-type]
        hold_reason=charge.hold_reason if charge else None,
        exported_at=row.exported_at,
    )
