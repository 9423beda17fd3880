"""Primitive, tolerant readers of DICOM attributes, and the decoding of a received header.

Every Type 2 attribute may be present but empty and many exports omit Type 3 ones
(``../shared/docs/domain-dicom.md``, notation and s. 11): each reader returns ``None`` (or an
empty sequence) for both instead of raising. ``read_header`` is the one function here that
touches a file; everything else is pure.
"""

from __future__ import annotations

import functools
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from services.scp_listener.extract import structure
from shared.events import Patient


class Undecodable(Exception):
    """The received bytes are not a complete, well-formed DICOM data set."""


class MalformedObject(ValueError):
    """A decodable object whose values a reader cannot make sense of (say a required value
    that is not a number). Raise it from a reader to answer 0xC210 rather than a processing
    failure."""


# ---------------------------------------------------------------- values


# A value a reader reads is loaded whole, so it is bounded: the longest one read in a real
# object, the Leaf/Jaw Positions of a 160-leaf MLC, is under 3 KB.
MAX_READ_BYTES = 1024 * 1024


def get_value(ds: Dataset, keyword: str) -> Any:
    """The value of ``keyword`` as pydicom converts it (``None`` when absent). A value too
    long to read, or one pydicom's conversion fails on in a way its callers do not expect
    (an IS of ``1e400`` overflows), is a ``MalformedObject``."""
    tag = _tag_of(keyword)
    elem = ds._dict.get(tag) if tag is not None else None
    if elem is None:
        return None
    if (
        isinstance(elem, RawDataElement)
        and elem.length != _UNDEFINED_LENGTH
        and elem.length > MAX_READ_BYTES
    ):
        raise MalformedObject(
            f"{keyword} is {elem.length:,} bytes long; rtops reads at most "
            f"{MAX_READ_BYTES:,} bytes of one value"
        )
    try:
        # What ds.get(keyword) returns, without its way through __getattr__ and a second
        # keyword lookup (30-odd reads per CBCT slice); an AttributeError is None there too.
        return ds[tag].value
    except AttributeError:
        return None
    except (OverflowError, struct.error, LookupError) as exc:
        raise MalformedObject(f"{keyword} cannot be read: {type(exc).__name__}: {exc}") from exc


@functools.cache
def _tag_of(keyword: str) -> BaseTag | None:
    tag = tag_for_keyword(keyword)
    return _interned(tag) if tag is not None else None


@functools.lru_cache(maxsize=4096)  # bounded: a sender chooses its private tags
def _interned(tag: int) -> BaseTag:
    """One BaseTag object per tag, the data set's keys and the readers' lookups alike: a dict
    finds a key by identity first, and comparing two distinct BaseTags calls a Python
    ``__eq__`` (some 270 of them per CBCT slice)."""
    return BaseTag(tag)


