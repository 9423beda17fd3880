"""A header-only walk over a received data set, before pydicom decodes any of it.

pydicom decodes an undefined-length sequence whole as it reads the file, and ``read_header``
then decodes every other sequence: 64 MB of small sequence items became 2.7 GB of Python
objects (and a minute of CPU). This walk reads element headers only, never a value inside a
sequence, in constant memory, and refuses before anything is decoded:

* sequences whose items and elements together pass ``MAX_SEQUENCE_ELEMENTS`` (the decoding
  budget), or that nest deeper than the SCP's depth bound;
* inside sequence items what ``check_structure`` refuses at the top level: tags out of order
  or repeated (PS3.5 7.1: ascending, each once), VR codes that do not exist and VRs that
  contradict the data dictionary (PS3.5 6.2);
* a single-valued element longer than any value of its VR can be (PS3.5 6.2, Table 6.2-1:
  more than four bytes, UTF-8's widest, per character the VR allows);
* items and values that overrun the sequence or item that holds them, delimiters out of
  place, a data set that ends inside an undefined-length sequence.

Every refusal is a ``ValueError`` (or ``EOFError``) whose message ``read_header`` passes on.

Asked to (``top``), it also keeps the top-level elements with their plain values, from which
``read_header`` builds the data set instead of having pydicom read the file a second time
(that second read was half of the header's cost: 0.6 of 1.5 ms for a CBCT slice here).
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.tag import Tag
from pydicom.valuerep import VR

# About 350 bytes of Python objects per decoded item or element (measured: 7.5 million of
# them took 2.6 GB), so this bounds decoding to about 50 MB. Real objects stay far below it:
# the largest sample here, a 2 MB structure set, has 2,200 elements; a 9-field IMRT plan of
# 100 segments about 30,000.
MAX_SEQUENCE_ELEMENTS = 150_000
# A deflated data set is inflated whole by pydicom: bound what it may inflate to.
MAX_INFLATED_BYTES = 64 * 1024 * 1024

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005  # Specific Character Set: pydicom never defers it
# PS3.5 6.2: the two-letter VR codes (pydicom's ambiguous "US or SS" forms are not codes).
VR_CODES = frozenset(v.value for v in VR if " " not in v.value)
# PS3.5 7.1.2: these explicit VRs have a 2-byte reserved field and a 4-byte length.
LONG_HEADER_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
# PS3.5 6.2, Table 6.2-1: the longest value of each string VR, in characters (PN: three
# component groups of 64 and their two separators).
MAX_CHARACTERS = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 3 * 64 + 2,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
}
_BYTES_PER_CHARACTER = 4  # UTF-8's widest; ISO 2022 and GB18030 stay within it too


# PS3.5 6.2, Table 6.2-1: binary VRs whose values have a fixed width; a length that is not a
# multiple of it cannot be decoded (pydicom raises BytesLengthException when it is read).
VALUE_WIDTHS = {
    "AT": 4, "FD": 8, "FL": 4, "OD": 8, "OF": 4, "OL": 4, "OV": 8, "OW": 2,
    "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8,
}  # fmt: skip


@functools.cache
def _value_width(vr: str) -> int | None:
    """The width every reading of ``vr`` shares ("US or SS": 2); None if they differ."""
    widths = {VALUE_WIDTHS.get(v) for v in vr.split(" or ")}
    return widths.pop() if len(widths) == 1 else None


def check_value_length(tag: int, vr: str | None, length: int) -> None:
    """Refuse a value whose length no value of its VR can have: a single-valued string
    longer than its VR allows, or binary values that do not fill a whole number of values."""
    if vr is None or length == _UNDEFINED:
        return
    width = _value_width(vr)
    if width is not None and length % width:
        raise ValueError(
            f"element {Tag(tag)} is {length:,} bytes long; values of VR {vr} are {width} "
            "bytes each (PS3.5 6.2)"
        )
    most = MAX_CHARACTERS.get(vr)
    if most is None or length <= most * _BYTES_PER_CHARACTER or length == _UNDEFINED:
        return
    if not _single_valued(tag):
        return
    raise ValueError(
        f"element {Tag(tag)} is {length:,} bytes long; a value of VR {vr} holds at most "
        f"{MAX_CHARACTERS[vr]} characters (PS3.5 6.2)"
    )


@functools.cache
def _single_valued(tag: int) -> bool:
    if Tag(tag).is_private:
        # a private creator (gggg,0010-00FF) is one LO (PS3.5 7.8.1); others are unknown
        return 0x10 <= (tag & 0xFFFF) <= 0xFF
    try:
        return dictionary_VM(tag) == "1"
    except KeyError:
        return False


def check_vr(tag: int, vr: str) -> None:
    problem = _vr_problem(tag, vr)
    if problem is not None:
        raise ValueError(problem)


@functools.cache  # a few hundred distinct (tag, VR) pairs in a department's traffic
def _vr_problem(tag: int, vr: str) -> str | None:
    if vr not in VR_CODES:
        return f"element {Tag(tag)} has VR {vr!r}, which is not a DICOM VR"
    if vr == "UN" or Tag(tag).is_private or Tag(tag).element == 0:
        return None
    try:
        allowed = dictionary_VR(tag)
    except KeyError:  # not in the dictionary (a newer or retired public tag)
        return None
    if vr not in allowed.split(" or "):
        return f"element {Tag(tag)} has VR {vr}, but the data dictionary says {allowed}"
    return None


def is_sequence(tag: int, vr: str | None, length: int) -> bool:
    if vr is not None:
        return vr == "SQ"
    known = _dictionary_vr(tag)
    if known is not None:  # implicit VR: the data dictionary knows public tags
        return known == "SQ"
    # private or unknown: undefined length means a sequence
    return length == _UNDEFINED and tag != _PIXEL_DATA


class TooDeep(ValueError):
    """Sequences nested deeper than the bound."""


# ---------------------------------------------------------------- the walk


_SMALL_READ = 64 * 1024


class _Reader:
    """Forward-only bytes of the data set: the file, or its inflated stream (PS3.5 A.5)."""

    def __init__(self, fp: BinaryIO, deflated: bool) -> None:
        self._fp = fp
        self.size = os.fstat(fp.fileno()).st_size
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self._buffer = b""
        self.inflated = 0

    def read(self, n: int) -> bytes:
        if self._inflater is None:
            if n > _SMALL_READ:
                # a length field near 4 GB on a short file: read(n) would ask for n bytes
                # before it finds the file short (the fuzzer's OOM, a Specific Character Set)
                n = min(n, self.size - self._fp.tell())
            return self._fp.read(n)
        while len(self._buffer) < n:
            chunk = self._inflater.unconsumed_tail or self._fp.read(65536)
            if not chunk:
                self._buffer += self._inflater.flush()
                break
            more = self._inflater.decompress(chunk, 1 << 20)
            self.inflated += len(more)
            if self.inflated > MAX_INFLATED_BYTES:
                raise ValueError(
                    f"the deflated data set inflates to more than {MAX_INFLATED_BYTES:,} bytes"
                )
            self._buffer += more
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def skip(self, n: int) -> int:
        """Skip ``n`` bytes; how many there were."""
        if self._inflater is None:
            end = self._fp.seek(n, 1)
            if end <= self.size:
                return n
            self._fp.seek(self.size)
            return n - (end - self.size)
        skipped = 0
        while skipped < n:
            got = len(self.read(min(n - skipped, 1 << 20)))
            if not got:
                break
            skipped += got
        return skipped


class TopElement(NamedTuple):
    """A top-level element as the walk found it, for ``readers.read_header`` to build the
    data set from without reading the file a second time. Offsets count from the start of the
    data set. ``value`` is the value's bytes when the walk read them (a defined-length value
    that is not a sequence, at most ``keep`` bytes long); ``None`` otherwise."""

    tag: int
    vr: str | None  # None: implicit VR
    length: int
    header_at: int
    value_at: int
    value: bytes | None


@dataclass
class _Frame:
    kind: str  # "data" (top level or an item), "sequence", "fragments"
    tag: int  # the sequence's tag (0 at the top level)
    end: int | None  # byte offset where a defined length ends it
    depth: int  # sequence nesting level of its elements
    implicit: bool
    previous: int = -1  # last element tag seen in a data frame


def walk(
    fp: BinaryIO,
    *,
    implicit: bool,
    little: bool,
    deflated: bool,
    max_depth: int,
    budget: int = MAX_SEQUENCE_ELEMENTS,
    top: list[TopElement] | None = None,
    keep: int = 0,
) -> int:
    """Walk the data set from ``fp``'s position to the end of the file; returns how many
    items and elements its sequences hold. Raises ``ValueError`` / ``EOFError``.

    ``top``: collect the top-level elements there, reading each plain value of at most
    ``keep`` bytes instead of skipping it. The walk then also refuses what ``check_structure``
    and ``check_complete`` would have refused at the top level (tags out of order or
    repeated, bytes after the last element); not for a deflated data set."""
    order = "<" if little else ">"
    reader = _Reader(fp, deflated)
    stack = [_Frame("data", 0, None, 0, implicit)]
    pos = nested = 0
    while True:
        frame = stack[-1]
        if frame.end is not None and pos >= frame.end:
            if pos > frame.end:
                raise ValueError(
                    f"an element overruns the end of {_where(frame)} at byte {frame.end}"
                )
            stack.pop()
            continue
        head = reader.read(8)
        if not head:
            if len(stack) == 1:
                return nested
            raise EOFError(f"the data set ends inside {_where(frame)}: it is truncated")
        if len(head) < 8:
            if len(stack) > 1:
                raise EOFError(f"the data set ends inside {_where(frame)}: it is truncated")
            if top is None:
                return nested  # check_complete tells a cut element from trailing bytes
            raise EOFError(ends_early_or_late(fp.tell() - len(head), reader.size))
        group, element, length = struct.unpack(order + "HHL", head)
        tag = group << 16 | element
        if pos == 0:
            _check_encoding(head, implicit)
        header_at = pos
        pos += 8
        if frame.kind in ("sequence", "fragments"):
            if tag == _SEQUENCE_END:
                if frame.end is not None:
                    raise ValueError(f"a sequence delimiter inside {_where(frame)}")
                stack.pop()
                continue
            if tag != _ITEM:
                raise ValueError(f"{_where(frame)} holds {Tag(tag)} where an item belongs")
            if frame.kind == "fragments":
                if length == _UNDEFINED or reader.skip(length) != length:
                    raise EOFError(f"a fragment of {_where(frame)} is cut short")
                pos += length
                continue
            nested += 1
            end = None if length == _UNDEFINED else pos + length
            stack.append(_Frame("data", frame.tag, end, frame.depth, frame.implicit))
            continue
        if tag == _ITEM_END and len(stack) > 1 and frame.end is None:
            stack.pop()
            continue
        if group == 0xFFFE:
            raise ValueError(f"a delimiter {Tag(tag)} out of place in {_where(frame)}")
        vr: str | None
        if frame.implicit:
            vr = _dictionary_vr(tag)
        else:
            vr = head[4:6].decode("latin-1")
            if vr in LONG_HEADER_VRS:
                extra = reader.read(4)
                if len(extra) < 4:
                    raise EOFError("the data set ends inside an element header")
                (length,) = struct.unpack(order + "L", extra)
                pos += 4
            else:
                (length,) = struct.unpack(order + "H", head[6:8])
            check_vr(tag, vr)
        if len(stack) > 1 or top is not None:
            _check_order(frame, tag)
        if len(stack) > 1:
            nested += 1
            if nested > budget:
                raise ValueError(
                    f"its sequences hold more than {budget:,} items and elements, more than "
                    "the SCP decodes in one object"
                )
        # PS3.5 6.2.2: pydicom reads a public UN element as its dictionary VR
        known = vr if vr != "UN" or group & 1 else _dictionary_vr(tag)
        check_value_length(tag, known, length)
        vr_code = None if frame.implicit or (vr is not None and " " in vr) else vr
        sequence = is_sequence(tag, vr_code, length) or (vr == "UN" and length == _UNDEFINED)
        if top is not None and len(stack) == 1:
            raw_vr = None if frame.implicit else vr
            if sequence or length == _UNDEFINED or (length > keep and tag != _CHARSET):
                top.append(TopElement(tag, raw_vr, length, header_at, pos, None))
            else:  # read here, not skipped: the data set is built from these
                value = reader.read(length)
                if len(value) != length:
                    raise EOFError(_cut_short(tag, length))
                top.append(TopElement(tag, raw_vr, length, header_at, pos, value))
                pos += length
                continue
        if sequence:
            depth = frame.depth + 1
            if depth > max_depth:
                raise TooDeep(
                    f"sequence {Tag(tag)} is nested {depth} levels deep; at most {max_depth} "
                    "are accepted"
                )
            # PS3.5 6.2.2: an undefined-length UN is a sequence encoded implicit VR.
            inner = frame.implicit or vr == "UN"
            end = None if length == _UNDEFINED else pos + length
            stack.append(_Frame("sequence", tag, end, depth, inner))
            continue
        if length == _UNDEFINED:
            # encapsulated pixel data (PS3.5 A.4): items of fragments to a delimiter
            stack.append(_Frame("fragments", tag, None, frame.depth, frame.implicit))
            continue
        if reader.skip(length) != length:
            raise EOFError(_cut_short(tag, length))
        pos += length


def ends_early_or_late(end: int, size: int) -> str:
    """The refusal of a data set whose last element does not end where the file does."""
    return (
        f"the dataset ends at byte {end} of {size}: the object is truncated or has trailing bytes"
    )


def _cut_short(tag: int, length: int) -> str:
    return (
        f"element {Tag(tag)} is cut short: the data set ends before the {length:,} bytes its "
        "header announces"
    )


@functools.cache
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _check_encoding(head: bytes, implicit: bool) -> None:
    """The first element tells the VR encoding, as pydicom judges it (and warns)."""
    looks_explicit = head[4:6].decode("latin-1") in VR_CODES
    if implicit == looks_explicit:
        said, found = ("implicit", "explicit") if implicit else ("explicit", "implicit")
        raise ValueError(
            f"the transfer syntax says {said} VR, but the data set is encoded {found} VR"
        )


def _check_order(frame: _Frame, tag: int) -> None:
    # At the top level only when the walk collects: otherwise check_structure's (it also
    # tells repeats pydicom merged away).
    within = f" in an item of sequence {Tag(frame.tag)}" if frame.tag else ""
    if tag == frame.previous:
        raise ValueError(f"element {Tag(tag)} appears more than once{within}")
    if tag < frame.previous:
        raise ValueError(
            f"element {Tag(tag)} comes after {Tag(frame.previous)}{within}: tags out of order"
        )
    frame.previous = tag


def _where(frame: _Frame) -> str:
    if frame.kind == "data" and frame.tag == 0:
        return "the data set"
    kind = "an item of sequence" if frame.kind == "data" else "sequence"
    return f"{kind} {Tag(frame.tag)}"
