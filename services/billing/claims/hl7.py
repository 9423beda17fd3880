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

hl7apy reads each message's other segments; FT1 is cut by position with the encoding
characters hl7apy found in MSH (see ``_message_lines``). A file may hold several messages
(with or without FHS/BHS batch envelopes); segments are separated by CR, LF or CRLF. ``line``
is the segment's line in the file.
"""

from __future__ import annotations

import re
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
    """hl7apy parses the message without its FT1 segments (MSH, EVN, PID, PV1, ...: the
    version, the encoding characters, the identifiers); the FT1 segments, which make up nearly
    all of a large file, are cut with the same encoding characters (hl7apy builds an object per
    field and component, about 1.4 ms an FT1: minutes for 100,000 charges)."""
    msh_line = message.lines[0][0]
    others = [(n, s) for n, s in message.lines if not s.startswith("FT1")]
    try:
        parsed = parse_message(
            "\r".join(s for _, s in others),
            validation_level=VALIDATION_LEVEL.TOLERANT,
            find_groups=False,
        )
    except (HL7apyException, ValueError, IndexError) as exc:
        # hl7apy raises plain ValueError / IndexError on a damaged MSH (its encoding
        # characters cut short): the file is refused by line, never a 500.
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
    if len(segments) != len(others):  # hl7apy dropped or merged a segment
        errors.append(ClaimError(msh_line, "MSH", "hl7apy read the message's segments apart"))
        return []
    by_line = {n: seg for (n, _), seg in zip(others, segments, strict=True)}

    patient_id = claim_id = ""
    pid_seen = found_ft1 = False
    out: list[ClaimLine] = []
    for number, text in message.lines:
        segment = by_line.get(number)
        if segment is None:  # FT1
            if not pid_seen and not found_ft1:  # once per message
                errors.append(ClaimError(number, "FT1", "FT1 before any PID: no patient"))
            found_ft1 = True
            line = _ft1(number, enc.fields(text), enc, claim_id or control_id, patient_id, errors)
            if line is not None:
                out.append(line)
        elif segment.name == "PID" and not pid_seen:
            pid_seen, patient_id = True, enc.first(segment, "PID_3")
            if not patient_id:
                errors.append(ClaimError(number, "PID", "PID-3 patient identifier is empty"))
        elif segment.name == "PV1" and not claim_id:
            claim_id = enc.first(segment, "PV1_19")
    if not found_ft1:
        errors.append(
            ClaimError(msh_line, "MSH", f"message {control_id or '(no MSH-10)'} has no FT1 segment")
        )
    if not (claim_id or control_id):
        errors.append(ClaimError(msh_line, "MSH", "no claim id: PV1-19 and MSH-10 are empty"))
    return out


def _ft1(
    number: int,
    fields: list[str],
    enc: _Encoding,
    claim_id: str,
    patient_id: str,
    errors: list[ClaimError],
) -> ClaimLine | None:
    def first(n: int) -> str:
        return enc.head(fields[n]) if n < len(fields) else ""

    problems = []
    kind = first(6).upper()
    if kind not in _CHARGE_TYPES:
        problems.append(f"FT1-6 transaction type {kind!r}: only charges (CG) are claim lines")
    raw_date = first(4)
    day = ccyymmdd(raw_date)
    if day is None:
        problems.append(f"FT1-4 transaction date {raw_date!r} is not a date (YYYYMMDD...)")
    code = first(7).upper()
    if cpt_problem(code) and not cpt_problem(alternative := first(25).upper()):
        code = alternative  # FT1-7 held a chargemaster code, FT1-25 the CPT
    if problem := cpt_problem(code):
        problems.append(f"FT1-7 transaction code: {problem}")
    repeated = fields[26].split(enc.repetition) if len(fields) > 26 else []
    modifiers = tuple(m for m in (enc.head(r).upper() for r in repeated) if m)
    if problem := modifiers_problem(modifiers):
        problems.append(f"FT1-26: {problem}")
    quantity = first(10)
    units = whole_number(quantity) if quantity else 1
    if units is None:
        problems.append(f"FT1-10 quantity {quantity!r} is not a positive whole number")
    if problems:
        errors.extend(ClaimError(number, "FT1", p) for p in problems)
    if problems or day is None or units is None or not patient_id or not claim_id:
        return None
    return ClaimLine(claim_id, patient_id, day, code, modifiers, units, line=number)


class _Encoding:
    """Component access by the message's own encoding characters (MSH-1, MSH-2)."""

    def __init__(self, message: Message) -> None:
        chars = message.encoding_chars
        self.field = chars["FIELD"]
        self.component = chars["COMPONENT"]
        self.repetition = chars["REPETITION"]
        self.subcomponent = chars["SUBCOMPONENT"]
        self.escape = chars["ESCAPE"]
        self._delimiters = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
        }
        esc = re.escape(self.escape)
        self._sequence = re.compile(f"{esc}([^{esc}]*){esc}")

    def text(self, segment: Segment, field: str) -> str:
        found = segment.children.get(field)
        return found[0].to_er7() if found else ""

    def first(self, segment: Segment, field: str) -> str:
        """Component 1 of the field's first repetition."""
        return self.head(self.text(segment, field))

    def fields(self, segment: str) -> list[str]:
        """A segment's fields by position: ``fields[4]`` is FT1-4 (not for MSH)."""
        return segment.split(self.field)

    def head(self, value: str) -> str:
        """Component 1 (subcomponent 1) of a field's first repetition, unescaped."""
        value = value.split(self.repetition, 1)[0]
        return self.unescape(
            value.split(self.component, 1)[0].split(self.subcomponent, 1)[0].strip()
        )

    def unescape(self, value: str) -> str:
        """HL7 v2.5 s. 2.7: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ back to the message's delimiters,
        \\Xhh\\ to its characters; formatting sequences (\\H\\, \\N\\, ...) carry no text."""
        if self.escape not in value:
            return value
        return self._sequence.sub(self._unescaped, value)

    def _unescaped(self, match: re.Match[str]) -> str:
        code = match.group(1)
        if code.upper().startswith("X"):
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                return ""
        return self._delimiters.get(code, "")
