"""Every input the fuzzer found that broke the SCP's contract, and the status class the SCP
answers it with now (``tests/fuzz/regressions/``: fuzz inputs, a selector byte then the data
set, see ``harness.decode_input``), plus the hand-built shapes of the same bugs and of the
memory bounds (issue 15)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.scp_listener import extract, sop
from services.scp_listener.extract.structure import MAX_INFLATED_BYTES
from tests import dicom_factories as f
from tests.fuzz.harness import CANNOT_UNDERSTAND, STORED, check_input, check_one
from tests.fuzz.make_corpus import encode
from tests.fuzz.mutator import parse

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
REPO = Path(__file__).resolve().parents[2]

# file -> (what it was, what the SCP answers now)
FOUND: dict[str, tuple[str, str]] = {
    "is-1e400-overflows-in-brachy-channel.bin": (
        "an IS of 1e400 in a brachy record's channel: pydicom's int(float('inf')) raised "
        "OverflowError out of the reader (0x0110)",
        CANNOT_UNDERSTAND,
    ),
    "deflated-uid-of-775-mb-cut-short.bin": (
        "a deflated data set whose SOP Instance UID (VR UN) announces 775 MB and is cut "
        "short: nothing checked a deflated data set's lengths, and the value guard raised "
        "MalformedObject in the identity check, outside the ingest's guard (0x0110)",
        CANNOT_UNDERSTAND,
    ),
    "us-of-5-bytes-in-an-image-header.bin": (
        "Pixel Representation (0028,0103), US, 5 bytes long in an image: pydicom raised "
        "BytesLengthException when decoding a sequence read it (CI's fuzz run, 0x0110)",
        CANNOT_UNDERSTAND,
    ),
    "meta-element-of-2-bytes-in-the-data-set.bin": (
        "a data set holding (0002,0000), a UL of 2 bytes: pydicom reads group 0002 of the data "
        "set as File Meta, and decoding its first element raised BytesLengthException out of "
        "read_header (a 20-minute fuzz run, 0x0110)",
        CANNOT_UNDERSTAND,
    ),
    "charset-un-of-1-4-gb-cut-short.bin": (
        "a Specific Character Set (VR UN) whose length field says 1.4 GB in a 351-byte data "
        "set: the header walk reads that element whatever its length, and read(n) asked for "
        "n bytes before finding the file short (CI's fuzz run, out of memory)",
        CANNOT_UNDERSTAND,
    ),
    "meta-element-without-a-vr-of-4-gb.bin": (
        "a data set opening with a group 0002 element whose VR bytes are no VR code: pydicom "
        "reads it as more File Meta, implicit VR, so its length is 4 bytes (4 GB here) where "
        "the File Meta check read 2, and pydicom's read(length) asked for 4 GB (a 5-minute "
        "run under a 1.2 GB address-space limit)",
        CANNOT_UNDERSTAND,
    ),
}


def test_every_saved_input_is_listed() -> None:
    assert sorted(p.name for p in REGRESSIONS.iterdir()) == sorted(FOUND)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", sorted(FOUND))
def test_found_by_the_fuzzer(name: str) -> None:
    assert check_input((REGRESSIONS / name).read_bytes()) == FOUND[name][1]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (0x00280103, b"\0\0\\\0\0"),  # Pixel Representation, US: 5 bytes
        (0x00280010, b"\0\2\0"),  # Rows, US: 3 bytes
        (0x00280030, b"0.5\\0.5"),  # Pixel Spacing, DS: strings are not checked this way
    ],
)
def test_binary_values_that_are_not_whole_values_are_0xc210(tag: int, value: bytes) -> None:
    ds = f.cbct_series(n_slices=1, rows=8, columns=8)[0]
    body = _replace_value(encode(ds, ExplicitVRLittleEndian), tag, value)
    expected = STORED if tag == 0x00280030 else CANNOT_UNDERSTAND
    assert check_one(body, ds.SOPClassUID, ExplicitVRLittleEndian) == expected


def _replace_value(body: bytes, tag: int, value: bytes) -> bytes:
    """Explicit VR little endian: the first element ``tag`` (at any depth) with a new short
    value; pydicom's undefined-length sequences and items need no other length fixed."""
    span = next(s for s in parse(body, implicit=False, little=True) if s.tag == tag)
    head = body[span.start : span.start + 6] + struct.pack("<H", len(value))
    return body[: span.start] + head + value + body[span.end :]


