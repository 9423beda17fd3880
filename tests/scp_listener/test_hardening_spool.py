"""Issue 15: the receive spool leaks nothing (a refused object, a hostile nesting depth, a
connection cut mid-data set, a restart) and nesting depth is bounded."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config

from tests import dicom_factories as f
from tests.scp_listener.test_scp import RT_PLAN_STORAGE, counts
from tests.support import RunningScp, send_file_as_is, spooled, wait_for

_CREATOR = struct.pack("<HH", 0x4011, 0x0010) + b"LO" + struct.pack("<H", 10) + b"RTOPS TEST"
_SQ = struct.pack("<HH", 0x4011, 0x1010) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
_ITEM = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _explicit_plan(path: Path) -> Path:
    ds = f.rt_plan()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return f.write(ds, path)


def nested_plan(path: Path, depth: int) -> Path:
    """A valid plan followed by a private sequence nested ``depth`` deep, undefined lengths."""
    _explicit_plan(path)
    with path.open("ab") as out:
        out.write(_CREATOR + (_SQ + _ITEM) * depth + (_ITEM_END + _SEQ_END) * depth)
    return path


def spool_files(scp: RunningScp) -> list[Path]:
    return spooled(scp.settings.spool_dir())


def test_deep_nesting_is_refused_with_c210_and_leaves_nothing(
    scp: RunningScp, tmp_path: Path
) -> None:
    status = send_file_as_is(
        scp.dicom_port,
        nested_plan(tmp_path / "deep.dcm", 500),
        sop_class_uid=RT_PLAN_STORAGE,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert status == 0xC210  # not 0xC211 (an exception in the handler)
    assert spool_files(scp) == []
    assert counts(scp) == (0, 0, 0)


def test_nesting_at_the_bound_is_accepted_and_one_more_is_refused(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    # The plan itself nests 3 levels (beam > control point > device position).
    scp = start_scp(scp_max_sequence_depth=5)
    ok = nested_plan(tmp_path / "ok.dcm", 5)
    too_deep = nested_plan(tmp_path / "deep.dcm", 6)
    for path, expected in ((ok, 0x0000), (too_deep, 0xC210)):
        status = send_file_as_is(
            scp.dicom_port,
            path,
            sop_class_uid=RT_PLAN_STORAGE,
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        assert status == expected, path.name
    assert spool_files(scp) == []
    assert counts(scp)[0] == 1


def test_a_connection_cut_mid_data_set_leaves_no_spool_file(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    scp = start_scp(scp_max_pdu=16384)  # many small PDUs: the cut falls mid-data set
    big = f.rt_plan()
    big.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    big.add_new(0x00091010, "OB", b"\x00" * (32 << 20))  # a 32 MB private value
    big.add_new(0x00090010, "LO", "RTOPS TEST")
    path = f.write(big, tmp_path / "big.dcm")

    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(RT_PLAN_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
    assert assoc.is_established

    # Slow the sender down (loopback would deliver 32 MB before the test could cut it).
    channel = assoc.dul.socket
    assert channel is not None
    send_pdu = channel.send

    def slow_send(data: bytes) -> None:
        send_pdu(data)
        time.sleep(0.002)

    channel.send = slow_send  # type: ignore[method-assign]

    def send() -> None:
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            assoc.send_c_store(path)
        except Exception:  # the cut is the point
            pass
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    wait_for(
        lambda: any(p.stat().st_size > (1 << 20) for p in spool_files(scp)),
        10,
        0.01,
        "a partial data set in the spool",
    )
    sock = assoc.dul.socket.socket
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)  # the cable pulled: no A-ABORT
    sender.join(30)
    wait_for(lambda: spool_files(scp) == [], 15, 0.05, "the spool emptied")
    assert counts(scp) == (0, 0, 0)


def test_the_spool_is_emptied_at_start(
    start_scp: Callable[..., RunningScp], base_settings: dict[str, object]
) -> None:
    spool = Path(str(base_settings["var_dir"])) / "spool"
    spool.mkdir(parents=True)
    for n in range(3):
        (spool / f"tmp{n}.dcm").write_bytes(b"\x00" * 1024)
    scp = start_scp()
    assert scp.settings.spool_dir() == spool
    assert spool_files(scp) == []


def test_received_files_are_spooled_in_the_spool_directory(scp: RunningScp, tmp_path: Path) -> None:
    """The spool is ours (0700), not the shared /tmp, and a stored object leaves it empty."""
    path = _explicit_plan(tmp_path / "plan.dcm")
    assert pydicom.dcmread(path).SOPClassUID == RT_PLAN_STORAGE
    status = send_file_as_is(
        scp.dicom_port,
        path,
        sop_class_uid=RT_PLAN_STORAGE,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert status == 0x0000
    spool = scp.settings.spool_dir()
    assert spool.stat().st_mode & 0o777 == 0o700
    assert spool_files(scp) == []


def test_an_exception_in_the_handler_leaves_no_spool_file(
    scp: RunningScp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom removes the file only when the handler returns; a bug raising out of it
    (answered 0xC211 by pynetdicom) must not leave it either."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in rtops")

    monkeypatch.setattr(scp.app.state.ingestor, "ingest", broken)
    status = send_file_as_is(
        scp.dicom_port,
        _explicit_plan(tmp_path / "plan.dcm"),
        sop_class_uid=RT_PLAN_STORAGE,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert status == 0xC211
    assert spool_files(scp) == []
