"""Claim lines from the 837 transaction sets: 837P (005010X222A1) and 837I (005010X223A2).

- claim id: CLM01 (the patient control number).
- patient id: 2300 REF*EA (medical record number), else 2010CA NM1*QC NM109 (4010 habit),
  else 2010BA NM1*IL NM109 (the subscriber's member id).
- cpt and modifiers: SV101 (837P) / SV202 (837I) ``HC:code:mod1:..:mod4``. An 837I line with
  a revenue code alone (room, supplies) has nothing to reconcile and is skipped.
- units: SV104 / SV205, counted as ``UN`` (SV103 / SV204).
- service date: 2400 DTP*472 (D8, or the first day of RD8); for 837I, else 2300 DTP*434 when
  the statement covers a single day.
- line: the SV1 / SV2 segment's number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from services.billing.claims.model import (
    ClaimError,
    ClaimFormat,
    ccyymmdd,
    cpt_problem,
    modifiers_problem,
    whole_number,
)
from services.billing.claims.x12_segments import Delimiters, Segment
from services.billing.domain.reconcile import ClaimLine


@dataclass
class _Service:
    lx: Segment
    sv: Segment | None = None
    dtp: Segment | None = None


@dataclass
class _Claim:
    clm: Segment
    subscriber_id: str
    patient_id: str
    record_number: str = ""
    statement: Segment | None = None  # 837I DTP*434
    services: list[_Service] = field(default_factory=list)


def read(
    transaction: list[Segment],
    delimiters: Delimiters,
    kind: ClaimFormat,
    errors: list[ClaimError],
) -> list[ClaimLine]:
    institutional = kind == "x12-837i"
    out: list[ClaimLine] = []
    subscriber_id = patient_id = ""
    claim: _Claim | None = None
    service: _Service | None = None

    def close_claim() -> None:
        nonlocal claim, service
        if claim is not None:
            out.extend(_claim_lines(claim, delimiters, institutional, errors))
        claim = service = None

    for seg in transaction:
        sid = seg.id
        if sid == "HL":
            close_claim()
            level = seg.get(3)
            if level in ("20", "22"):
                subscriber_id = ""
            patient_id = ""
        elif sid == "NM1" and claim is None:
            if seg.get(1) == "IL":
                subscriber_id = seg.get(9)
            elif seg.get(1) == "QC":
                patient_id = seg.get(9)  # 4010 style; 5010 leaves 2010CA NM109 unused
        elif sid == "CLM":
            close_claim()
            claim = _Claim(seg, subscriber_id, patient_id)
        elif claim is None:
            continue
        elif sid == "LX":
            service = _Service(seg)
            claim.services.append(service)
        elif sid in ("SV1", "SV2") and service is not None:
            service.sv = seg
        elif sid == "DTP":
            if service is not None and seg.get(1) == "472":
                service.dtp = seg
            elif service is None and seg.get(1) == "434":
                claim.statement = seg
        elif sid == "REF" and service is None and seg.get(1) == "EA":
            claim.record_number = seg.get(2)
        elif sid == "SE":
            close_claim()
    close_claim()
    return out


def _claim_lines(
    claim: _Claim, delimiters: Delimiters, institutional: bool, errors: list[ClaimError]
) -> list[ClaimLine]:
    claim_id = claim.clm.get(1)
    patient_id = claim.record_number or claim.patient_id or claim.subscriber_id
    if not claim_id:
        errors.append(ClaimError(claim.clm.number, "CLM", "CLM01 claim id is empty"))
    if not patient_id:
        errors.append(
            ClaimError(
                claim.clm.number,
                "CLM",
                "no patient id: no REF*EA record number, NM1*QC or NM1*IL identifier",
            )
        )
    if not claim.services:
        errors.append(ClaimError(claim.clm.number, "CLM", "claim without service lines (LX)"))
    fallback = _statement_day(claim.statement) if institutional else None
    out = []
    for service in claim.services:
        line = _service_line(service, delimiters, institutional, fallback, errors)
        if line is not None and claim_id and patient_id:
            code, modifiers, units, day, number = line
            out.append(ClaimLine(claim_id, patient_id, day, code, modifiers, units, line=number))
    return out


def _service_line(
    service: _Service,
    delimiters: Delimiters,
    institutional: bool,
    fallback_day: date | None,
    errors: list[ClaimError],
) -> tuple[str, tuple[str, ...], int, date, int] | None:
    sv = service.sv
    name = "SV2" if institutional else "SV1"
    if sv is None:
        errors.append(ClaimError(service.lx.number, "LX", f"service line without {name}"))
        return None
    # SV1: 01 composite, 03 unit basis, 04 quantity. SV2: 02 composite, 04 basis, 05 quantity.
    composite_at, basis_at = (2, 4) if institutional else (1, 3)
    composite = sv.get(composite_at)
    if institutional and not composite:
        return None  # a revenue code alone (room, supplies): nothing to reconcile
    problems = []
    parts = composite.split(delimiters.component)
    qualifier = parts[0]
    code = parts[1].upper() if len(parts) > 1 else ""
    modifiers = tuple(m.upper() for m in parts[2:6] if m)
    where = f"{name}{composite_at:02d}"
    if qualifier != "HC":
        problems.append(f"{where}-1 {qualifier!r}: only HC (CPT/HCPCS) procedure codes")
    elif problem := cpt_problem(code):
        problems.append(f"{where}-2: {problem}")
    if problem := modifiers_problem(modifiers):
        problems.append(f"{where}-3..6: {problem}")
    basis, quantity = sv.get(basis_at), sv.get(basis_at + 1)
    if basis != "UN":
        problems.append(f"{name}{basis_at:02d} {basis!r}: units must be counted as UN")
    units = whole_number(quantity)
    if units is None:
        problems.append(f"{name}{basis_at + 1:02d} {quantity!r} is not a positive whole number")
    if problems:
        errors.extend(ClaimError(sv.number, name, p) for p in problems)

    day = _dtp_day(service.dtp) if service.dtp is not None else None
    if service.dtp is not None and day is None:
        errors.append(
            ClaimError(
                service.dtp.number,
                "DTP",
                f"DTP*472 service date {service.dtp.get(3)!r} is not a date",
            )
        )
    elif service.dtp is None:
        day = fallback_day
        if day is None:
            errors.append(
                ClaimError(
                    service.lx.number,
                    "LX",
                    "service line without DTP*472 service date"
                    + (" (and a statement period of more than one day)" if institutional else ""),
                )
            )
    if problems or day is None or units is None:
        return None
    return code, modifiers, units, day, sv.number


def _dtp_day(dtp: Segment) -> date | None:
    """D8 ``CCYYMMDD``, or the first day of RD8 ``CCYYMMDD-CCYYMMDD``."""
    qualifier, value = dtp.get(2), dtp.get(3)
    if qualifier == "D8" and len(value) == 8:
        return ccyymmdd(value)
    if qualifier == "RD8" and len(value) == 17 and value[8] == "-":
        start, end = ccyymmdd(value[:8]), ccyymmdd(value[9:])
        return start if start is not None and end is not None and start <= end else None
    return None


def _statement_day(dtp: Segment | None) -> date | None:
    """837I 2300 DTP*434: a service line may leave out DTP*472 when the statement period is a
    single day (005010X223A2, 2400 DTP*472 situational rule)."""
    if dtp is None:
        return None
    value = dtp.get(3)
    if dtp.get(2) == "D8":
        return ccyymmdd(value) if len(value) == 8 else None
    if dtp.get(2) == "RD8" and len(value) == 17 and value[:8] == value[9:]:
        return ccyymmdd(value[:8])
    return None