@pytest.mark.filterwarnings("ignore")
def test_an_integer_string_that_overflows_is_0xc210() -> None:
    ds = f.brachy_treatment_record(plan_uid="1.2.3")
    # Channel Number (300A,0110), IS, in the first Recorded Channel Sequence item
    body = _replace_value(encode(ds, ExplicitVRLittleEndian), 0x300A0110, b"1e400 ")
    assert check_one(body, sop.RT_BRACHY_RECORD, ExplicitVRLittleEndian) == CANNOT_UNDERSTAND


@pytest.mark.filterwarnings("ignore")
def test_a_deflated_data_set_cut_inside_a_value_is_0xc210() -> None:
    ds = f.rt_plan()
    body = encode(ds, ExplicitVRLittleEndian)
    body += struct.pack("<HH2s2xL", 0x0011, 0x1001, b"OB", 1 << 20) + b"\0" * 64
    body = _with_private_creator(body)
    assert check_one(body, sop.RT_PLAN, DeflatedExplicitVRLittleEndian) == CANNOT_UNDERSTAND


def _with_private_creator(body: bytes) -> bytes:
    # (0011,0010) creator before the (0011,1001) element just appended
    creator = struct.pack("<HH2sH", 0x0011, 0x0010, b"LO", 10) + b"RTOPS TEST"
    at = next(s.start for s in parse(body, implicit=False, little=True) if s.tag >= 0x00110010)
    return body[:at] + creator + body[at:]


@pytest.mark.filterwarnings("ignore")
def test_a_deflate_bomb_is_refused_before_it_is_inflated() -> None:
    ds = f.rt_plan()
    body = encode(ds, ExplicitVRLittleEndian)
    zeros = MAX_INFLATED_BYTES + 2
    body += struct.pack("<HH2s2xL", 0x0011, 0x1001, b"OB", zeros) + b"\0" * zeros
    assert check_one(_with_private_creator(body), sop.RT_PLAN, DeflatedExplicitVRLittleEndian) == (
        CANNOT_UNDERSTAND
    )


# ---------------------------------------------------------------- the Elekta XVI archive


def _rps_payload(ds: object) -> bytes:
    return ds.get((0x0021, 0x103A)).value  # type: ignore[attr-defined]


def _rps_with_payload(payload: bytes) -> object:
    ds = f.elekta_rps()
    ds[0x0021, 0x103A].value = payload + (b"\0" if len(payload) % 2 else b"")
    return ds


def test_an_encrypted_xvi_archive_is_stored_without_a_couch_shift() -> None:
    raw = bytearray(_rps_payload(f.elekta_rps()))
    # general purpose flag bit 0 (encrypted) in the central directory entry (APPNOTE 4.4.4)
    central = raw.index(b"PK\x01\x02")
    raw[central + 8] |= 1
    assert extract.elekta_couch_shift_mm(_rps_with_payload(bytes(raw))) is None  # type: ignore[arg-type]


def test_an_xvi_member_larger_than_an_ini_is_not_inflated() -> None:
    with zipfile.ZipFile(io.BytesIO(_rps_payload(f.elekta_rps()))) as zf:
        name = zf.namelist()[0]
        ini = zf.read(name)
    assert extract.elekta_couch_shift_mm(_rps_with_payload(_zip(name, ini))) is not None  # type: ignore[arg-type]
    # the same shifts after 2 MB of blank lines: no alignment file is that large
    padded = _zip(name, ini + b"\r\n" * (1 << 20))
    assert extract.elekta_couch_shift_mm(_rps_with_payload(padded)) is None  # type: ignore[arg-type]


def test_blank_lines_in_an_xvi_ini_cost_linear_time() -> None:
    """``^\\s*`` ran across the line ends: 2 MB of blank lines took minutes (quadratic)."""
    with zipfile.ZipFile(io.BytesIO(_rps_payload(f.elekta_rps()))) as zf:
        name = zf.namelist()[0]
        ini = zf.read(name)
    padded = _zip(name, ini + b"\r\n" * (100 * 1024))  # 200 KB, under the INI bound
    start = time.process_time()
    assert extract.elekta_couch_shift_mm(_rps_with_payload(padded)) is not None  # type: ignore[arg-type]
    assert time.process_time() - start < 2.0  # CPU seconds; quadratic took minutes


