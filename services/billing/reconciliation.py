"""Claims and discrepancies: import a claim file (all of it or nothing), and reconcile the
stored charges against the stored claim lines with the domain's ``reconcile``. An 835
remittance's denied and adjusted lines join the report."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from services.billing import domain
from services.billing.claims import ClaimError, ClaimFile, parse_claim_file
from services.billing.domain import BundledCharge, Charge, ClaimLine, Discrepancy
from services.billing.store import (
    AuditLog,
    ChargeRow,
    ClaimFileRow,
    ClaimLineRow,
    Course,
    RemittanceRow,
)
from shared.audit import record_access
from shared.auth import Principal
from shared.errors import Conflict


class ClaimFileRejected(Exception):
    """A claim file with errors: nothing of it is stored."""

    def __init__(self, parsed: ClaimFile) -> None:
        super().__init__(f"{len(parsed.errors)} error(s)")
        self.errors = parsed.errors
        self.format = parsed.format


@dataclass(frozen=True)
class Imported:
    id: int
    format: str
    lines: int
    remittances: int
    patients: int


@dataclass(frozen=True)
class RemittanceItem:
    """A denied or adjusted 835 line in the discrepancy report."""

    kind: str  # denied_line / adjusted_line
    patient_id: str
    cpt: str
    service_date: date
    claim_id: str
    line: int | None
    units: int
    detail: str


class Reconciliation:
    def __init__(
        self,
        *,
        factory: sessionmaker[Session],
        rules: domain.RuleSet,
        payer: domain.Payer,
        clock: Callable[[], datetime],
    ) -> None:
        self._factory = factory
        self._rules = rules
        self._payer = payer
        self._now = clock

    def import_claims(
        self,
        content: bytes,
        *,
        content_type: str | None,
        filename: str | None,
        principal: Principal,
        resource: str,
    ) -> Imported:
        parsed = parse_claim_file(content, content_type, filename)
        if parsed.errors:
            raise ClaimFileRejected(parsed)
        digest = hashlib.sha256(content).hexdigest()
        with self._factory.begin() as session:
            known = session.scalar(select(ClaimFileRow.id).where(ClaimFileRow.sha256 == digest))
            if known is not None:
                raise Conflict(f"this file was imported before, as claim file {known}")
            row = ClaimFileRow(
                sha256=digest,
                filename=filename[:300] if filename else None,
                format=parsed.format,
                lines=len(parsed.lines),
                remittances=len(parsed.remittances),
                uploaded_by=principal.user,
                uploaded_at=self._now(),
            )
            session.add(row)
            session.flush()
            if parsed.lines:
                session.execute(insert(ClaimLineRow), [_line_row(row.id, x) for x in parsed.lines])
            if parsed.remittances:
                session.execute(
                    insert(RemittanceRow), [_remittance_row(row.id, r) for r in parsed.remittances]
                )
            patients = {x.patient_id for x in parsed.lines} | {
                r.patient_id for r in parsed.remittances
            }
            record_access(
                session,
                AuditLog,
                principal,
                action="write",
                resource=resource,
                patient_ids=patients,
            )
            return Imported(row.id, row.format, row.lines, row.remittances, len(patients))

    def discrepancies(
        self, session: Session, *, patient_id: str | None, first: date | None, end: date | None
    ) -> tuple[list[Discrepancy], list[RemittanceItem]]:
        """Stored charges against stored claim lines, for dates of service in [first, end)."""
        # Plain column tuples, not ORM rows: a period holds hundreds of thousands of them.
        charges = select(*_CHARGE_COLUMNS).where(ChargeRow.removed.is_(False))
        lines = select(
            ClaimLineRow.claim_id,
            ClaimLineRow.patient_id,
            ClaimLineRow.service_date,
            ClaimLineRow.cpt,
            ClaimLineRow.modifiers,
            ClaimLineRow.units,
            ClaimLineRow.line,
        )
        remits = select(RemittanceRow)
        courses = select(Course.bundled)
        if patient_id:
            charges = charges.where(ChargeRow.patient_id == patient_id)
            lines = lines.where(ClaimLineRow.patient_id == patient_id)
            remits = remits.where(RemittanceRow.patient_id == patient_id)
            courses = courses.where(Course.patient_id == patient_id)
        if first:
            charges = charges.where(ChargeRow.period_end >= first)
            lines = lines.where(ClaimLineRow.service_date >= first)
            remits = remits.where(RemittanceRow.service_date >= first)
        if end:
            charges = charges.where(ChargeRow.period_start < end)
            lines = lines.where(ClaimLineRow.service_date < end)
            remits = remits.where(RemittanceRow.service_date < end)
        expected = [_charge(r) for r in session.execute(charges)]
        claimed = [
            ClaimLine(
                claim_id=r.claim_id,
                patient_id=r.patient_id,
                service_date=r.service_date,
                cpt=r.cpt,
                modifiers=tuple(r.modifiers),
                units=r.units,
                line=r.line,
            )
            for r in session.execute(lines.order_by(ClaimLineRow.id))
        ]
        bundled = [
            BundledCharge(
                charge=_charge_of(b),
                bundle=b["bundle"],
                primary_charge_id=b["primary_charge_id"],
                citation=b["bundle_citation"],
            )
            for group in session.scalars(courses)
            for b in group
        ]
        window = (first, end - timedelta(days=1)) if first and end else None
        found = domain.reconcile(
            expected,
            claimed,
            self._rules,
            payer_id=self._payer.id,
            bundled=bundled,
            window=window,
        )
        remittances = [
            _remittance_item(r) for r in session.scalars(remits.order_by(RemittanceRow.id))
        ]
        return list(found), remittances


def _line_row(file_id: int, line: ClaimLine) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "claim_id": line.claim_id[:100],
        "patient_id": line.patient_id,
        "service_date": line.service_date,
        "cpt": line.code,
        "modifiers": list(line.modifiers),
        "units": line.units,
        "line": line.line,
    }


def _remittance_row(file_id: int, r: Any) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "claim_id": r.claim_id[:100],
        "claim_status": r.claim_status[:10],
        "patient_id": r.patient_id,
        "service_date": r.service_date,
        "cpt": r.cpt,
        "modifiers": list(r.modifiers),
        "billed_units": r.billed_units,
        "paid_units": r.paid_units,
        "charged_amount": str(r.charged_amount),
        "paid_amount": str(r.paid_amount),
        "denied": r.denied,
        "adjustments": [
            {
                "group": a.group,
                "reason": a.reason,
                "amount": str(a.amount),
                "quantity": None if a.quantity is None else str(a.quantity),
            }
            for a in (*r.claim_adjustments, *r.adjustments)
        ],
        "remark_codes": list(r.remark_codes),
        "line": r.line,
    }


def _remittance_item(r: RemittanceRow) -> RemittanceItem:
    reasons = ", ".join(f"{a['group']}-{a['reason']} {a['amount']}" for a in r.adjustments)
    paid = f"paid {r.paid_amount} of {r.charged_amount}, {r.paid_units} of {r.billed_units} units"
    return RemittanceItem(
        kind="denied_line" if r.denied else "adjusted_line",
        patient_id=r.patient_id,
        cpt=r.cpt,
        service_date=r.service_date,
        claim_id=r.claim_id,
        line=r.line,
        units=r.billed_units,
        detail=f"{paid}; {reasons}" if reasons else paid,
    )


# What reconciling reads of a charge: not its evidence (a discrepancy does not show it, and
# decoding a JSON list per charge was a fifth of the report's time over 100,000 charges).
_CHARGE_COLUMNS = (
    ChargeRow.id,
    ChargeRow.patient_id,
    ChargeRow.course_id,
    ChargeRow.cpt,
    ChargeRow.modifiers,
    ChargeRow.units,
    ChargeRow.service_date,
    ChargeRow.status,
    ChargeRow.hold_reason,
    ChargeRow.rule,
    ChargeRow.citation,
    ChargeRow.period_start,
    ChargeRow.period_end,
    ChargeRow.rules_version,
)


def _charge(row: Any) -> Charge:
    (id_, patient, course, cpt, modifiers, units, day, status, hold, rule, citation, start, end,
     version) = row  # fmt: skip
    return Charge(
        id_,
        patient,
        course,
        cpt,
        tuple(modifiers),
        units,
        day,
        status,
        hold,
        (),  # evidence: not read (above)
        rule,
        citation,
        (start, end),
        version,
    )


def _charge_of(fields: dict[str, Any]) -> Charge:
    return Charge(
        id=fields["id"],
        patient_id=fields["patient_id"],
        course_id=fields["course_id"],
        cpt=fields["cpt"],
        modifiers=tuple(fields["modifiers"]),
        units=fields["units"],
        service_date=date.fromisoformat(fields["service_date"]),
        status=fields["status"],
        hold_reason=fields["hold_reason"],
        evidence=tuple(fields["evidence"]),
        rule=fields["rule"],
        citation=fields["citation"],
        period=(date.fromisoformat(fields["period"][0]), date.fromisoformat(fields["period"][1])),
        rules_version=fields["rules_version"],
    )


__all__ = ["ClaimError", "ClaimFileRejected", "Imported", "Reconciliation", "RemittanceItem"]
