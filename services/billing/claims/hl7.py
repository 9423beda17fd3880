"""Claim lines as HL7 v2 DFT^P03 (post detail financial transaction), read with hl7apy.

One claim line per FT1 segment:

| Field | Read as |
|---|---|
| FT1-4 transaction date | service date (the first 8 digits of the range's start) |
| FT1-6 transaction type | charges (CG, or empty) only; credits and payments refused |
| FT1-7 transaction code | CPT/HCPCS code (component 1); FT1-25 when FT1-7 is a chargemaster code |
| FT1-10 quantity | units (empty: 1) |
| FT1-26 procedure code modifiers | modifiers (component 1 of each repetition) |
| PID-3 | patient id (component 1 of the first repetition) |
| PV1-19 visit number, else MSH-10 | claim id |

A file may hold several messages (with or without FHS/BHS batch envelopes); segments are
separated by CR, LF or CRLF. ``line`` is the segment's line in the file.
"""

from __future__ import annotations

from dataclasses import dataclass

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from services.billing.claims.model import (
    ClaimError,
    ClaimFile,
    ccyymmdd,
    cpt_problem,
    modifiers_problem,
    whole_number,
)
from services.billing.domain.reconcile import ClaimLine

_BATCH_HEADERS = frozenset({"FHS", "BHS"})
_BATCH_TRAILERS = frozenset({"FTS", "BTS"})
_CHARGE_TYPES = frozenset({"", "CG"})


@dataclass
class _Message:
    lines: list[tuple[int, str]]  # (line in the file, segment text)


def parse_hl7(text: str) -> ClaimFile:
    errors: list[ClaimError] = []
    out: list[ClaimLine] = []
    for message in _split(text, errors):
        out.extend(_message_lines(message, errors))
    if not out and not errors:
        errors.append(ClaimError(1, "MSH", "no DFT^P03 message in the file"))
    return ClaimFile("hl7", lines=tuple(out), errors=tuple(errors))


def _split(text: str, errors: list[ClaimError]) -> list[_Message]:
    """Messages by MSH, batch envelopes checked (BTS-1: message count) and dropped."""
    messages: list[_Message] = []
    current: _Message | None = None
    in_batch = 0
    for number, raw in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        segment = raw.strip("\x0b\x1c \t")  # MLLP framing bytes left in a capture
        if not segment:
            continue
        name = segment[:3]
        if name == "MSH":
            current = _Message([(number, segment)])
            messages.append(current)
            in_batch += 1
        elif name in _BATCH_HEADERS:
            current = None
            if name == "BHS":
                in_batch = 0
        elif name in _BATCH_TRAILERS:
            current = None
            if name == "BTS":
                declared = segment[4:].split("|", 1)[0].strip()
                if declared and declared != str(in_batch):
                    reason = f"BTS-1 says {declared} messages, the batch has {in_batch}"
                    errors.append(ClaimError(number, "BTS", reason))
        elif current is None:
            errors.append(ClaimError(number, name, f"{name} segment outside a message (no MSH)"))
        else:
            current.lines.append((number, segment))
    return messages


