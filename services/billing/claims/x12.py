"""ASC X12 5010 interchanges: 837P, 837I and 835, validated with pyx12.

Two passes over the same text:

1. **Validation** by pyx12 against the implementation guide named in GS08/ST03
   (005010X222A1 837P, 005010X223A2 837I, 005010X221A1 835): envelopes and their counts, loop
   structure, required segments and elements, code values. Each of its errors becomes a
   :class:`ClaimError` at the segment's number.
2. **Reading** by the segment walkers of :mod:`x12_837` and :mod:`x12_835` over the segments
   cut here with the delimiters the ISA segment declares. They report what pyx12 does not
   judge (a code that is no CPT, fractional units, a line without a service date).

pyx12 walks the guide's map for every segment, which costs about 0.1 ms a segment (a
100,000-line 837P, 312,000 segments, takes ~35 s); ``validate=False`` skips it and checks
only the envelopes (SE/GE/IEA counts and control numbers) by hand.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

from pyx12.errors import EngineError, X12Error
from pyx12.params import ParamsBase
from pyx12.x12n_document import x12n_document

from services.billing.claims import x12_835, x12_837
from services.billing.claims.model import ClaimError, ClaimFile, ClaimFormat
from services.billing.claims.x12_segments import Segment, tokenize

GUIDES: dict[str, tuple[str, ClaimFormat]] = {
    "005010X222A1": ("837", "x12-837p"),
    "005010X223A2": ("837", "x12-837i"),
    "005010X221A1": ("835", "x12-835"),
}
_SUPPORTED = "837P 005010X222A1, 837I 005010X223A2, 835 005010X221A1"


def parse_x12(text: str, *, validate: bool = True) -> ClaimFile:
    text = text.lstrip("\ufeff \t\r\n")
    errors: list[ClaimError] = []
    cut = tokenize(text, errors)
    if cut is None:
        return ClaimFile("unknown", errors=tuple(errors))
    delimiters, segments = cut
    unsupported: list[ClaimError] = []
    transactions, kind = _transactions(segments, unsupported)
    errors.extend(unsupported)
    if not validate:
        errors.extend(envelope_errors(segments))
    elif not unsupported and not any(e.segment == "ISA" for e in errors):
        # pyx12 refuses an ISA that is not 106 characters and stops on a guide it has no
        # map for; both are already reported.
        errors.extend(validate_with_pyx12(text, segments))
    if kind is None:
        if not transactions and not errors:
            errors.append(ClaimError(1, "ISA", "no ST transaction set in the interchange"))
        return ClaimFile("unknown", errors=_unique(errors))

    lines, remittances = [], []
    for transaction in transactions:
        if kind == "x12-835":
            remittances.extend(x12_835.read(transaction, delimiters, errors))
        else:
            lines.extend(x12_837.read(transaction, delimiters, kind, errors))
    return ClaimFile(kind, tuple(lines), tuple(remittances), _unique(errors))


def _transactions(
    segments: list[Segment], errors: list[ClaimError]
) -> tuple[list[list[Segment]], ClaimFormat | None]:
    """The ST..SE sets, and the one format they share (a file holds one kind)."""
    transactions: list[list[Segment]] = []
    current: list[Segment] | None = None
    kind: ClaimFormat | None = None
    group_guide = ""
    for seg in segments:
        if seg.id == "GS":
            group_guide = seg.get(8)
        elif seg.id == "ST":
            guide = seg.get(3) or group_guide
            expected = GUIDES.get(guide)
            if expected is None or expected[0] != seg.get(1):
                errors.append(
                    ClaimError(
                        seg.number,
                        "ST",
                        f"transaction set {seg.get(1)!r} with guide {guide!r} is not supported "
                        f"({_SUPPORTED})",
                    )
                )
                current = None
                continue
            if kind is not None and expected[1] != kind:
                errors.append(
                    ClaimError(
                        seg.number, "ST", f"{expected[1]} after {kind}: one kind of file at a time"
                    )
                )
                current = None
                continue
            kind = expected[1]
            current = [seg]
            transactions.append(current)
        elif current is not None:
            current.append(seg)
            if seg.id == "SE":
                current = None
    return transactions, kind


def envelope_errors(segments: list[Segment]) -> list[ClaimError]:
    """Envelopes by hand (used without pyx12): every ST closed by an SE that counts its
    segments and repeats its control number; GE and IEA count their groups and sets."""
    errors: list[ClaimError] = []
    open_st: Segment | None = None
    open_gs: Segment | None = None
    open_isa: Segment | None = None
    st_count = gs_count = seg_count = 0

    def missing(seg: Segment | None, trailer: str, at: int | None) -> None:
        if seg is not None:
            where = f"before segment {at}" if at else "before the end of the file (cut?)"
            errors.append(
                ClaimError(seg.number, seg.id, f"no {trailer} closes this {seg.id} {where}")
            )

    for seg in segments:
        if open_st is not None:
            seg_count += 1
        if seg.id == "ISA":
            missing(open_isa, "IEA", seg.number)
            open_isa, gs_count = seg, 0
        elif seg.id == "GS":
            missing(open_gs, "GE", seg.number)
            open_gs, st_count = seg, 0
            gs_count += 1
        elif seg.id == "ST":
            missing(open_st, "SE", seg.number)
            open_st, seg_count = seg, 1
            st_count += 1
        elif seg.id == "SE":
            if open_st is None:
                errors.append(ClaimError(seg.number, "SE", "SE without ST"))
                continue
            if seg.get(1) != str(seg_count):
                errors.append(
                    ClaimError(
                        seg.number,
                        "SE",
                        f"SE01 says {seg.get(1)} segments, the transaction set has {seg_count}",
                    )
                )
            if seg.get(2) != open_st.get(2):
                errors.append(
                    ClaimError(seg.number, "SE", f"SE02 {seg.get(2)} != ST02 {open_st.get(2)}")
                )
            open_st = None
        elif seg.id == "GE":
            missing(open_st, "SE", seg.number)
            open_st = None
            if open_gs is None:
                errors.append(ClaimError(seg.number, "GE", "GE without GS"))
                continue
            if seg.get(1) != str(st_count):
                errors.append(
                    ClaimError(
                        seg.number, "GE", f"GE01 says {seg.get(1)} sets, the group has {st_count}"
                    )
                )
            if seg.get(2) != open_gs.get(6):
                errors.append(
                    ClaimError(seg.number, "GE", f"GE02 {seg.get(2)} != GS06 {open_gs.get(6)}")
                )
            open_gs = None
        elif seg.id == "IEA":
            missing(open_gs, "GE", seg.number)
            open_gs = None
            if open_isa is None:
                errors.append(ClaimError(seg.number, "IEA", "IEA without ISA"))
                continue
            if seg.get(1) != str(gs_count):
                errors.append(
                    ClaimError(
                        seg.number, "IEA", f"IEA01 says {seg.get(1)} groups, found {gs_count}"
                    )
                )
            if seg.get(2) != open_isa.get(13):
                errors.append(
                    ClaimError(seg.number, "IEA", f"IEA02 {seg.get(2)} != ISA13 {open_isa.get(13)}")
                )
            open_isa = None
    missing(open_st, "SE", None)
    missing(open_gs, "GE", None)
    missing(open_isa, "IEA", None)
    return errors


# ---------------------------------------------------------------- pyx12


def validate_with_pyx12(text: str, segments: list[Segment]) -> list[ClaimError]:
    """pyx12's validation of the whole interchange, each error at its segment's number.

    pyx12 keeps its error tree to itself and hands it only to the report writers it is given;
    the JSON one (``fd_json``) carries every error with the segment's line. Errors of the
    envelopes carry the trailer's line there, so the headers' numbers come from ``segments``
    (the n-th ST of the report is the n-th ST of the file)."""
    report = io.StringIO()
    try:
        x12n_document(
            param=ParamsBase(),  # no ~/.pyx12.conf.xml: the same result on every machine
            src_file=io.StringIO(text),
            fd_997=None,
            fd_html=None,
            fd_json=report,
        )
    except (EngineError, X12Error) as exc:
        return [ClaimError(1, None, f"X12 validation stopped: {exc}")]
    except Exception as exc:  # a validator crash must not let a file through unchecked
        return [ClaimError(1, None, f"X12 validation failed ({type(exc).__name__}: {exc})")]
    try:
        tree = json.loads(report.getvalue())
    except ValueError:
        return [ClaimError(1, None, "X12 validation gave no report")]
    headers = {
        name: iter([s.number for s in segments if s.id == name]) for name in ("ISA", "GS", "ST")
    }
    errors: list[ClaimError] = []
    for isa in tree.get("interchanges", []):
        isa_line = next(headers["ISA"], 1)
        for e in isa["errors"]:
            errors.append(_envelope(e, "IEA" in e["err_cde"], isa, isa_line, "ISA", "IEA"))
        for gs in isa["groups"]:
            gs_line = next(headers["GS"], isa_line)
            for e in gs["errors"]:
                errors.append(_envelope(e, e["err_cde"] != "6", gs, gs_line, "GS", "GE"))
            for st in gs["transactions"]:
                st_line = next(headers["ST"], gs_line)
                for e in st["errors"]:
                    on_trailer = e["err_cde"] not in _ST_HEADER_CODES
                    errors.append(_envelope(e, on_trailer, st, st_line, "ST", "SE"))
                for seg in st["segments"]:
                    errors.extend(_segment_errors(seg))
    return errors


# pyx12's error_handler.err_st.get_error_list: the codes it reports on the ST itself.
_ST_HEADER_CODES = frozenset({"1", "6", "7", "23"})


def _envelope(
    error: dict[str, Any],
    on_trailer: bool,
    node: dict[str, Any],
    header_line: int,
    header: str,
    trailer: str,
) -> ClaimError:
    """An envelope's error on its trailer (a wrong count) or its header (anything else, and
    a missing trailer: the report then gives the header's line)."""
    if on_trailer and node["cur_line"] != header_line:
        return ClaimError(node["cur_line"], trailer, error["err_str"])
    return ClaimError(header_line, header, error["err_str"])


def _segment_errors(seg: dict[str, Any]) -> list[ClaimError]:
    line, seg_id = seg["cur_line"], seg["seg_id"]
    out = []
    for e in seg["errors"]:
        shown = _value(e)
        out.append(ClaimError(line, seg_id, f"{e['err_str']}{shown}"))
    for ele in seg["elements"]:
        where = f"{seg_id}{ele['ele_pos']:02d}"
        if ele.get("subele_pos"):
            where += f"-{ele['subele_pos']}"
        for e in ele["errors"]:
            shown = _value(e)
            out.append(ClaimError(line, seg_id, f"{where}: {e['err_str']}{shown}"))
    return out


def _value(error: dict[str, Any]) -> str:
    """The bad value, unless pyx12's message already quotes it."""
    value = error.get("err_val")
    return f" ({value!r})" if value and str(value) not in error["err_str"] else ""


def _unique(errors: list[ClaimError]) -> tuple[ClaimError, ...]:
    return tuple(sorted(set(errors), key=lambda e: (e.line, e.segment or "", e.reason)))


logging.getLogger("pyx12").addHandler(logging.NullHandler())
