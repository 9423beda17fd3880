"""The SCP's PDU reader (services/scp_listener/pdu_reader.py, issues 14 and 15): a PDU longer
than the maximum length we advertised is refused with an A-ABORT before its body is read, and
data sets still arrive whole, in every transfer syntax the SCP accepts, from DCMTK and
pynetdicom senders, with fragments split across many PDUs."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import CTImageStorage
from structlog.testing import capture_logs

from services.scp_listener import pdu_reader
from tests import dicom_factories as f
from tests.scp_listener.test_hash_on_receive import assert_index_matches_files, indexed
from tests.support import RunningScp, pynetdicom_echo, spooled, storescu, wait_for


def associate(port: int, syntaxes: list[str] | None = None, max_pdu: int = 16384) -> Any:
    ae = AE(ae_title="TRUEBEAM1")
    for syntax in syntaxes or [ExplicitVRLittleEndian]:
        ae.add_requested_context(CTImageStorage, syntax)
    ae.maximum_pdu_size = max_pdu
    assoc = ae.associate("127.0.0.1", port, ae_title="RTOPS")
    assert assoc.is_established
    return assoc


def raw_association(port: int) -> tuple[Any, Any, int]:
    """An association (16 KiB PDUs), its socket to write PDUs by hand, and its context ID."""
    assoc = associate(port)
    return assoc, assoc.dul.socket.socket, assoc.accepted_contexts[0].context_id


def p_data_header(length: int) -> bytes:
    return struct.pack(">BBL", 0x04, 0x00, length)


def test_installed_at_scp_import() -> None:
    import services.scp_listener.scp  # noqa: F401

    assert DULServiceProvider._read_pdu_data is pdu_reader.read_pdu


def test_p_data_longer_than_advertised_is_aborted_unread(
    start_scp: Callable[..., RunningScp],
) -> None:
    scp = start_scp(scp_max_pdu=16384)
    assoc = associate(scp.dicom_port)
    raw = assoc.dul.socket.socket
    with capture_logs() as logs:
        # One byte over the limit: refused from the header alone (the body never comes).
        raw.sendall(p_data_header(16385))
        wait_for(lambda: assoc.is_aborted, 10, message="A-ABORT from the SCP")
    refused = [e for e in logs if e.get("reason") == "pdu_too_long"]
    assert refused and refused[0]["pdu_length"] == 16385 and refused[0]["limit"] == 16384
    assert spooled(scp.settings.spool_dir()) == []
    # Counted once, and on the problems page (its connection closes after the A-ABORT).
    metric = 'rtops_scp_rejections_total{reason="pdu_too_long"} 1.0'
    wait_for(lambda: metric in httpx.get(f"{scp.http}/metrics").text, 10, message=metric)
    problems = scp.app.state.problems.newest_first()
    assert [p.reason for p in problems] == ["pdu_too_long"]
    assert "16385 bytes" in problems[0].detail
    # The SCP goes on serving.
    path = f.write(f.cbct_series(n_slices=1)[0], scp.settings.var_dir / "in" / "ct.dcm")
    again = associate(scp.dicom_port)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assert int(again.send_c_store(path).Status) == 0
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        again.release()


def test_refused_mid_data_set_leaves_nothing(start_scp: Callable[..., RunningScp]) -> None:
    """A sender that ignores the limit part-way through a data set: the fragments already
    written to the spool go with the aborted association, and nothing is stored."""
    scp = start_scp(scp_max_pdu=16384)
    assoc, raw, context_id = raw_association(scp.dicom_port)
    ds = f.cbct_series(n_slices=1)[0]
    command = (
        # A C-STORE-RQ command set (Implicit VR LE, PS3.7 9.3.1.1), the minimum pynetdicom needs
        _element(0x0000_0002, str(CTImageStorage).encode() + b"\x00")
        + _element(0x0000_0100, struct.pack("<H", 0x0001))
        + _element(0x0000_0110, struct.pack("<H", 1))
        + _element(0x0000_0700, struct.pack("<H", 0))
        + _element(0x0000_0800, struct.pack("<H", 0x0000))
        + _element(0x0000_1000, str(ds.SOPInstanceUID).encode().ljust(64, b"\x00")[:64])
    )
    command = _element(0x0000_0000, struct.pack("<L", len(command))) + command
    raw.sendall(_pdu([(context_id, 0x03, command)]))
    raw.sendall(_pdu([(context_id, 0x00, b"\x08\x00" * 2000)]))  # a first data set fragment
    wait_for(lambda: any(spooled(scp.settings.spool_dir())), 10, message="a spool file")
    raw.sendall(p_data_header(1 << 30))
    wait_for(lambda: assoc.is_aborted, 10, message="A-ABORT from the SCP")
    wait_for(lambda: not spooled(scp.settings.spool_dir()), 10, message="empty spool")
    assert indexed(scp) == []


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _pdu(items: list[tuple[int, int, bytes]]) -> bytes:
    body = b"".join(
        struct.pack(">LBB", len(data) + 2, context_id, control) + data
        for context_id, control, data in items
    )
    return p_data_header(len(body)) + body


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no PDV item at all
        struct.pack(">LB", 1, 1),  # an item too short for its control header
        struct.pack(">LBB", 50, 1, 3) + b"x" * 10,  # an item longer than the PDU
    ],
    ids=["empty", "item-too-short", "item-overruns"],
)
def test_malformed_p_data_is_aborted(start_scp: Callable[..., RunningScp], body: bytes) -> None:
    scp = start_scp(scp_max_pdu=16384)
    assoc = associate(scp.dicom_port)
    assoc.dul.socket.socket.sendall(p_data_header(len(body)) + body)
    wait_for(lambda: assoc.is_aborted, 10, message="A-ABORT from the SCP")


def encapsulated_ct(syntax: str, folder: Path) -> Path:
    """A 512 x 512 CT slice in ``syntax``: native pixels for the uncompressed syntaxes, one
    fragment of 512 KiB of stand-in bytes for the encapsulated ones (the SCP stores them as
    they are; nothing decodes pixels)."""
    ds = f.cbct_series(n_slices=1, rows=512, columns=512, transfer_syntax_uid=syntax)[0]
    if UID(syntax).is_encapsulated:
        del ds[0x7FE00010]
        ds.add_new(0x7FE00010, "OB", encapsulate([bytes(range(256)) * 2048]))
        ds[0x7FE00010].is_undefined_length = True  # PS3.5 A.4: encapsulated
    return f.write(ds, folder / f"{syntax}.dcm")


def every_syntax(folder: Path) -> list[tuple[str, Path]]:
    return [(str(s), encapsulated_ct(str(s), folder)) for s in ALL_TRANSFER_SYNTAXES]


def test_every_transfer_syntax_in_16k_pdus_from_pynetdicom(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    """Each data set of some 512 KiB crosses 32 PDUs: the stored file is the sent data set."""
    scp = start_scp(scp_max_pdu=16384)
    files = every_syntax(tmp_path)
    # One association, a context per syntax (45 of the 128 allowed).
    assoc = associate(scp.dicom_port, [s for s, _ in files])
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        statuses = {syntax: int(assoc.send_c_store(path).Status) for syntax, path in files}
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert statuses == {syntax: 0 for syntax, _ in files}
    assert_index_matches_files(scp, len(files))
    stored = {sha for _, sha, _ in indexed(scp)}
    # What arrived is the file's data set exactly: same bytes after the file meta.
    for _, path in files:
        assert _dataset_sha(path) in {_dataset_sha_of_stored(scp, sha) for sha in stored}


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[f._dataset_offset(data) :]


def _dataset_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(_dataset_bytes(path)).hexdigest()


def _dataset_sha_of_stored(scp: RunningScp, sha: str) -> str:
    for key, row_sha, _ in indexed(scp):
        if row_sha == sha:
            return _dataset_sha(scp.settings.object_store() / key)
    raise AssertionError(sha)


def test_every_transfer_syntax_in_16k_pdus_from_dcmtk(
    start_scp: Callable[..., RunningScp],
    dcmtk: dict[str, str],
    tmp_path: Path,
) -> None:
    """DCMTK 3.6 sends each file over an association of its own here: proposing one SOP class
    in many transfer syntaxes at once, storescu picks a context it then cannot convert to."""
    scp = start_scp(scp_max_pdu=16384)
    # storescu proposes a compressed syntax only when told which (its -x options).
    syntaxes = {
        "1.2.840.10008.1.2": [],  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1": [],  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99": ["-xd"],  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2": ["-xb"],  # Explicit VR Big Endian
        "1.2.840.10008.1.2.4.50": ["-xy"],  # JPEG Baseline
        "1.2.840.10008.1.2.4.70": ["-xs"],  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80": ["-xt"],  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90": ["-xv"],  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.5": ["-xr"],  # RLE Lossless
    }
    for syntax, options in syntaxes.items():
        path = encapsulated_ct(syntax, tmp_path)
        sent = storescu(dcmtk["storescu"], scp.dicom_port, [path], extra=options)
        assert sent.returncode == 0, syntax + sent.stdout + sent.stderr
    assert_index_matches_files(scp, len(syntaxes))


def test_a_header_announcing_gigabytes_allocates_nothing(
    start_scp: Callable[..., RunningScp],
) -> None:
    """With no limit advertised (``scp_max_pdu=0``) a P-DATA-TF header of 4 GiB followed by a
    closed connection ends the association; the reader grows its buffer with what arrives."""
    scp = start_scp(scp_max_pdu=0)
    assoc = associate(scp.dicom_port)
    raw = assoc.dul.socket.socket
    raw.sendall(p_data_header(0xFFFF_FFFF) + b"\x00" * 100)
    time.sleep(0.2)
    raw.close()
    wait_for(lambda: not assoc.is_established, 10, message="association ended")
    assert int(pynetdicom_echo(scp.dicom_port).Status) == 0


@pytest.mark.parametrize("reader", ["ours", "pynetdicom"])
def test_the_read_path_micro_benchmark_runs(reader: str) -> None:
    """bench/scp_pdu_micro.py, kept from rotting: both readers assemble a data set."""
    from bench.scp_pdu_micro import run

    assert pdu_reader.PYNETDICOM_READ_PDU is not pdu_reader.read_pdu  # a real comparison
    assert run(reader, 16384, 20) >= 0
