"""X12 segments cut with the delimiters the ISA segment declares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from services.billing.claims.model import ClaimError

ISA_LENGTH = 106


class Segment(NamedTuple):  # a tuple: cheap to build for each of 500,000 segments
    number: int  # 1-based position in the file (ISA = 1), as pyx12 counts
    id: str
    elements: list[str]  # elements[1] is XX01

    def get(self, position: int) -> str:
        return self.elements[position] if position < len(self.elements) else ""


@dataclass(frozen=True)
class Delimiters:
    element: str
    component: str
    repetition: str
    segment: str


def tokenize(text: str, errors: list[ClaimError]) -> tuple[Delimiters, list[Segment]] | None:
    """Segments cut with the delimiters of the ISA segment itself: the element separator is
    its 4th character, the component separator ISA16 and the segment terminator the character
    after it; the repetition separator is ISA11 (5010)."""
    if not text.startswith("ISA") or len(text) < 4:
        errors.append(ClaimError(1, None, "not an X12 interchange: no ISA segment"))
        return None
    element = text[3]
    at = -1
    for _ in range(16):
        at = text.find(element, at + 1)
        if at < 0:
            break
    if at < 0 or at + 2 >= len(text):
        errors.append(ClaimError(1, "ISA", "ISA segment incomplete: 16 elements expected"))
        return None
    component, terminator = text[at + 1], text[at + 2]
    isa_elements = text[: at + 2].split(element)
    repetition = isa_elements[11] if isa_elements[12] == "00501" else ""
    used = [element, component, terminator] + ([repetition] if repetition else [])
    if len(set(used)) != len(used) or any(c.isalnum() for c in used):
        errors.append(
            ClaimError(1, "ISA", f"ISA delimiters {used!r} are not distinct special characters")
        )
        return None
    if at + 3 != ISA_LENGTH:
        errors.append(
            ClaimError(1, "ISA", f"ISA segment is {at + 3} characters; 106 (fixed width) expected")
        )
    delimiters = Delimiters(element, component, repetition, terminator)

    segments: list[Segment] = []
    pieces = text.split(terminator)
    if pieces and not pieces[-1].strip():
        pieces.pop()
    for number, piece in enumerate(pieces, 1):
        raw = piece.strip("\r\n")
        if not raw:
            errors.append(ClaimError(number, None, "empty segment (two segment terminators)"))
            continue
        elements = raw.split(element)
        seg_id = elements[0]
        if not (2 <= len(seg_id) <= 3 and seg_id.isascii() and seg_id.isalnum()) or (
            seg_id != seg_id.upper()
        ):
            errors.append(ClaimError(number, None, f"{seg_id[:20]!r} is not a segment id"))
            continue
        segments.append(Segment(number, seg_id, elements))
    return delimiters, segments
