"""Claim lines as CSV: ``claim_id,patient_id,service_date,cpt,modifiers,units``.

The header names the columns; their order is free and further columns are ignored. Modifiers
are separated by ``:`` or spaces (``26:59``, ``26 59``, empty). Units are a positive integer,
the service date is ISO (YYYY-MM-DD). Every bad row is reported with its line number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from services.billing.claims.model import (
    ClaimError,
    ClaimFile,
    cpt_problem,
    iso_date,
    modifiers_problem,
    positive_int,
)
from services.billing.domain.reconcile import ClaimLine

COLUMNS = ("claim_id", "patient_id", "service_date", "cpt", "modifiers", "units")
_MODIFIER_SEPARATORS = str.maketrans({":": " "})


def looks_like_csv_header(first_line: str) -> bool:
    """Detection: the first line names at least ``claim_id`` and ``cpt``."""
    names = {name.strip().lower() for name in first_line.split(",")}
    return "claim_id" in names and "cpt" in names


def parse_csv(text: str) -> ClaimFile:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    errors: list[ClaimError] = []
    lines: list[ClaimLine] = []
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return ClaimFile("csv", errors=(ClaimError(1, None, f"header: {exc}"),))
    if header is None:
        return ClaimFile("csv", errors=(ClaimError(1, None, "empty file: no header"),))
    names = [name.strip().lower() for name in header]
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    missing = [c for c in COLUMNS if c not in names]
    doubled = sorted({n for n in names if n in COLUMNS and names.count(n) > 1})
    if missing or doubled:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if doubled:
            problems.append(f"repeated column(s) {', '.join(doubled)}")
        expected = ",".join(COLUMNS)
        reason = f"header: {'; '.join(problems)} (expected {expected})"
        return ClaimFile("csv", errors=(ClaimError(1, None, reason),))
    index = [names.index(c) for c in COLUMNS]
    width = len(names)

    row_start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(ClaimError(row_start, None, f"unreadable row: {exc}"))
            row_start = reader.line_num + 1
            continue
        number, row_start = row_start, reader.line_num + 1
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != width:
            short = [COLUMNS[i] for i, at in enumerate(index) if at >= len(row)]
            reason = (
                f"missing column(s) {', '.join(short)}: {len(row)} fields, header has {width}"
                if short
                else f"{len(row)} fields, header has {width}"
            )
            errors.append(ClaimError(number, None, reason))
            continue
        line, problems = _row(number, [row[i].strip() for i in index])
        errors.extend(ClaimError(number, None, p) for p in problems)
        if line is not None:
            lines.append(line)
    return ClaimFile("csv", lines=tuple(lines), errors=tuple(errors))


def _row(number: int, values: list[str]) -> tuple[ClaimLine | None, list[str]]:
    claim_id, patient_id, service_date, cpt, modifier_text, units_text = values
    problems = []
    if not claim_id:
        problems.append("claim_id: empty")
    if not patient_id:
        problems.append("patient_id: empty")
    day = iso_date(service_date)
    if day is None:
        problems.append(f"service_date: {service_date!r} is not a date (YYYY-MM-DD)")
    code = cpt.upper()
    if problem := cpt_problem(code):
        problems.append(f"cpt: {problem}")
    modifiers = tuple(modifier_text.upper().translate(_MODIFIER_SEPARATORS).split())
    if problem := modifiers_problem(modifiers):
        problems.append(f"modifiers: {problem}")
    units = positive_int(units_text)
    if units is None:
        problems.append(f"units: {units_text!r} is not a positive integer")
    if problems or day is None or units is None:
        return None, problems
    return ClaimLine(claim_id, patient_id, day, code, modifiers, units, line=number), []


def write_csv(lines: Iterable[ClaimLine]) -> str:
    """The CSV this module reads (export, and the round-trip property)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for line in lines:
        writer.writerow(
            (
                line.claim_id,
                line.patient_id,
                line.service_date.isoformat(),
                line.cpt,
                ":".join(line.modifiers),
                line.units,
            )
        )
    return out.getvalue()
