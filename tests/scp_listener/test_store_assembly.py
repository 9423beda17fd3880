"""C-STORE requests assembled from P-DATA fragments without pynetdicom's per-message objects
(services/scp_listener/store_assembly.py, issue 14): the command set read as pynetdicom reads
it, fragments in any split across PDUs stored whole, everything else left to pynetdicom."""

from __future__ import annotations

import struct
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import _config, evt
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage

from services.scp_listener import store_assembly
from tests import dicom_factories as f
from tests.scp_listener.test_hash_on_receive import assert_index_matches_files, indexed
from tests.scp_listener.test_pdu_reader import _element, _pdu, associate, raw_association
from tests.support import RunningScp, spooled, wait_for


def _encoded_command(primitive: Any, message: DIMSEMessage) -> bytes:
    message.primitive_to_message(primitive)
    command = b""
    for pdata in message.encode_msg(1, 0):
        for _, value in pdata.presentation_data_value_list:
            if value[0] & 1:
                command += bytes(value[1:])
    return command


def _pynetdicoms_reading(command: bytes, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)  # no association here
    message = DIMSEMessage()
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((1, b"\x03" + command))
    pdata.presentation_data_value_list.append((1, b"\x02\x08\x00"))
    assert message.decode_msg(pdata)
    return message.message_to_primitive()


