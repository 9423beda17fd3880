"""Issue 15: malformed data sets that pydicom reads without complaint are refused with 0xC210,
leave nothing behind (no row, no event, no file, no spool file) and say why in plain words.
Sent byte for byte by pynetdicom (nothing re-encoded); one through DCMTK's storescu."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests import dicom_factories as f
from tests.scp_listener.test_scp import RT_PLAN_STORAGE, counts
from tests.support import RunningScp, send_file_as_is, spooled, storescu

PATIENT_ID_LO = struct.pack("<HH", 0x0010, 0x0020) + b"LO"


def encode(ds: Dataset, *, implicit: bool) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return out.getvalue()


def part10(ds: Dataset, syntax: str, body: bytes, path: Path) -> Path:
    """A file whose meta names ``syntax`` and whose data set is ``body``, as given."""
    ds.file_meta.TransferSyntaxUID = syntax
    meta = DicomBytesIO()
    meta.is_little_endian = True
    meta.is_implicit_VR = False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + body)
    return path


def private(vr: bytes, value: bytes) -> bytes:
    creator = struct.pack("<HH", 0x4011, 0x0010) + b"LO" + struct.pack("<H", 10) + b"RTOPS TEST"
    return creator + struct.pack("<HH", 0x4011, 0x1001) + vr + struct.pack("<H", len(value)) + value


def element(body: bytes, head: bytes) -> bytes:
    """The whole explicit-VR short element starting with ``head`` (tag + VR)."""
    at = body.index(head)
    (length,) = struct.unpack("<H", body[at + 6 : at + 8])
    return body[at : at + 8 + length]


def implicit_on_explicit(path: Path) -> tuple[Path, str]:
    ds = f.rt_plan()
    return part10(ds, ExplicitVRLittleEndian, encode(ds, implicit=True), path), (
        "the transfer syntax says explicit VR, but the data set is encoded implicit VR"
    )


def explicit_on_implicit(path: Path) -> tuple[Path, str]:
    ds = f.rt_plan()
    return part10(ds, ImplicitVRLittleEndian, encode(ds, implicit=False), path), (
        "the transfer syntax says implicit VR, but the data set is encoded explicit VR"
    )


def unknown_vr(code: bytes) -> Callable[[Path], tuple[Path, str]]:
    def build(path: Path) -> tuple[Path, str]:
        ds = f.rt_plan()
        body = encode(ds, implicit=False) + private(code, b"abcd")
        return part10(ds, ExplicitVRLittleEndian, body, path), "which is not a DICOM VR"

    return build


def vr_against_dictionary(path: Path) -> tuple[Path, str]:
    ds = f.rt_plan()
    body = encode(ds, implicit=False).replace(PATIENT_ID_LO, PATIENT_ID_LO[:4] + b"DA", 1)
    return part10(ds, ExplicitVRLittleEndian, body, path), "the data dictionary says LO"


def patient_id_twice(path: Path) -> tuple[Path, str]:
    ds = f.rt_plan()
    body = encode(ds, implicit=False)
    pid = element(body, PATIENT_ID_LO)
    forged = pid[:6] + struct.pack("<H", 6) + b"OTHER1"
    body = body.replace(pid, pid + forged, 1)
    return part10(ds, ExplicitVRLittleEndian, body, path), "appears more than once"


def out_of_order(path: Path) -> tuple[Path, str]:
    ds = f.rt_plan()
    # Institutional Department Name (0008,1040), absent from the plan, after (3010,...).
    late = struct.pack("<HH", 0x0008, 0x1040) + b"LO" + struct.pack("<H", 6) + b"PHYSIC"
    body = encode(ds, implicit=False) + late
    return part10(ds, ExplicitVRLittleEndian, body, path), "tags out of order"


def invalid_uid(uid: str) -> Callable[[Path], tuple[Path, str]]:
    def build(path: Path) -> tuple[Path, str]:
        ds = f.rt_plan()
        ds.SOPInstanceUID = uid  # the command's UID (from the meta) stays valid
        body = encode(ds, implicit=False)
        return part10(ds, ExplicitVRLittleEndian, body, path), "is not a valid UID"

    return build


CASES: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "implicit bytes on an explicit context": implicit_on_explicit,
    "explicit bytes on an implicit context": explicit_on_implicit,
    "VR LG": unknown_vr(b"LG"),
    "VR UM": unknown_vr(b"UM"),
    "PatientID as DA": vr_against_dictionary,
    "PatientID twice": patient_id_twice,
    "tags out of order": out_of_order,
    "UID with a leading zero": invalid_uid("1.2.840.0123.4"),
    "UID with letters": invalid_uid("1.2.840.abc"),
    "UID of 100 characters": invalid_uid("1." + "2" * 98),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_data_set_is_refused_and_leaves_nothing(
    scp: RunningScp, tmp_path: Path, case: str
) -> None:
    path, reason = CASES[case](tmp_path / "bad.dcm")
    syntax = ImplicitVRLittleEndian if "implicit context" in case else ExplicitVRLittleEndian
    status = send_file_as_is(
        scp.dicom_port, path, sop_class_uid=RT_PLAN_STORAGE, transfer_syntax_uid=syntax
    )
    assert status == 0xC210
    assert counts(scp) == (0, 0, 0)
    assert spooled(scp.settings.spool_dir()) == []
    problem = scp.app.state.problems.newest_first()[0]
    assert problem.status == 0xC210
    assert reason in problem.detail


def test_the_well_formed_plan_of_the_same_builders_is_stored(
    scp: RunningScp, tmp_path: Path
) -> None:
    ds = f.rt_plan()
    path = part10(ds, ExplicitVRLittleEndian, encode(ds, implicit=False), tmp_path / "ok.dcm")
    status = send_file_as_is(
        scp.dicom_port,
        path,
        sop_class_uid=RT_PLAN_STORAGE,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert status == 0x0000


def test_dcmtk_storescu_with_an_invalid_uid_is_refused(
    scp: RunningScp, dcmtk: dict[str, str], tmp_path: Path
) -> None:
    ds = f.rt_plan()
    ds.SOPInstanceUID = "1.2.840.0123.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = f.write(ds, tmp_path / "bad.dcm")
    out = storescu(dcmtk["storescu"], scp.dicom_port, [path], extra=["-v"])
    assert "Error: CannotUnderstand" in out.stdout + out.stderr, out.stdout + out.stderr
    assert counts(scp) == (0, 0, 0)