def text(ds: Dataset | None, keyword: str) -> str | None:
    """A string value, ``None`` when absent or empty (Type 2 attributes may be empty)."""
    if ds is None:
        return None
    value = get_value(ds, keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = "\\".join(str(v) for v in value)
    out = str(value).strip()
    return out or None


def number(ds: Dataset | None, keyword: str) -> float | None:
    """The first value as a finite float; ``None`` when absent, empty or not a number."""
    value = get_value(ds, keyword) if ds is not None else None
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def numbers(ds: Dataset | None, keyword: str) -> tuple[float, ...] | None:
    """Every value of a multi-valued numeric attribute; ``None`` when absent, empty or when
    any value is not a finite number (a half-read position is no position)."""
    value = get_value(ds, keyword) if ds is not None else None
    if value is None or value == "":
        return None
    values = value if isinstance(value, list | tuple | MultiValue) else [value]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return out if out and all(math.isfinite(v) for v in out) else None


def integer(ds: Dataset | None, keyword: str) -> int | None:
    value = number(ds, keyword)
    return int(value) if value is not None else None


def items(ds: Dataset | None, keyword: str) -> Sequence | list[Dataset]:
    seq = get_value(ds, keyword) if ds is not None else None
    return seq if seq else []


def first(ds: Dataset | None, keyword: str) -> Dataset | None:
    seq = items(ds, keyword)
    return seq[0] if seq else None


def referenced_uids(ds: Dataset | None, keyword: str) -> tuple[str, ...]:
    """Referenced SOP Instance UIDs of every item of a reference sequence, in order."""
    return tuple(
        uid for ref in items(ds, keyword) if (uid := text(ref, "ReferencedSOPInstanceUID"))
    )


# ---------------------------------------------------------------- dates and times


def parse_date(value: str | None) -> date | None:
    if not value or len(value) < 8:
        return None
    try:
        return date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def parse_datetime(
    da: str | None, tm: str | None, *, offset: str | None, clinic_tz: str
) -> datetime | None:
    """DA + TM to UTC. DICOM dates carry no zone: use Timezone Offset From UTC when the object
    has one, else the clinic's zone."""
    day = parse_date(da)
    if day is None:
        return None
    tm = (tm or "").strip()
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", tm.replace(":", ""))
    hh, mm, ss, frac = match.groups() if match else (None, None, None, None)
    try:
        local = datetime(
            day.year,
            day.month,
            day.day,
            int(hh or 0),
            int(mm or 0),
            int(ss or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:
        return None
    tz = _offset_zone(offset) or ZoneInfo(clinic_tz)
    return local.replace(tzinfo=tz).astimezone(UTC)


def _offset_zone(offset: str | None) -> timezone | None:
    match = re.fullmatch(r"([+-])(\d{2})(\d{2})", (offset or "").strip())
    if not match:
        return None
    sign = 1 if match.group(1) == "+" else -1
    return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))


def stamp(
    ds: Dataset, date_kw: str, time_kw: str, clinic_tz: str, root: Dataset | None = None
) -> datetime | None:
    """A date/time attribute pair in UTC; the zone comes from ``root`` (the object) when the
    pair sits in a sequence item."""
    offset = text(root if root is not None else ds, "TimezoneOffsetFromUTC")
    return parse_datetime(text(ds, date_kw), text(ds, time_kw), offset=offset, clinic_tz=clinic_tz)


def patient(ds: Dataset) -> Patient:
    return Patient(
        id=text(ds, "PatientID") or "",
        issuer=text(ds, "IssuerOfPatientID"),
        name=text(ds, "PatientName"),
        birth_date=parse_date(text(ds, "PatientBirthDate")),
    )


# ---------------------------------------------------------------- decoding a received header

# Values larger than this (pixel data, dose grids) are skipped, not read: rtops needs headers
# only, and an object is never held whole in memory.
DEFER_BYTES = 64 * 1024
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010


# Real RT objects nest a handful of levels (a plan: beam > control point > device position);
# a bound keeps a hostile object from exhausting the stack.
MAX_SEQUENCE_DEPTH = 16


def read_header(path: Path, max_depth: int = MAX_SEQUENCE_DEPTH) -> Dataset:
    """Decode the object's structure once; a malformed or truncated one raises
    ``Undecodable``. Large values stay on disk (``DEFER_BYTES``)."""
    try:
        with warnings.catch_warnings():
            # pydicom only warns when an undefined-length item runs into the end of the file.
            warnings.filterwarnings("error", message=".*[Ee]nd of file.*")
            # ... and reads the other VR encoding than the transfer syntax names, with a
            # warning: such a file's meta contradicts its bytes (DCMTK cannot read it).
            warnings.filterwarnings("error", message="Expected (ex|im)plicit VR, but found")
            ds, checked = _read(path, max_depth)
        decode_sequences(ds, max_depth)
        if not checked:
            check_structure(ds)
        check_identity_values(ds)
    except structure.TooDeep as exc:
        raise Undecodable(str(exc)) from exc
    except _Refused as exc:
        raise Undecodable(str(exc)) from exc
    except RecursionError as exc:
        raise Undecodable(
            f"sequences are nested too deeply to decode (more than {max_depth} levels accepted)"
        ) from exc
    except (
        InvalidDicomError,
        # A fixed-width value of a length no whole number of values has: pydicom raises it
        # when it decodes one, as it does the File Meta's first element.
        BytesLengthException,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        OverflowError,
        NotImplementedError,
        AttributeError,
        IndexError,
        struct.error,
        UserWarning,
    ) as exc:
        if isinstance(exc, UserWarning) and str(exc).startswith("Expected"):
            syntax = "explicit" if "Expected explicit" in str(exc) else "implicit"
            other = "implicit" if syntax == "explicit" else "explicit"
            raise Undecodable(
                f"the transfer syntax says {syntax} VR, but the data set is encoded {other} VR"
            ) from exc
        raise Undecodable(f"{type(exc).__name__}: {exc}") from exc
    return ds


def _read(path: Path, max_depth: int) -> tuple[Dataset, bool]:
    """The data set, and whether its top level was checked as it was read (else
    ``check_structure``'s to check). The header walk refuses a malformed object first; the
    data set is then built from what the walk read, or, where the walk does not collect (no
    File Meta, a deflated or unnamed transfer syntax, a command group in the file), read by
    pydicom."""
    with path.open("rb") as fp:
        layout = _walk_data_set(fp, max_depth)
        if layout is not None and layout.top is not None:
            built = _build(fp, layout)
            if built is not None:
                return built, True
    ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        # A deflated dataset's offsets count inflated bytes; zlib checks its own end.
        check_complete(ds, path.stat().st_size)
    return ds, False


_VR_CODES = structure.VR_CODES
_LONG_HEADER_VRS = structure.LONG_HEADER_VRS


def check_structure(ds: Dataset, *, top: bool = True) -> None:
    """Refuse what pydicom reads without complaint but a conforming reader would not: tags
    out of order or repeated (PS3.5 7.1: ascending, each once; pydicom keeps the last of a
    repeated tag), VR codes that do not exist (``LG``), and VRs that contradict the data
    dictionary for a public tag (PS3.5 6.2; UN is allowed for any tag, PS3.5 6.2.2)."""
    previous: int | None = None
    expected_start: int | None = None
    implicit = bool(ds.original_encoding[0]) if top and ds.original_encoding else None
    for tag, elem in ds._dict.items():
        if previous is not None and tag <= previous:
            raise ValueError(f"element {tag} comes after {Tag(previous)}: tags out of order")
        previous = tag
        vr = elem.VR if isinstance(elem, RawDataElement) else None
        if vr is not None:
            _check_vr(tag, vr)
        if not top or not isinstance(elem, RawDataElement) or elem.value_tell is None:
            expected_start = None
            continue
        header = 8 if implicit or vr not in _LONG_HEADER_VRS else 12
        start = elem.value_tell - header
        if expected_start is not None and start != expected_start:
            # A gap where an element was: pydicom replaced it with a later one of that tag.
            raise ValueError(f"element {tag} appears more than once")
        undefined = elem.length == _UNDEFINED_LENGTH
        expected_start = None if undefined else elem.value_tell + elem.length
    for elem in ds._dict.values():
        if elem.VR == "SQ" and not isinstance(elem, RawDataElement):
            for item in elem.value:
                check_structure(item, top=False)


_check_vr = structure.check_vr


def check_complete(ds: Dataset, size: int) -> None:
    """pydicom decodes a truncated dataset silently (a short last value, fewer items), so
    check that every top-level value is as long as its header says and that the last one
    ends exactly at the end of the file. A cut that falls exactly between two top-level
    elements cannot be told from a complete object: DICOM carries no total length."""
    end = 0
    # pydicom decodes an undefined-length sequence as it reads (no raw bytes, no length),
    # and a missing delimiter warns (an error in ``read_header``): one that starts after
    # every other element ended where its delimiter was.
    open_sequence = 0
    for elem in ds._dict.values():
        if getattr(elem, "is_undefined_length", False) and getattr(elem, "file_tell", None):
            open_sequence = max(open_sequence, elem.file_tell)
        if not isinstance(elem, RawDataElement) or elem.value_tell is None:
            continue
        if elem.value is None and elem.length == _UNDEFINED_LENGTH:
            # A deferred undefined-length value (encapsulated Pixel Data, PS3.5 A.4): pydicom
            # skipped to its delimiter without keeping its extent. The header walk checked
            # that delimiter is there; like an open sequence, it ends the data set unmeasured.
            open_sequence = max(open_sequence, elem.value_tell)
            continue
        if elem.value is None and elem.length not in (0, _UNDEFINED_LENGTH):
            # a deferred (skipped) value: only its extent can be checked, against the end
            end = max(end, elem.value_tell + elem.length)
            continue
        value_len = len(elem.value) if elem.value is not None else 0
        if elem.length == _UNDEFINED_LENGTH:
            # value excludes the 8-byte delimiter that pydicom consumed after it
            end = max(end, elem.value_tell + value_len + 8)
            continue
        if value_len != elem.length:
            raise EOFError(
                f"element {elem.tag} is {value_len} bytes of the {elem.length} its "
                "header announces: the object is truncated"
            )
        end = max(end, elem.value_tell + elem.length)
    if end and end != size and open_sequence <= end:
        raise EOFError(structure.ends_early_or_late(end, size))


def decode_sequences(ds: Dataset, max_depth: int = MAX_SEQUENCE_DEPTH, depth: int = 1) -> None:
    """Decode every sequence, nested ones included, so that a malformed item raises here.

    Plain values stay raw until something reads them: converting every element of a CBCT
    slice costs more than storing it, and pydicom only warns about bad plain values anyway.
    """
    # _dict, not get_item(): get_item() would read deferred values (pixel data) from disk.
    for tag, elem in list(ds._dict.items()):
        if not _is_sequence(tag, elem.VR, getattr(elem, "length", 0)):
            continue
        if depth > max_depth:
            raise Undecodable(
                f"sequence {tag} is nested {depth} levels deep; at most {max_depth} are accepted"
            )
        for item in ds[tag].value:
            decode_sequences(item, max_depth, depth + 1)


_is_sequence = structure.is_sequence


class _Refused(ValueError):
    """A refusal whose message is the whole reason (no exception type in front)."""


@dataclass
class _Layout:
    """What the header walk found: the File Meta, the transfer syntax's encoding and, when it
    collected them, the data set's top-level elements."""

    preamble: bytes
    meta: dict[BaseTag, RawDataElement]
    start: int  # the data set's first byte in the file
    implicit: bool
    little: bool
    top: list[structure.TopElement] | None


def _walk_data_set(fp: BinaryIO, max_depth: int) -> _Layout | None:
    """``structure.walk`` over the data set after the File Meta Information, before pydicom
    decodes anything. A file without the DICM prefix is left to pydicom to refuse (None)."""
    head = fp.read(132)
    if len(head) < 132 or head[128:] != b"DICM":
        return None
    size = os.fstat(fp.fileno()).st_size
    syntax = ""
    meta: dict[BaseTag, RawDataElement] = {}
    plain = True  # a File Meta pydicom reads as the walk does
    # The position is counted here, not asked of the file: each tell() of a buffered file is
    # an lseek that lets go of the GIL, twenty-odd per object, each a thread switch when
    # other associations wait for it.
    at = len(head)
    while True:  # the File Meta group is explicit VR little endian (PS3.10 7.1)
        header = fp.read(8)
        if len(header) < 8 or header[:2] != b"\x02\x00":
            fp.seek(at)
            break
        at += 8
        vr = header[4:6].decode("latin-1")
        if vr in _LONG_HEADER_VRS:
            (length,) = struct.unpack("<L", fp.read(4))
            at += 4
        elif vr not in _VR_CODES and not b"AA" <= header[4:6] <= b"ZZ":
            # as pydicom reads it: no VR code there, so implicit VR, a 4-byte length
            (length,) = struct.unpack("<L", header[4:8])
        else:
            (length,) = struct.unpack("<H", header[6:8])
        tag = BaseTag(0x00020000 | struct.unpack("<H", header[2:4])[0])
        if at + length > size:
            # pydicom would read(length) first and find the file short after: a length
            # field near 4 GB asked for 4 GB (the fuzzer, under a 1 GB address-space limit)
            raise _Refused(
                f"File Meta element {tag} of {length:,} bytes runs past the end of the file"
            )
        if length > 1024:  # no meta element of use is this long: pydicom judges it
            plain = False
            fp.seek(length, 1)
            at += length
            continue
        value_at = at
        value = fp.read(length)  # whole: the check above
        at += length
        plain = plain and vr in _VR_CODES
        meta[tag] = RawDataElement(
            tag, vr, length, value or empty_value_for_VR(vr, raw=True), value_at, False, True
        )
        if tag == 0x00020010:
            syntax = value.decode("ascii", "replace").strip("\0 ")
    deflated = syntax == DeflatedExplicitVRLittleEndian
    layout = _Layout(
        preamble=head[:128],
        meta=meta,
        start=at,
        implicit=syntax == ImplicitVRLittleEndian,
        little=syntax != ExplicitVRBigEndian,
        top=[] if plain and syntax and not deflated and syntax not in _PRIVATE_SYNTAXES else None,
    )
    try:
        structure.walk(
            fp,
            implicit=layout.implicit,
            little=layout.little,
            deflated=deflated,
            max_depth=max_depth,
            top=layout.top,
            keep=DEFER_BYTES,
        )
    except structure.TooDeep:
        raise
    except (ValueError, EOFError, struct.error) as exc:
        raise _Refused(str(exc)) from exc
    return layout


_PRIVATE_SYNTAXES = pydicom.uid.PrivateTransferSyntaxes


def _build(fp: BinaryIO, layout: _Layout) -> FileDataset | None:
    """The data set as ``pydicom.dcmread(defer_size=DEFER_BYTES)`` reads it (the same
    elements, values and offsets), from the elements the walk collected. Sequences and
    undefined-length values are read by pydicom's own element reader, one element each.
    None for a command group in the file, which pydicom reads apart (implicit VR)."""
    top = layout.top or []
    if top and top[0].tag >> 16 == 0:
        return None
    implicit, little, start = layout.implicit, layout.little, layout.start
    if not top:  # pydicom's encoding for an empty data set, whatever the syntax says
        implicit, little = True, True
    encoding: str | list[str] = default_encoding
    raw: dict[BaseTag, RawDataElement | DataElement] = {}
    for found in top:
        tag = _interned(found.tag)
        if found.value is None:  # deferred, a sequence or an undefined length
            fp.seek(start + found.header_at)
            raw[tag] = next(
                data_element_generator(fp, implicit, little, None, DEFER_BYTES, encoding)
            )
            continue
        elem = RawDataElement(
            tag,
            found.vr,
            found.length,
            found.value if found.length else empty_value_for_VR(found.vr, raw=True),
            start + found.value_at,
            implicit,
            little,
        )
        raw[tag] = elem
        if found.tag == 0x00080005:
            encoding = convert_encodings(convert_raw_data_element(elem).value)
    dataset = Dataset(raw, parent_encoding=default_encoding)
    dataset.set_original_encoding(implicit, little, encoding)
    file_meta = FileMetaDataset(layout.meta)
    file_meta.set_original_encoding(False, True, default_encoding)
    if layout.meta:  # pydicom decodes the first to check the meta's encoding: so do we
        file_meta[next(iter(layout.meta))]
    ds = FileDataset(fp, dataset, layout.preamble, file_meta, implicit, little)
    ds.set_original_encoding(implicit, little, dataset._character_set)
    return ds


# The values the ingest reads into its index and every event, outside the readers' guard
# against malformed values: refused here, before anything is stored, when no column or
# consumer could hold them (PS3.5 6.2: UI 64 bytes, LO 64 characters, PN 64 per group).
# (The SOP Class and Instance UIDs are the identity check's: ``service._check_identity``.)
_IDENTITY = {
    "StudyInstanceUID": 64,
    "SeriesInstanceUID": 64,
    "PatientID": 64,
    "IssuerOfPatientID": 64,
    "PatientName": 64,
}


def check_identity_values(ds: Dataset) -> None:
    """Decode the identity and routing values and refuse those too long for their VR."""
    for keyword in ("SOPClassUID", "SOPInstanceUID", *_IDENTITY):
        # decoded here, so that the reads after this one (outside any guard) cannot fail
        try:
            value = text(ds, keyword)
        except (ValueError, TypeError, LookupError) as exc:
            raise _Refused(f"{keyword} cannot be decoded: {exc}") from exc
        limit = _IDENTITY.get(keyword)
        if value is None or limit is None:
            continue
        parts = value.split("=") if keyword == "PatientName" else [value]
        longest = max(len(p) for p in parts)
        if longest > limit:
            what = "a component group of " if keyword == "PatientName" else ""
            raise _Refused(
                f"{keyword} has {what}{longest:,} characters; its VR holds at most {limit} "
                "(PS3.5 6.2)"
            )
