"""Recording what DICOM events state, and which part of each patient's timeline that changes.

Each event becomes (at most) one fact row: a plan, a treatment record, an imaging series or a
registration, upserted by its UID, newer revisions winning. Alongside, a ``Scope`` per patient
says what a rebuild must look at: the clinic days the old and new facts fall on, the fraction
keys and imaging series they name (which may lie on other days), or the whole patient (a plan
changes every fraction it governs).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.qa_tracker.keys import keys_of_record
from services.qa_tracker.scope import Scope
from services.qa_tracker.store import (
    ImagingSeries,
    Plan,
    Registration,
    RegistrationSeries,
    TreatmentRecord,
)
from shared.events import (
    CloudEvent,
    ImagingAcquired,
    PlanReceived,
    RegistrationReceived,
    TreatmentRecorded,
)

# Plans that never treat a patient (domain-dicom.md s. 5.1).
NON_CLINICAL_INTENTS = {"VERIFICATION", "MACHINE_QA", "SERVICE"}
IGRT_CLASSES = {"cbct", "kv_2d", "mv_portal"}
_SBRT = re.compile(r"\b(SBRT|SABR|SRS|SRT)\b", re.IGNORECASE)


def technique_of(plan: PlanReceived) -> str | None:
    text = " ".join(
        filter(None, (plan.label, plan.name, plan.description, plan.prescription_description))
    )
    return "SBRT" if _SBRT.search(text) else None


_IDENTITY: dict[type, tuple[type, Callable[[Any], str]]] = {
    TreatmentRecorded: (TreatmentRecord, lambda e: e.object.sop_instance_uid),
    ImagingAcquired: (ImagingSeries, lambda e: e.series_instance_uid),
    RegistrationReceived: (Registration, lambda e: e.object.sop_instance_uid),
    PlanReceived: (Plan, lambda e: e.object.sop_instance_uid),
}


class FactRecorder:
    """Records a batch of events in a session; ``scopes`` then says what to rebuild."""

    def __init__(self, session: Session, events: Sequence[CloudEvent]) -> None:
        self._session = session
        self.scopes: dict[str, Scope] = defaultdict(Scope)
        self._known = self._load([e.data for e in events])

    def _load(self, data: Sequence[object]) -> dict[tuple[type, str], Any]:
        """The stored facts these events may update, in one query per table."""
        wanted: dict[type, set[str]] = defaultdict(set)
        for d in data:
            if (identity := _IDENTITY.get(type(d))) is not None:
                model, key_of = identity
                wanted[model].add(key_of(d))
        known: dict[tuple[type, str], Any] = {}
        for model, keys in wanted.items():
            column = model.__mapper__.primary_key[0]  # type: ignore[attr-defined]
            for row in self._session.scalars(select(model).where(column.in_(keys))):
                known[model, getattr(row, column.key)] = row
        return known

    def record(self, event: CloudEvent) -> None:
        data = event.data
        if isinstance(data, TreatmentRecorded):
            self._treatment(data)
        elif isinstance(data, ImagingAcquired):
            self._imaging(data)
        elif isinstance(data, RegistrationReceived):
            # Without a content time, the event's: a replay on another day must give the
            # same result, so never the clock's.
            self._registration(data, event.time)
        elif isinstance(data, PlanReceived):
            self._plan(data)
        # Other events are not the tracker's: acknowledged and ignored.

    def _treatment(self, e: TreatmentRecorded) -> None:
        # A SIMULATION record is not a delivered fraction (domain-dicom.md s. 4.1).
        if e.content_origin == "SIMULATION" or e.treated_at is None or not e.patient.id:
            return
        row = self._known.get((TreatmentRecord, e.object.sop_instance_uid))
        if row is not None and row.revision >= e.object.revision:
            return
        starts = [b.started_at for b in e.beams if b.started_at]
        ends = [b.ended_at for b in e.beams if b.ended_at]
        values = {
            "revision": e.object.revision,
            "patient_id": e.patient.id,
            "patient_name": e.patient.name,
            "plan_uid": e.plan_uid,
            "fraction_group": e.fraction_group_number,
            "fraction_numbers": list(e.fraction_numbers),
            "machine": e.machine,
            "started_at": min(starts, default=e.treated_at),
            "ended_at": max(ends, default=e.treated_at),
            "delivered": e.delivered,
            "partial": e.partial,
            "therapist_override": e.overrides,
        }
        if row is not None:  # the revision's old fraction and days change too
            self._scope_of(row).add(row.started_at, row.ended_at)
            self._scope_of(row).keys.update(str(k) for k in keys_of_record(row))
        row = self._upsert(row, TreatmentRecord, e.object.sop_instance_uid, values)
        self.scopes[row.patient_id].add(row.started_at, row.ended_at)
        self.scopes[row.patient_id].keys.update(str(k) for k in keys_of_record(row))

    def _imaging(self, e: ImagingAcquired) -> None:
        if e.classification not in IGRT_CLASSES or e.acquired_at is None or not e.patient.id:
            return
        row = self._known.get((ImagingSeries, e.series_instance_uid))
        # A later event of a series carries more instances; an older one arriving late loses.
        if row is not None and (row.instance_count, len(row.approvals)) >= (
            e.instance_count,
            len(e.approvals),
        ):
            return
        values = {
            "patient_id": e.patient.id,
            "machine": e.machine,
            "classification": e.classification,
            "acquired_at": e.acquired_at,
            "instance_count": e.instance_count,
            "approvals": [a.model_dump(mode="json") for a in e.approvals],
        }
        if row is not None:
            self._scope_of(row).add(row.acquired_at)
        row = self._upsert(row, ImagingSeries, e.series_instance_uid, values)
        self.scopes[row.patient_id].add(row.acquired_at)
        self.scopes[row.patient_id].arrived.add(row.series_uid)

    def _registration(self, e: RegistrationReceived, sent_at: datetime) -> None:
        if not e.patient.id:
            return
        row = self._known.get((Registration, e.object.sop_instance_uid))
        if row is not None and row.revision >= e.object.revision:
            return
        translation = e.translation_mm or e.couch_shift_mm
        values = {
            "revision": e.object.revision,
            "patient_id": e.patient.id,
            "machine": e.source.machine,
            "kind": e.kind,
            "content_at": e.content_at or sent_at,
            "creator": e.creator_name,
            "moving_series": list(e.moving_series_uids),
            "translation_mm": [translation.x, translation.y, translation.z]
            if translation
            else None,
            "rotation_deg": [e.rotation_deg.x, e.rotation_deg.y, e.rotation_deg.z]
            if e.rotation_deg
            else None,
        }
        if row is not None:  # the series it matched before may be on another day
            old = self._scope_of(row)
            old.add(row.content_at)
            old.series.update(row.moving_series)
            if row.session_uid:
                old.series.add(row.session_uid)
            self._session.execute(
                delete(RegistrationSeries).where(RegistrationSeries.sop_uid == row.sop_uid)
            )
        row = self._upsert(row, Registration, e.object.sop_instance_uid, values)
        self._session.add_all(
            RegistrationSeries(series_uid=uid, sop_uid=row.sop_uid)
            for uid in dict.fromkeys(row.moving_series)
        )
        self.scopes[row.patient_id].add(row.content_at)
        self.scopes[row.patient_id].series.update(row.moving_series)

    def _plan(self, e: PlanReceived) -> None:
        if (e.intent or "").upper() in NON_CLINICAL_INTENTS or not e.patient.id:
            return
        row = self._known.get((Plan, e.object.sop_instance_uid))
        if row is not None and row.revision >= e.object.revision:
            return
        values = {
            "revision": e.object.revision,
            "patient_id": e.patient.id,
            "label": e.label,
            "site": e.treatment_site,
            "technique": technique_of(e),
            "physician": e.reviewer_name if e.approval_status == "APPROVED" else None,
        }
        if row is not None:
            self._scope_of(row).whole = True
        self._upsert(row, Plan, e.object.sop_instance_uid, values)
        # Physician, site and technique of every fraction of the plan may change.
        self.scopes[e.patient.id].whole = True

    def _scope_of(self, row: Any) -> Scope:
        return self.scopes[row.patient_id]

    def _upsert(self, row: Any, model: type, key: str, values: dict[str, object]) -> Any:
        if row is None:
            column = model.__mapper__.primary_key[0].key  # type: ignore[attr-defined]
            row = model(**{column: key}, **values)
            self._session.add(row)
            self._known[model, key] = row
        else:
            for name, value in values.items():
                setattr(row, name, value)
        return row
