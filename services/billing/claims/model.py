"""What the claim-file parsers return, and the checks every format shares.

Every parser reduces its format to :class:`ClaimLine` (the reconciliation's own type), to
:class:`RemittanceLine` for an 835, and to :class:`ClaimError` for whatever it could not read.
A file with any error is rejected whole by the caller, so the parsers go on after an error and
report every one they find.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal

from services.billing.domain.reconcile import ClaimLine

ClaimFormat = Literal["csv", "hl7", "x12-837p", "x12-837i", "x12-835", "unknown"]

# CPT and HCPCS allow at most four modifiers per line (CMS-1500 box 24D, 837P SV101-3..6).
MAX_MODIFIERS = 4
_DIGITS = frozenset("0123456789")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HCPCS_LETTERS = frozenset("ABCDEFGHJKLMPQRSTUV")  # HCPCS Level II sections (no I, N, O, W-Z)
_MODIFIER_CHARS = _DIGITS | _UPPER


@dataclass(frozen=True)
class ClaimError:
    """``line``: the 1-based line (CSV, HL7) or segment number (X12) the error is about; 1 for
    an error about the whole file. ``segment``: the HL7/X12 segment id, None for CSV."""

    line: int
    segment: str | None
    reason: str


@dataclass(frozen=True)
class Adjustment:
    """One CAS reason of an 835: group (CO, PR, OA, PI, CR), CARC reason code, amount and
    the quantity (units) it adjusts, when the payer states one."""

    group: str
    reason: str
    amount: Decimal
    quantity: Decimal | None = None


@dataclass(frozen=True)
class RemittanceLine:
    """A service line of an 835 that the payer denied or adjusted (lines paid in full with
    no adjustment are left out). ``line`` is the SVC segment's number in the file."""

    claim_id: str  # CLP01: the patient control number we sent as CLM01
    claim_status: str  # CLP02: 1-3 processed, 4 denied, 22 reversal, ...
    patient_id: str
    cpt: str
    modifiers: tuple[str, ...]
    service_date: date
    charged_amount: Decimal
    paid_amount: Decimal
    paid_units: int
    billed_units: int
    adjustments: tuple[Adjustment, ...]  # line-level CAS (loop 2110)
    claim_adjustments: tuple[Adjustment, ...] = ()  # claim-level CAS (loop 2100)
    remark_codes: tuple[str, ...] = ()  # LQ*HE remittance advice remark codes
    payer_claim_id: str = ""  # CLP07
    line: int | None = None

    @property
    def denied(self) -> bool:
        return self.claim_status == "4" or (self.paid_amount == 0 and self.charged_amount > 0)


@dataclass(frozen=True)
class ClaimFile:
    format: ClaimFormat
    lines: tuple[ClaimLine, ...] = ()
    remittances: tuple[RemittanceLine, ...] = ()
    errors: tuple[ClaimError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


# ---------------------------------------------------------------- shared checks
# Plain character tests, no regular expressions: they run once per line of 100,000-line files.


def cpt_problem(code: str) -> str | None:
    """None when ``code`` has the shape of a CPT or HCPCS code: 5 digits (CPT Category I),
    4 digits + F or T (Category II / III), or a HCPCS Level II letter + 4 digits (G6015).
    Whether the rules know the code is the reconciliation's question (``unknown_code``)."""
    if len(code) != 5:
        return f"{code!r} is not a CPT/HCPCS code (5 characters: 77412, G6015, 0394T)"
    head, tail = code[0], code[1:]
    if set(code) <= _DIGITS:
        return None
    if head in _HCPCS_LETTERS and set(tail) <= _DIGITS:
        return None
    if set(code[:4]) <= _DIGITS and code[4] in "FT":
        return None
    return f"{code!r} is not a CPT/HCPCS code (5 characters: 77412, G6015, 0394T)"


def modifiers_problem(modifiers: tuple[str, ...]) -> str | None:
    bad = [m for m in modifiers if len(m) != 2 or not set(m) <= _MODIFIER_CHARS]
    if bad:
        return f"modifier {bad[0]!r} is not 2 letters or digits (26, TC, 59, XS)"
    if len(modifiers) > MAX_MODIFIERS:
        return f"{len(modifiers)} modifiers: at most {MAX_MODIFIERS} per line"
    return None


def positive_int(text: str) -> int | None:
    """A plain positive integer (``"3"``, ``"03"``): no sign, no underscore, no decimals."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def whole_number(text: str, *, minimum: int = 1) -> int | None:
    """An X12 ``R`` or HL7 ``NM`` quantity that is a whole number (``"2"``, ``"2.0"``)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite() or value != value.to_integral_value() or value < minimum:
        return None
    return int(value)


def decimal_or_none(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def ccyymmdd(text: str) -> date | None:
    """A date written CCYYMMDD (X12 D8, the date part of an HL7 DTM)."""
    if len(text) < 8 or not text[:8].isascii() or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def iso_date(text: str) -> date | None:
    """Exactly YYYY-MM-DD (``date.fromisoformat`` alone also takes 20260105 and 2026-W02-1)."""
    if len(text) != 10 or text[4] != "-" or text[7] != "-" or not text.isascii():
        return None
    if not (text[:4] + text[5:7] + text[8:]).isdigit():
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None