def _store(**kw: Any) -> C_STORE:
    request = C_STORE()
    request.MessageID = kw.get("message_id", 7)
    request.AffectedSOPClassUID = kw.get("sop_class", CTImageStorage)
    request.AffectedSOPInstanceUID = kw.get("sop_instance", "1.2.3.4.5")
    request.Priority = kw.get("priority", 0x0002)
    if "move_ae" in kw:
        request.MoveOriginatorApplicationEntityTitle = kw["move_ae"]
        request.MoveOriginatorMessageID = kw["move_id"]
    request.DataSet = BytesIO(b"\x08\x00")
    return request


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"sop_instance": "1.2.3.45", "message_id": 65535, "priority": 0x0001},
        {"sop_instance": "1." + "2" * 62},  # 64 characters
        {"move_ae": "QR_SCP", "move_id": 3},
        {"move_ae": "QR SCP 2", "move_id": 65535},
    ],
)
def test_the_command_set_is_read_as_pynetdicom_reads_it(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = _encoded_command(_store(**fields), C_STORE_RQ())
    ours = store_assembly.store_request(command)
    theirs = _pynetdicoms_reading(command, monkeypatch)
    assert ours is not None
    for keyword in (
        "MessageID",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "Priority",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
    ):
        assert getattr(ours, keyword) == getattr(theirs, keyword), keyword
    assert ours.is_valid_request


def _minimal_store_command(replace: dict[int, bytes] | None = None) -> bytes:
    elements = {
        0x0002: str(CTImageStorage).encode() + b"\x00",
        0x0100: struct.pack("<H", 0x0001),
        0x0110: struct.pack("<H", 1),
        0x0700: struct.pack("<H", 0),
        0x0800: struct.pack("<H", 0x0000),
        0x1000: b"1.2.3.4",
    } | (replace or {})
    return b"".join(_element(tag, value) for tag, value in sorted(elements.items()) if value)


def test_anything_else_is_left_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert store_assembly.store_request(_encoded_command(echo, C_ECHO_RQ())) is None
    assert store_assembly.store_request(_minimal_store_command()) is not None
    refused = {
        "no data set": _minimal_store_command({0x0800: struct.pack("<H", 0x0101)}),
        "no instance UID": _minimal_store_command({0x1000: b""}),
        "a UID not in ASCII": _minimal_store_command({0x1000: "1.2.\u00e9".encode()}),
        "a Message ID of 4 bytes": _minimal_store_command({0x0110: b"\x01\x00\x00\x00"}),
        "an element it does not expect": _minimal_store_command() + _element(0x0600, b"AB"),
        "an element twice": _minimal_store_command() + _element(0x1000, b"1.2"),
        "a truncated element": _minimal_store_command()[:-3],
    }
    for why, command in refused.items():
        assert store_assembly.store_request(command) is None, why


def _data_set(ds: pydicom.Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_fragments_in_any_split_are_stored_whole(start_scp: Callable[..., RunningScp]) -> None:
    """The command in two fragments over two PDUs, its last fragment sharing a PDU with the
    data set's first, and the data set's last in a PDU of its own."""
    scp = start_scp(scp_max_pdu=16384)
    assoc, raw, context_id = raw_association(scp.dicom_port)
    ds = f.cbct_series(n_slices=1, rows=64, columns=64)[0]
    command = _minimal_store_command({0x1000: str(ds.SOPInstanceUID).encode()})
    data = _data_set(ds)
    raw.sendall(_pdu([(context_id, 0x01, command[:20])]))
    raw.sendall(_pdu([(context_id, 0x03, command[20:]), (context_id, 0x00, data[:3000])]))
    raw.sendall(_pdu([(context_id, 0x00, data[3000:6000])]))
    raw.sendall(_pdu([(context_id, 0x02, data[6000:])]))
    wait_for(lambda: len(indexed(scp)) == 1, 10, message="the object stored")
    assert_index_matches_files(scp, 1)
    [(key, _, _)] = indexed(scp)
    stored = pydicom.dcmread(scp.settings.object_store() / key)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert spooled(scp.settings.spool_dir()) == []
    assoc.release()


def test_a_command_inside_a_data_set_aborts_and_leaves_nothing(
    start_scp: Callable[..., RunningScp],
) -> None:
    scp = start_scp(scp_max_pdu=16384)
    assoc, raw, context_id = raw_association(scp.dicom_port)
    raw.sendall(_pdu([(context_id, 0x03, _minimal_store_command())]))
    raw.sendall(_pdu([(context_id, 0x00, b"\x08\x00" * 2000)]))
    wait_for(lambda: any(spooled(scp.settings.spool_dir())), 10, message="a spool file")
    raw.sendall(_pdu([(context_id, 0x03, _minimal_store_command())]))  # PS3.7 6.3.1
    wait_for(lambda: assoc.is_aborted, 10, message="A-ABORT from the SCP")
    wait_for(lambda: not spooled(scp.settings.spool_dir()), 10, message="empty spool")
    assert indexed(scp) == []


def _dul(**kw: Any) -> Any:
    handlers: dict[Any, list[Any]] = kw.pop("handlers", {})
    empty = SimpleNamespace(empty=lambda: True)
    assoc = SimpleNamespace(is_acceptor=True, get_handlers=lambda e: handlers.get(e, []))
    return SimpleNamespace(
        assoc=assoc,
        state_machine=SimpleNamespace(current_state=kw.get("state", "Sta6")),
        event_queue=kw.get("events", empty),
        _recv_pdu=empty,
    )


def test_taken_only_where_pynetdicom_would_just_pass_it_on() -> None:
    assert store_assembly.takes(_dul())  # type: ignore[arg-type]
    assert not store_assembly.takes(_dul(state="Sta13"))  # type: ignore[arg-type]
    waiting = SimpleNamespace(empty=lambda: False)
    assert not store_assembly.takes(_dul(events=waiting))  # type: ignore[arg-type]
    for event in (evt.EVT_DIMSE_RECV, evt.EVT_DATA_RECV, evt.EVT_PDU_RECV):
        bound = _dul(handlers={event: [print]})
        assert not store_assembly.takes(bound), event  # type: ignore[arg-type]


def test_a_bound_dimse_handler_sees_every_store(
    start_scp: Callable[..., RunningScp], tmp_path: Path
) -> None:
    scp = start_scp()
    seen: list[Any] = []
    for assoc_server in [scp.app.state.dicom_server]:
        assoc_server.bind(evt.EVT_DIMSE_RECV, lambda event: seen.append(event.message))
    paths = f.write_series(f.cbct_series(n_slices=2, rows=64, columns=64), tmp_path / "ct")
    assoc = associate(scp.dicom_port, max_pdu=0)
    for path in paths:
        assert int(assoc.send_c_store(path).Status) == 0
    assoc.release()
    assert len(seen) == 2
    assert_index_matches_files(scp, 2)


def test_a_store_command_it_does_not_read_is_stored_by_pynetdicom(
    start_scp: Callable[..., RunningScp],
) -> None:
    """A command set with an element pynetdicom ignores (Move Destination, (0000,0600), in a
    C-STORE-RQ): left to pynetdicom, stored, and answered."""
    scp = start_scp(scp_max_pdu=16384)
    assoc, raw, context_id = raw_association(scp.dicom_port)
    ds = f.cbct_series(n_slices=1, rows=64, columns=64)[0]
    command = _minimal_store_command(
        {0x1000: str(ds.SOPInstanceUID).encode(), 0x0600: b"OTHER_AE        "}
    )
    assert store_assembly.store_request(command) is None
    data = _data_set(ds)
    # Pause this requestor's reactor, as its own send_c_store() does, or it takes the
    # response off the queue first (and logs it as an unexpected C-STORE).
    assoc._reactor_checkpoint.clear()
    wait_for(lambda: assoc._is_paused, 5, 0.0001, "the requestor's reactor paused")
    try:
        raw.sendall(_pdu([(context_id, 0x03, command), (context_id, 0x00, data[:5000])]))
        raw.sendall(_pdu([(context_id, 0x02, data[5000:])]))
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None and response.Status == 0x0000
    assoc.release()  # an image's row comes after its answer, before the release is read
    assert_index_matches_files(scp, 1)