def _zip(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return out.getvalue()


# ---------------------------------------------------------------- memory


@pytest.mark.filterwarnings("ignore")
def test_64_mb_of_sequence_items_is_refused_within_a_small_memory_bound(tmp_path: Path) -> None:
    """Peak RSS of read + extract in a fresh process on a plan with 64 MB of small items in
    one sequence: 2.7 GB before the header walk, now refused at no measurable cost."""
    path = tmp_path / "big.dcm"
    script = (
        "import resource, sys, warnings; warnings.simplefilter('ignore');"
        "from services.scp_listener.lean import keep_lean; keep_lean();"
        "from pathlib import Path;"
        "from tests.fuzz.harness import _ingest_path;"
        f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        f"status = _ingest_path(Path({str(path)!r}), {sop.RT_PLAN!r}, {ExplicitVRLittleEndian!r});"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "print(status, before, after)"
    )
    _write_plan_with_items(path, 64 << 20)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    status, before, after = run.stdout.split()[-3:]
    assert status == CANNOT_UNDERSTAND
    assert int(after) - int(before) < 20 * 1024, (before, after)  # KiB: under 20 MB more


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_a_length_near_4_gb_on_a_short_file_allocates_nothing(syntax: str) -> None:
    """Every saved input, and a Specific Character Set whose length field says 4 GB, checked
    in a process that may not reserve 1 GB of address space: a read sized by the length field
    instead of the file raises MemoryError there (on a machine that overcommits, it passes
    unnoticed until the pages are touched)."""
    body = encode(f.rt_plan(), syntax)
    first = parse(body, implicit=syntax == ImplicitVRLittleEndian, little=True)[0]
    assert first.tag == 0x00080005  # the factory's Specific Character Set, replaced
    if syntax == ImplicitVRLittleEndian:
        charset = struct.pack("<HHL", 0x0008, 0x0005, 0xFFFFFFF0) + b"ISO_IR 100"
    else:
        charset = struct.pack("<HH2s2xL", 0x0008, 0x0005, b"UN", 0xFFFFFFF0) + b"ISO_IR 100"
    inputs = [(charset + body[first.end :]).hex()]
    inputs += [p.read_bytes().hex() for p in sorted(REGRESSIONS.iterdir())]
    script = (
        "import resource, sys, warnings; warnings.simplefilter('ignore');"
        "from services.scp_listener.lean import keep_lean; keep_lean();"
        "from tests.fuzz.harness import check_one, check_input;"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        f"inputs = {inputs!r};"
        f"print('=', check_one(bytes.fromhex(inputs[0]), {sop.RT_PLAN!r}, {syntax!r}));"
        "print('=', *(check_input(bytes.fromhex(i)) for i in inputs[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    # the ingest logs to stdout too
    built, rest = (line.split()[1:] for line in run.stdout.splitlines() if line.startswith("= "))
    assert built == [CANNOT_UNDERSTAND]
    assert rest == [FOUND[p.name][1] for p in sorted(REGRESSIONS.iterdir())]


def _write_plan_with_items(path: Path, size: int) -> None:
    from tests.fuzz.harness import spool_bytes

    body = encode(f.rt_plan(), ExplicitVRLittleEndian)
    item_body = struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 6) + b"CODE01"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(item_body)) + item_body
    count = size // len(item)
    header = struct.pack("<HH2s2xL", 0x0008, 0x1032, b"SQ", len(item) * count)
    at = next(s.start for s in parse(body, implicit=False, little=True) if s.tag > 0x00081032)
    with path.open("wb") as out:
        head = spool_bytes(body[:at], sop.RT_PLAN, ExplicitVRLittleEndian)
        out.write(head)
        out.write(header)
        for _ in range(count // 4096):
            out.write(item * 4096)
        out.write(item * (count % 4096))
        out.write(body[at:])


def test_a_plan_the_fuzzer_started_from_is_still_stored() -> None:
    body = encode(f.rt_plan(), ExplicitVRLittleEndian)
    assert check_one(body, sop.RT_PLAN, ExplicitVRLittleEndian) == STORED
