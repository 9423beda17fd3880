"""Issue 15: what the SCP refuses at the top level of a data set it refuses inside sequence
items too (tags repeated or out of order, VR codes that do not exist, VRs that contradict the
dictionary), and a data set whose sequences or values would take too much memory to decode
is refused before it is decoded. Each is 0xC210, leaves nothing behind and says why. Sent
byte for byte by pynetdicom, through the real SCP and its Ingestor."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.scp_listener.extract.structure import MAX_SEQUENCE_ELEMENTS
from tests import dicom_factories as f
from tests.fuzz.mutator import parse
from tests.scp_listener.test_hardening_malformed import element, encode, part10
from tests.scp_listener.test_scp import RT_PLAN_STORAGE, counts
from tests.support import RunningScp, send_file_as_is, spooled

# In a Beam Sequence item (pydicom writes sequences and items with undefined lengths, so an
# element added inside an item needs no length fixed around it).
BEAM_NUMBER_IS = struct.pack("<HH", 0x300A, 0x00C0) + b"IS"
BEAM_NAME_LO = struct.pack("<HH", 0x300A, 0x00C2) + b"LO"
BEAM_NAME_IMPLICIT = struct.pack("<HH", 0x300A, 0x00C2)
PATIENT_ID_LO = struct.pack("<HH", 0x0010, 0x0020) + b"LO"

Build = Callable[[Path], tuple[Path, str, str]]


def _plan_body(*, implicit: bool = False) -> tuple[object, bytes]:
    ds = f.rt_plan(beams=2)
    return ds, encode(ds, implicit=implicit)


def repeated_in_item(path: Path) -> tuple[Path, str, str]:
    ds, body = _plan_body()
    name = element(body, BEAM_NAME_LO)
    body = body.replace(name, name + name, 1)
    reason = "element (300A,00C2) appears more than once in an item of sequence (300A,00B0)"
    return part10(ds, ExplicitVRLittleEndian, body, path), ExplicitVRLittleEndian, reason  # type: ignore[arg-type]


def repeated_in_item_implicit(path: Path) -> tuple[Path, str, str]:
    ds, body = _plan_body(implicit=True)
    at = body.index(BEAM_NAME_IMPLICIT)
    (length,) = struct.unpack("<L", body[at + 4 : at + 8])
    name = body[at : at + 8 + length]
    body = body.replace(name, name + name, 1)
    reason = "element (300A,00C2) appears more than once in an item of sequence (300A,00B0)"
    return part10(ds, ImplicitVRLittleEndian, body, path), ImplicitVRLittleEndian, reason  # type: ignore[arg-type]


def out_of_order_in_item(path: Path) -> tuple[Path, str, str]:
    ds, body = _plan_body()
    number, name = element(body, BEAM_NUMBER_IS), element(body, BEAM_NAME_LO)
    body = body.replace(name, name + number, 1)  # Beam Number again, after Beam Name
    reason = "element (300A,00C0) comes after (300A,00C2) in an item of sequence (300A,00B0)"
    return part10(ds, ExplicitVRLittleEndian, body, path), ExplicitVRLittleEndian, reason  # type: ignore[arg-type]


def vr_against_dictionary_in_item(path: Path) -> tuple[Path, str, str]:
    ds, body = _plan_body()
    body = body.replace(BEAM_NAME_LO, BEAM_NAME_LO[:4] + b"DA", 1)
    reason = "element (300A,00C2) has VR DA, but the data dictionary says LO"
    return part10(ds, ExplicitVRLittleEndian, body, path), ExplicitVRLittleEndian, reason  # type: ignore[arg-type]


def unknown_vr_in_item(path: Path) -> tuple[Path, str, str]:
    ds, body = _plan_body()
    body = body.replace(BEAM_NAME_LO, BEAM_NAME_LO[:4] + b"LG", 1)
    reason = "element (300A,00C2) has VR 'LG', which is not a DICOM VR"
    return part10(ds, ExplicitVRLittleEndian, body, path), ExplicitVRLittleEndian, reason  # type: ignore[arg-type]


def too_many_items(path: Path) -> tuple[Path, str, str]:
    """One more empty item than the decoding budget, in a sequence nobody reads (1.2 MB
    here; the same shape at 64 MB took pydicom 2.7 GB and a minute to decode)."""
    ds, body = _plan_body()
    items = struct.pack("<HHL", 0xFFFE, 0xE000, 0) * (MAX_SEQUENCE_ELEMENTS + 1)
    # Procedure Code Sequence (0008,1032), defined length, in its place among the tags
    sequence = struct.pack("<HH2s2xL", 0x0008, 0x1032, b"SQ", len(items)) + items
    at = next(s.start for s in parse(body, implicit=False, little=True) if s.tag > 0x00081032)
    body = body[:at] + sequence + body[at:]
    reason = f"its sequences hold more than {MAX_SEQUENCE_ELEMENTS:,} items and elements"
    return part10(ds, ExplicitVRLittleEndian, body, path), ExplicitVRLittleEndian, reason  # type: ignore[arg-type]


def patient_id_too_long(path: Path) -> tuple[Path, str, str]:
    """65 characters: within what the header check lets through (4 bytes a character), but
    more than LO holds, and more than the index's PatientID column does on PostgreSQL."""
    ds = f.rt_plan()
    ds.PatientID = "P" * 65
    body = encode(ds, implicit=False)
    reason = "PatientID has 65 characters; its VR holds at most 64 (PS3.5 6.2)"
    return part10(ds, ExplicitVRLittleEndian, body, path), ExplicitVRLittleEndian, reason


def name_absurdly_long(path: Path) -> tuple[Path, str, str]:
    """A 300 kB RT Plan Name (LO, implicit VR, so a 4-byte length): refused from its header,
    never read."""
    ds = f.rt_plan()
    ds.RTPlanName = "N" * 300_000
    body = encode(ds, implicit=True)
    reason = "element (300A,0003) is 300,000 bytes long; a value of VR LO holds at most 64"
    return part10(ds, ImplicitVRLittleEndian, body, path), ImplicitVRLittleEndian, reason


CASES: dict[str, Build] = {
    "tag repeated in an item": repeated_in_item,
    "tag repeated in an item, implicit VR": repeated_in_item_implicit,
    "tags out of order in an item": out_of_order_in_item,
    "VR against the dictionary in an item": vr_against_dictionary_in_item,
    "VR LG in an item": unknown_vr_in_item,
    "more items than the decoding budget": too_many_items,
    "PatientID of 65 characters": patient_id_too_long,
    "RT Plan Name of 300,000 bytes": name_absurdly_long,
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_0xc210_and_nothing_stored(scp: RunningScp, tmp_path: Path, case: str) -> None:
    path, syntax, reason = CASES[case](tmp_path / "bad.dcm")
    status = send_file_as_is(
        scp.dicom_port, path, sop_class_uid=RT_PLAN_STORAGE, transfer_syntax_uid=syntax
    )
    assert status == 0xC210
    assert counts(scp) == (0, 0, 0)
    assert spooled(scp.settings.spool_dir()) == []
    problem = scp.app.state.problems.newest_first()[0]
    assert problem.status == 0xC210
    assert reason in problem.detail
