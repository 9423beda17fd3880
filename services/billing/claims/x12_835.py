"""Denied and adjusted service lines from an 835 remittance advice (005010X221A1).

| RemittanceLine | 835 |
|---|---|
| claim id, claim status, payer claim id | 2100 CLP01, CLP02, CLP07 |
| patient id | 2100 REF*EA (medical record number), else NM1*QC NM109 |
| claim adjustments | 2100 CAS |
| cpt, modifiers | 2110 SVC01 ``HC:code:mods`` |
| charged, paid amount | SVC02, SVC03 |
| paid units, billed units | SVC05 (empty: 1), SVC07 (empty: the paid units) |
| service date | 2110 DTM*472, else DTM*150 (period start), else 2100 DTM*232 |
| adjustments | 2110 CAS: group, then up to six (reason, amount, quantity) triplets |
| remark codes | 2110 LQ*HE |

A line is kept when the payer denied it (CLP02 4, or nothing paid on a charge) or adjusted it
(a CAS at the line or the claim); lines paid in full without adjustment are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from services.billing.claims.model import (
    Adjustment,
    ClaimError,
    RemittanceLine,
    ccyymmdd,
    cpt_problem,
    decimal_or_none,
    modifiers_problem,
    whole_number,
)
from services.billing.claims.x12_segments import Delimiters, Segment


@dataclass
class _Service:
    svc: Segment
    dates: dict[str, Segment] = field(default_factory=dict)
    cas: list[Segment] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)


@dataclass
class _Claim:
    clp: Segment
    patient_id: str = ""
    record_number: str = ""
    statement: Segment | None = None
    cas: list[Segment] = field(default_factory=list)
    services: list[_Service] = field(default_factory=list)


def read(
    transaction: list[Segment], delimiters: Delimiters, errors: list[ClaimError]
) -> list[RemittanceLine]:
    out: list[RemittanceLine] = []
    claim: _Claim | None = None
    service: _Service | None = None
    for seg in transaction:
        sid = seg.id
        if sid in ("CLP", "LX", "PLB", "SE"):
            if claim is not None:
                out.extend(_claim_lines(claim, delimiters, errors))
            claim = _Claim(seg) if sid == "CLP" else None
            service = None
        elif claim is None:
            continue
        elif sid == "SVC":
            service = _Service(seg)
            claim.services.append(service)
        elif sid == "CAS":
            (service.cas if service is not None else claim.cas).append(seg)
        elif sid == "DTM":
            if service is not None:
                service.dates.setdefault(seg.get(1), seg)
            elif seg.get(1) == "232":
                claim.statement = seg
        elif sid == "LQ" and service is not None and seg.get(1) == "HE":
            service.remarks.append(seg.get(2))
        elif sid == "NM1" and service is None and seg.get(1) == "QC":
            claim.patient_id = seg.get(9)
        elif sid == "REF" and service is None and seg.get(1) == "EA":
            claim.record_number = seg.get(2)
    if claim is not None:
        out.extend(_claim_lines(claim, delimiters, errors))
    return out


def _claim_lines(
    claim: _Claim, delimiters: Delimiters, errors: list[ClaimError]
) -> list[RemittanceLine]:
    clp = claim.clp
    claim_id, status = clp.get(1), clp.get(2)
    patient_id = claim.record_number or claim.patient_id
    if not claim_id:
        errors.append(ClaimError(clp.number, "CLP", "CLP01 claim id is empty"))
    if not patient_id:
        errors.append(ClaimError(clp.number, "CLP", "no patient id: no REF*EA or NM1*QC NM109"))
    claim_adjustments = _adjustments(claim.cas, errors)
    fallback = _day(claim.statement) if claim.statement is not None else None
    out = []
    for service in claim.services:
        line = _service(service, delimiters, errors)
        if line is None:
            continue
        code, modifiers, charged, paid, paid_units, billed_units = line
        day = _service_day(service, fallback, errors)
        adjustments = _adjustments(service.cas, errors)
        if day is None or not claim_id or not patient_id:
            continue
        remittance = RemittanceLine(
            claim_id=claim_id,
            claim_status=status,
            patient_id=patient_id,
            cpt=code,
            modifiers=modifiers,
            service_date=day,
            charged_amount=charged,
            paid_amount=paid,
            paid_units=paid_units,
            billed_units=billed_units,
            adjustments=adjustments,
            claim_adjustments=claim_adjustments,
            remark_codes=tuple(service.remarks),
            payer_claim_id=clp.get(7),
            line=service.svc.number,
        )
        if remittance.denied or adjustments or claim_adjustments:
            out.append(remittance)
    return out


def _service(
    service: _Service, delimiters: Delimiters, errors: list[ClaimError]
) -> tuple[str, tuple[str, ...], Decimal, Decimal, int, int] | None:
    svc = service.svc
    problems = []
    parts = svc.get(1).split(delimiters.component)
    qualifier, code = parts[0], (parts[1].upper() if len(parts) > 1 else "")
    modifiers = tuple(m.upper() for m in parts[2:6] if m)
    if qualifier != "HC":
        if qualifier in ("NU", "ZZ"):  # revenue code or non-HIPAA code only: nothing to join
            return None
        problems.append(f"SVC01-1 {qualifier!r}: only HC (CPT/HCPCS) procedure codes")
    elif problem := cpt_problem(code):
        problems.append(f"SVC01-2: {problem}")
    if problem := modifiers_problem(modifiers):
        problems.append(f"SVC01-3..6: {problem}")
    charged, paid = decimal_or_none(svc.get(2)), decimal_or_none(svc.get(3))
    if charged is None:
        problems.append(f"SVC02 charge {svc.get(2)!r} is not an amount")
    if paid is None:
        problems.append(f"SVC03 payment {svc.get(3)!r} is not an amount")
    paid_units = whole_number(svc.get(5), minimum=0) if svc.get(5) else 1
    if paid_units is None:
        problems.append(f"SVC05 paid units {svc.get(5)!r} are not a whole number")
    billed_units = whole_number(svc.get(7), minimum=0) if svc.get(7) else paid_units
    if billed_units is None:
        problems.append(f"SVC07 original units {svc.get(7)!r} are not a whole number")
    errors.extend(ClaimError(svc.number, "SVC", p) for p in problems)
    if problems or charged is None or paid is None or paid_units is None or billed_units is None:
        return None
    return code, modifiers, charged, paid, paid_units, billed_units


def _service_day(service: _Service, fallback: date | None, errors: list[ClaimError]) -> date | None:
    dtm = service.dates.get("472") or service.dates.get("150")
    if dtm is None:
        if fallback is None:
            errors.append(
                ClaimError(service.svc.number, "SVC", "no service date (DTM*472, DTM*150, DTM*232)")
            )
        return fallback
    day = _day(dtm)
    if day is None:
        errors.append(ClaimError(dtm.number, "DTM", f"DTM02 {dtm.get(2)!r} is not a date"))
    return day


def _day(dtm: Segment) -> date | None:
    value = dtm.get(2)
    return ccyymmdd(value) if len(value) == 8 else None


def _adjustments(segments: list[Segment], errors: list[ClaimError]) -> tuple[Adjustment, ...]:
    out = []
    for cas in segments:
        group = cas.get(1)
        # CAS02-04, 05-07, ... 17-19: (reason, amount, quantity), up to six per segment.
        for at in range(2, 20, 3):
            reason = cas.get(at)
            if not reason:
                continue
            amount = decimal_or_none(cas.get(at + 1))
            quantity_text = cas.get(at + 2)
            quantity = decimal_or_none(quantity_text) if quantity_text else None
            if amount is None or (quantity_text and quantity is None):
                problem = f"CAS{at:02d} {reason}: amount or quantity unreadable"
                errors.append(ClaimError(cas.number, "CAS", problem))
                continue
            out.append(Adjustment(group, reason, amount, quantity))
    return tuple(out)
