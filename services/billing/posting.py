"""Charges into the store and out as events: each charge by its deterministic id, with a
revision per published version; ``rtops.billing.charge.posted`` for a new or changed charge
(``removed`` when the facts no longer give it), ``rtops.billing.charge.voided`` when an
exported charge goes to hold or disappears. Runs in the caller's transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session

from services.billing.domain import Charge
from services.billing.store.queries import (
    ChargeHead,
    charge_rows,
    charges_of_many,
    write_charges,
)
from shared.events import ChargePosted, ChargeVoided, EventPayload, Patient
from shared.outbox import emit_many

log = structlog.get_logger(__name__)


def store_charges(
    session: Session, patient_id: str, charges: Sequence[Charge], *, now: datetime
) -> None:
    """Upsert one patient's charges by id and queue what changed (see the module docstring)."""
    store_charges_of_many(session, [(patient_id, charges)], now=now)


def store_charges_of_many(
    session: Session,
    evaluated: Sequence[tuple[str, Sequence[Charge]]],
    *,
    now: datetime,
    held_of: Mapping[str, Mapping[str, ChargeHead]] | None = None,
) -> dict[str, dict[str, ChargeHead]]:
    """``store_charges`` for many patients at once: one read of their charges (none where
    ``held_of``, the charges as the caller knows them, names the patient), one INSERT of the
    new ones, one executemany UPDATE of the changed ones and one outbox executemany, the
    events in the order of ``evaluated`` (then the charges' order). Returns each patient's
    charges as they now are."""
    if not evaluated:
        return {}
    held_of = dict(held_of or {})
    unknown = [p for p, _ in evaluated if p not in held_of]
    if unknown:
        held_of.update(charges_of_many(session, unknown))
    # Whole rows only where an event names the row as it was: a void, a removal.
    needed = {
        old.id
        for patient_id, charges in evaluated
        for old in _voided_or_removed(held_of.get(patient_id, {}), charges)
    }
    whole = charge_rows(session, needed) if needed else {}
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    out: list[tuple[EventPayload, str | None]] = []
    after: dict[str, dict[str, ChargeHead]] = {}
    for patient_id, charges in evaluated:
        before = held_of.get(patient_id, {})
        held = dict(before)
        now_held = after[patient_id] = dict(before)
        patient = Patient(id=patient_id)
        count = len(out)
        for charge in charges:
            digest = digest_of(charge)
            old = held.pop(charge.id, None)
            if old is not None and old.digest == digest and not old.removed:
                continue
            voided = (
                old is not None
                and old.exported
                and not old.removed
                and old.status == "ready"
                and charge.status == "hold"
            )
            if voided:
                out.append((_voided(whole[charge.id], charge, patient, "hold"), charge.id))
            row = {
                "id": charge.id,
                "patient_id": patient_id,
                "course_id": charge.course_id,
                "cpt": charge.cpt,
                "modifiers": list(charge.modifiers),
                "units": charge.units,
                "service_date": charge.service_date,
                "period_start": charge.period[0],
                "period_end": charge.period[1],
                "status": charge.status,
                "hold_reason": charge.hold_reason,
                "evidence": list(charge.evidence),
                "rule": charge.rule,
                "citation": charge.citation,
                "rules_version": charge.rules_version,
                "revision": (old.revision if old is not None else 0) + 1,
                "digest": digest,
                "removed": False,
                "exported": bool(old.exported) and not voided if old is not None else False,
                "exported_at": None,  # never written over (``write_charges``)
                "updated_at": now,
            }
            (new if old is None else changed).append(row)
            now_held[charge.id] = _head(row)
            out.append((_posted(row, patient), charge.id))
        for old in held.values():
            if old.removed:
                continue
            row = dict(whole[old.id])
            if old.exported:
                out.append((_voided(row, None, patient, "removed"), old.id))
                row["exported"] = False
            row["revision"] += 1
            row["removed"] = True
            row["updated_at"] = now
            changed.append(row)
            now_held[old.id] = _head(row)
            out.append((_posted(row, patient), old.id))
        if len(out) > count:
            log.info("charges changed", patient_id=patient_id, events=len(out) - count)
    write_charges(session, new=new, changed=changed)
    emit_many(session, out)
    return after


def _head(row: Mapping[str, Any]) -> ChargeHead:
    return ChargeHead(*(row[f] for f in ChargeHead._fields))


def _voided_or_removed(held: Mapping[str, Any], charges: Sequence[Charge]) -> list[Any]:
    """The held rows ``store_charges_of_many`` voids (exported, ready, going to hold) or
    removes (no longer given)."""
    given = {c.id: c for c in charges}
    out = []
    for old in held.values():
        if old.removed:
            continue
        charge = given.get(old.id)
        if charge is None or (
            old.exported
            and old.status == "ready"
            and charge.status == "hold"
            and old.digest != digest_of(charge)
        ):
            out.append(old)
    return out


# Digests of charges seen lately: a re-evaluation yields mostly the same charges again, and
# the digest is a pure function of the charge (bounded; the oldest half goes when full).
_DIGESTS: dict[Charge, str] = {}
_DIGESTS_MAX = 200_000


def digest_of(charge: Charge) -> str:
    digest = _DIGESTS.get(charge)
    if digest is None:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            for old in list(_DIGESTS)[: _DIGESTS_MAX // 2]:
                del _DIGESTS[old]
        digest = _DIGESTS[charge] = _digest(charge_fields(charge))
    return digest


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


def _posted(row: Mapping[str, Any], patient: Patient) -> ChargePosted:
    return ChargePosted(
        patient=patient,
        charge_id=row["id"],
        revision=row["revision"],
        removed=row["removed"],
        course_id=row["course_id"],
        cpt=row["cpt"],
        modifiers=tuple(row["modifiers"]),
        units=row["units"],
        service_date=row["service_date"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        status=row["status"],
        hold_reason=row["hold_reason"],
        evidence=tuple(row["evidence"]),
        rule=row["rule"],
        citation=row["citation"],
        rules_version=row["rules_version"],
    )


def _voided(
    row: Mapping[str, Any], charge: Charge | None, patient: Patient, reason: str
) -> ChargeVoided:
    """The void names the charge as it was exported (the row before this change) and the
    revision that voids it."""
    return ChargeVoided(
        patient=patient,
        charge_id=row["id"],
        revision=row["revision"] + 1,
        course_id=row["course_id"],
        cpt=row["cpt"],
        modifiers=tuple(row["modifiers"]),
        units=row["units"],
        service_date=row["service_date"],
        reason=reason,  # type: ignore[arg-type]
        hold_reason=charge.hold_reason if charge else None,
        exported_at=row["exported_at"],
    )
