"""A structure-aware mutator for DICOM data sets (atheris ``custom_mutator``).

Byte-level mutations rarely get past a data set's first element header: most of them make
the lengths disagree and pydicom stops there. This one parses the element headers (top level
and inside sequence items, PS3.5 7.1 and 7.5) and mutates within that structure: a tag, a VR
code, a length field, a value (with the lengths of the enclosing items and sequences kept
right), an element repeated, removed, moved out of order or copied into another item. A
quarter of the time it leaves the input to libFuzzer's own byte mutations.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_dict

from tests.fuzz.harness import TRANSFER_SYNTAXES, decode_input

# PS3.5 7.1.2: explicit VRs with a reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_VRS = (
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV"
).split()
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Tags the readers look at (and a few neighbours): mutating a tag into one of these reaches
# the extractors' code rather than an element nobody reads.
_READ_KEYWORDS = [
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "IssuerOfPatientID",
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BeamSequence",
    "IonBeamSequence",
    "ControlPointSequence",
    "FractionGroupSequence",
    "ReferencedBeamSequence",
    "DoseReferenceSequence",
    "TreatmentSessionBeamSequence",
    "ControlPointDeliverySequence",
    "ReferencedRTPlanSequence",
    "RegistrationSequence",
    "MatrixRegistrationSequence",
    "MatrixSequence",
    "FrameOfReferenceTransformationMatrix",
    "DeformableRegistrationSequence",
    "TreatmentDate",
    "TreatmentTime",
    "TimezoneOffsetFromUTC",
    "NumberOfFractionsPlanned",
    "BeamMeterset",
    "LeafJawPositions",
    "OverrideSequence",
    "OverrideParameterPointer",
    "ImageType",
    "AcquisitionDate",
    "AcquisitionTime",
    "ApprovalStatus",
    "ReviewDate",
    "ReviewTime",
    "FractionNumber",
    "EncapsulatedDocument",
    "DocumentTitle",
    "ReferencedInstanceSequence",
    "SourceInstanceSequence",
    "FractionGroupSummarySequence",
    "FractionStatusSummarySequence",
    "RecordedSourceSequence",
    "TreatmentSessionApplicationSetupSequence",
    "RecordedChannelSequence",
    "SpecificCharacterSet",
]
_READ_TAGS = tuple(keyword_dict[k] for k in _READ_KEYWORDS)
_INTERESTING_LENGTHS = (0, 1, 2, 7, 8, 16, 17, 64, 65, 0xFFFE, 0xFFFF, 0x7FFFFFFF, _UNDEFINED)


@dataclass
class Span:
    """One element (or item) as laid out in the bytes."""

    start: int  # first byte of its header
    header: int  # header size in bytes
    tag: int
    vr: bytes | None  # None: implicit VR, or an item / delimiter
    length: int  # as the header says (may be undefined)
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4 bytes
    end: int  # first byte after the element (its delimiter included when undefined)
    parents: tuple[Span, ...]  # enclosing sequences and items, outermost first

    @property
    def value_start(self) -> int:
        return self.start + self.header


def parse(body: bytes, *, implicit: bool, little: bool) -> list[Span]:
    """Every element and item header found, depth first; stops quietly where the bytes stop
    making sense (a mutated input often ends in garbage)."""
    out: list[Span] = []
    _parse_elements(body, 0, len(body), implicit, "<" if little else ">", (), out, 0)
    return out


def _parse_elements(
    body: bytes,
    pos: int,
    end: int,
    implicit: bool,
    order: str,
    parents: tuple[Span, ...],
    out: list[Span],
    depth: int,
) -> int:
    while pos + 8 <= end and depth < 12:
        group, elem = struct.unpack_from(order + "HH", body, pos)
        tag = group << 16 | elem
        if tag in (_ITEM_END, _SEQ_END):
            return pos + 8
        if implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(order + "L", body, pos + 4)
            vr, header, length_at, size = None, 8, pos + 4, 4
        else:
            vr = bytes(body[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return end
                (length,) = struct.unpack_from(order + "L", body, pos + 8)
                header, length_at, size = 12, pos + 8, 4
            else:
                (length,) = struct.unpack_from(order + "H", body, pos + 6)
                header, length_at, size = 8, pos + 6, 2
        span = Span(pos, header, tag, vr, length, length_at, size, 0, parents)
        out.append(span)
        value = pos + header
        if _is_sequence(tag, vr, length):
            stop = end if length == _UNDEFINED else min(end, value + length)
            span.end = _parse_items(
                body, value, stop, implicit, order, (*parents, span), out, depth
            )
            if length != _UNDEFINED:
                span.end = value + length
        elif length == _UNDEFINED:
            return end  # encapsulated or broken: not worth following
        else:
            span.end = value + length
        pos = span.end
    return end if depth >= 12 else pos


def _parse_items(
    body: bytes,
    pos: int,
    end: int,
    implicit: bool,
    order: str,
    parents: tuple[Span, ...],
    out: list[Span],
    depth: int,
) -> int:
    while pos + 8 <= end:
        group, elem = struct.unpack_from(order + "HH", body, pos)
        tag = group << 16 | elem
        (length,) = struct.unpack_from(order + "L", body, pos + 4)
        if tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM:
            return end
        item = Span(pos, 8, tag, None, length, pos + 4, 4, 0, parents)
        out.append(item)
        stop = end if length == _UNDEFINED else min(end, pos + 8 + length)
        item_end = _parse_elements(
            body, pos + 8, stop, implicit, order, (*parents, item), out, depth + 1
        )
        item.end = item_end if length == _UNDEFINED else pos + 8 + length
        pos = item.end
    return pos


def _is_sequence(tag: int, vr: bytes | None, length: int) -> bool:
    if vr is not None:
        return vr == b"SQ"
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return length == _UNDEFINED and tag != 0x7FE00010


# ---------------------------------------------------------------- edits


def _set_length(buf: bytearray, span: Span, value: int, order: str) -> None:
    fmt = order + ("L" if span.length_size == 4 else "H")
    struct.pack_into(
        fmt, buf, span.length_at, value & (0xFFFFFFFF if span.length_size == 4 else 0xFFFF)
    )


def _resize(buf: bytearray, at: int, old: int, new: bytes, span: Span, order: str) -> None:
    """Replace ``old`` bytes at ``at`` by ``new`` and keep every defined length around it
    (the element's own when the edit is inside its value, and its parents') right."""
    delta = len(new) - old
    buf[at : at + old] = new
    for parent in span.parents:
        if parent.length != _UNDEFINED:
            _set_length(buf, parent, parent.length + delta, order)


def _choose(rng: random.Random, spans: list[Span], *, elements_only: bool = False) -> Span | None:
    pool = [s for s in spans if not elements_only or s.tag != _ITEM]
    return rng.choice(pool) if pool else None


def _mutate_structure(body: bytes, rng: random.Random, implicit: bool, order: str) -> bytes:
    spans = parse(body, implicit=implicit, little=order == "<")
    span = _choose(rng, spans)
    if span is None:
        return body
    buf = bytearray(body)
    whole = body[span.start : span.end] if span.end > span.start else b""
    kind = rng.randrange(10)
    if kind == 0:  # a length field
        length = rng.choice(
            (*_INTERESTING_LENGTHS, span.length + 1, span.length - 1, span.length * 2)
        )
        _set_length(buf, span, length, order)
    elif kind == 1 and span.vr is not None:  # a VR code
        vr = rng.choice((*_VRS, b"LG", b"UM", b"\0\0", b"sq"))
        buf[span.start + 4 : span.start + 6] = vr
    elif kind == 2 and span.tag != _ITEM:  # a tag: a neighbour or one the readers read
        tag = rng.choice((span.tag + 1, span.tag - 1, rng.choice(_READ_TAGS), span.tag ^ 0x10000))
        struct.pack_into(order + "HH", buf, span.start, (tag >> 16) & 0xFFFF, tag & 0xFFFF)
    elif kind == 3 and whole:  # repeated
        _resize(buf, span.end, 0, whole, span, order)
    elif kind == 4 and whole:  # removed
        _resize(buf, span.start, len(whole), b"", span, order)
    elif kind == 5 and whole:  # moved behind its next sibling: out of order
        sibling = next(
            (s for s in spans if s.start == span.end and s.parents == span.parents), None
        )
        if sibling is not None and sibling.end > sibling.start:
            buf[span.start : sibling.end] = body[sibling.start : sibling.end] + whole
    elif kind == 6 and whole:  # copied into another item (or the top level)
        target = _choose(rng, [s for s in spans if s.tag == _ITEM]) or span
        at = target.value_start if target.tag == _ITEM else span.end
        _resize(buf, at, 0, whole, target if target.tag == _ITEM else span, order)
        if target.tag == _ITEM and target.length != _UNDEFINED:
            _set_length(buf, target, target.length + len(whole), order)
    elif kind in (7, 8) and span.tag != _ITEM and span.length != _UNDEFINED:
        value = body[span.value_start : span.value_start + span.length]
        new = _new_value(value, rng)
        if span.length_size == 2 and len(new) > 0xFFFF:
            new = new[:0xFFFF]
        _resize(buf, span.value_start, len(value), new, span, order)
        _set_length(buf, span, len(new), order)
    else:  # an over-long value for its VR
        if span.tag != _ITEM and span.length != _UNDEFINED:
            value = body[span.value_start : span.value_start + span.length]
            most = 0xFFFF if span.length_size == 2 else 200_000
            unit = value or b"1"
            # no more copies than the cut keeps: 1025 of a 256 KB value were 262 MB
            new = (unit * min(rng.choice((2, 17, 65, 1025)), most // len(unit) + 1))[:most]
            _resize(buf, span.value_start, len(value), new, span, order)
            _set_length(buf, span, len(new), order)
    return bytes(buf)


_byte_mutate: Callable[[bytes, int], bytes] | None = None


def _new_value(value: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:
        return b""
    if choice == 1:
        return value + b"\\" + value
    if choice == 2:
        return rng.choice((b"1e400", b"nan", b"-0", b"99999999999999999999", b"\xff\xfe", b" "))
    if choice == 3:
        return rng.randbytes(rng.randrange(1, 40))
    if _byte_mutate is not None:
        return _byte_mutate(value, max(16, len(value) * 2))
    return bytes(b ^ 0x20 for b in value)


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    """atheris custom mutator: a structure edit three times out of four, else libFuzzer's."""
    global _byte_mutate
    import atheris

    _byte_mutate = atheris.Mutate
    rng = random.Random(seed)
    if not data or rng.random() < 0.25:
        return atheris.Mutate(data, max_size)
    _, syntax, body = decode_input(data)
    implicit = syntax == TRANSFER_SYNTAXES[1]
    order = ">" if syntax == TRANSFER_SYNTAXES[2] else "<"
    out = data[:1]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        body = _mutate_structure(body, rng, implicit, order)
    out += body
    if rng.random() < 0.02:  # another SOP class or transfer syntax for the same bytes
        out = bytes([rng.randrange(256)]) + out[1:]
    return out[:max_size]