def _message_lines(message: _Message, errors: list[ClaimError]) -> list[ClaimLine]:
    msh_line = message.lines[0][0]
    try:
        parsed = parse_message(
            "\r".join(s for _, s in message.lines),
            validation_level=VALIDATION_LEVEL.TOLERANT,
            find_groups=False,
        )
    except HL7apyException as exc:
        errors.append(ClaimError(msh_line, "MSH", f"unreadable HL7 message: {exc}"))
        return []
    enc = _Encoding(parsed)
    control_id = enc.first(parsed.msh, "MSH_10")
    kind = enc.text(parsed.msh, "MSH_9").split(enc.component)
    if kind[:2] != ["DFT", "P03"]:
        shown = "^".join(kind[:2])
        errors.append(ClaimError(msh_line, "MSH", f"MSH-9 {shown!r}: not a DFT^P03 message"))
        return []
    segments = list(parsed.children)
    numbers = [n for n, _ in message.lines]
    if len(segments) != len(numbers):  # hl7apy dropped or merged a segment: fall back to MSH
        numbers = [msh_line] * len(segments)

    patient_id = claim_id = ""
    pid_seen = found_ft1 = False
    out: list[ClaimLine] = []
    for number, segment in zip(numbers, segments, strict=True):
        if segment.name == "PID" and not pid_seen:
            pid_seen, patient_id = True, enc.first(segment, "PID_3")
            if not patient_id:
                errors.append(ClaimError(number, "PID", "PID-3 patient identifier is empty"))
        elif segment.name == "PV1" and not claim_id:
            claim_id = enc.first(segment, "PV1_19")
        elif segment.name == "FT1":
            if not pid_seen and not found_ft1:  # once per message
                errors.append(ClaimError(number, "FT1", "FT1 before any PID: no patient"))
            found_ft1 = True
            line = _ft1(number, segment, enc, claim_id or control_id, patient_id, errors)
            if line is not None:
                out.append(line)
    if not found_ft1:
        errors.append(
            ClaimError(msh_line, "MSH", f"message {control_id or '(no MSH-10)'} has no FT1 segment")
        )
    if not (claim_id or control_id):
        errors.append(ClaimError(msh_line, "MSH", "no claim id: PV1-19 and MSH-10 are empty"))
    return out


def _ft1(
    number: int,
    segment: Segment,
    enc: _Encoding,
    claim_id: str,
    patient_id: str,
    errors: list[ClaimError],
) -> ClaimLine | None:
    problems = []
    kind = enc.first(segment, "FT1_6").upper()
    if kind not in _CHARGE_TYPES:
        problems.append(f"FT1-6 transaction type {kind!r}: only charges (CG) are claim lines")
    raw_date = enc.first(segment, "FT1_4")
    day = ccyymmdd(raw_date)
    if day is None:
        problems.append(f"FT1-4 transaction date {raw_date!r} is not a date (YYYYMMDD...)")
    code = enc.first(segment, "FT1_7").upper()
    if cpt_problem(code) and not cpt_problem(alternative := enc.first(segment, "FT1_25").upper()):
        code = alternative  # FT1-7 held a chargemaster code, FT1-25 the CPT
    if problem := cpt_problem(code):
        problems.append(f"FT1-7 transaction code: {problem}")
    modifiers = tuple(m.upper() for m in enc.repetitions(segment, "FT1_26") if m)
    if problem := modifiers_problem(modifiers):
        problems.append(f"FT1-26: {problem}")
    quantity = enc.first(segment, "FT1_10")
    units = whole_number(quantity) if quantity else 1
    if units is None:
        problems.append(f"FT1-10 quantity {quantity!r} is not a positive whole number")
    errors.extend(ClaimError(number, "FT1", p) for p in problems)
    if problems or day is None or units is None or not patient_id or not claim_id:
        return None
    return ClaimLine(claim_id, patient_id, day, code, modifiers, units, line=number)


class _Encoding:
    """Component access by the message's own encoding characters (MSH-1, MSH-2)."""

    def __init__(self, message: Message) -> None:
        chars = message.encoding_chars
        self.component = chars["COMPONENT"]
        self.subcomponent = chars["SUBCOMPONENT"]

    def text(self, segment: Segment, field: str) -> str:
        found = segment.children.get(field)
        return found[0].to_er7() if found else ""

    def first(self, segment: Segment, field: str) -> str:
        """Component 1 of the field's first repetition."""
        return self._head(self.text(segment, field))

    def repetitions(self, segment: Segment, field: str) -> list[str]:
        return [self._head(f.to_er7()) for f in segment.children.get(field)]

    def _head(self, value: str) -> str:
        return value.split(self.component, 1)[0].split(self.subcomponent, 1)[0].strip()
