"""C-STORE requests assembled from P-DATA fragments on the thread that read them, without
pynetdicom's per-message objects.

For every P-DATA-TF PDU pynetdicom queues a state machine event, runs the transition (Sta6 +
Evt10, DT-2: "issue a P-DATA indication", PS3.8 9.2), builds a P-DATA primitive, and hands
it to its DIMSE provider, which decodes the request's command set with pydicom into a
Dataset and copies it into a C-STORE primitive element by element: about 9 % of the wall
time of a 0.5 MiB CBCT slice (docs/scp_performance.md). For a C-STORE request,
``receive_fragments`` does the same work directly: it reads the command set (implicit VR
little endian, PS3.7 6.3.1 and 9.3.1.1) with ``struct``, writes the data set's fragments
into a hashing spool file exactly as pynetdicom would (preamble, "DICM", the same File Meta,
then the fragments: the stored bytes and their address do not change), and serves the
complete request through the association's own ``_serve_request``, as ``inline_store``
does.

pynetdicom keeps everything else, PDU by PDU: any PDU while the association is not
established (Sta6) or while pynetdicom has events of its own waiting, any association with an
``EVT_DIMSE_RECV``, ``EVT_DATA_RECV`` or ``EVT_PDU_RECV`` handler bound, and every message
that is not a C-STORE request or whose command set this module does not read exactly as
pynetdicom would (an element it does not expect, a value that is not plain ASCII, no data
set): its command is handed to pynetdicom as one fragment and the rest of its fragments
follow it there.
"""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from services.scp_listener import receive

_C_STORE_RQ = 0x0001  # PS3.7 9.3.1.1, Command Field
_NO_DATA_SET = 0x0101  # PS3.7 E.1, Command Data Set Type
_PREAMBLE = b"\x00" * 128 + b"DICM"  # PS3.10 7.1
_STATE = "_rtops_store_assembly"
_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian: group, element, length
_US = struct.Struct("<H")
# (0000,eeee) elements of a C-STORE-RQ and how to read them (PS3.7 Table 9.3-1).
_UID, _SHORT, _AE, _LENGTH = range(4)
_STORE_RQ_ELEMENTS = {
    0x0000: _LENGTH,  # Command Group Length
    0x0002: _UID,  # Affected SOP Class UID
    0x0100: _SHORT,  # Command Field
    0x0110: _SHORT,  # Message ID
    0x0700: _SHORT,  # Priority
    0x0800: _SHORT,  # Command Data Set Type
    0x1000: _UID,  # Affected SOP Instance UID
    0x1030: _AE,  # Move Originator Application Entity Title
    0x1031: _SHORT,  # Move Originator Message ID
}


class Assembly:
    """One association's message in progress."""

    __slots__ = ("command", "context_id", "request", "spool")

    def __init__(self) -> None:
        self.command = bytearray()
        self.request: C_STORE | None = None
        self.context_id = 0
        self.spool: receive.SpoolFile | None = None

    def reset(self) -> None:
        self.command = bytearray()
        self.request = None
        self.spool = None


def takes(dul: DULServiceProvider) -> bool:
    """Whether this P-DATA-TF PDU may be received here rather than through the state machine
    (which would only pass it on to the DIMSE provider, Sta6 staying Sta6)."""
    assoc: Any = dul.assoc
    return (
        assoc.is_acceptor
        and dul.state_machine.current_state == "Sta6"
        and dul.event_queue.empty()
        and dul._recv_pdu.empty()
        and _config.STORE_RECV_CHUNKED_DATASET
        and not assoc.get_handlers(evt.EVT_DIMSE_RECV)
        and not assoc.get_handlers(evt.EVT_DATA_RECV)
        and not assoc.get_handlers(evt.EVT_PDU_RECV)
    )


def discard_partial(assoc: Any) -> None:
    """Remove the spool file of a data set still arriving (here, or in pynetdicom's message,
    which keeps it and removes nothing) when its connection closed or its association
    aborted."""
    state: Assembly | None = getattr(assoc, _STATE, None)
    spool = state.spool if state is not None else None
    if state is not None:
        state.reset()
    if spool is None:
        message = getattr(getattr(assoc, "dimse", None), "message", None)
        spool = getattr(message, "_data_set_file", None)
    if spool is not None:
        receive.discard_partial(spool, f"{assoc.requestor.address}:{assoc.requestor.port}")


def receive_fragments(dul: DULServiceProvider, fragments: list[tuple[int, memoryview]]) -> None:
    """Take one P-DATA-TF's presentation data values (context ID, message control header
    and fragment, PS3.8 E.2), in order."""
    assoc: Any = dul.assoc
    state: Assembly | None = getattr(assoc, _STATE, None)
    if state is None:
        state = Assembly()
        setattr(assoc, _STATE, state)
    dimse = assoc.dimse
    for context_id, value in fragments:
        if dimse.message is not None:  # a message pynetdicom is assembling: all of it there
            _to_pynetdicom(dimse, context_id, value)
            continue
        header = value[0]
        if header & 1:  # command
            if state.request is not None:
                # A command before the last fragment of the data set it announced: a
                # protocol error (PS3.7 6.3.1), which ends the association as pynetdicom's
                # undecodable messages do.
                _abort(dul, state)
                return
            state.command += value[1:]
            if header & 2:
                _command_complete(dul, state, context_id)
        elif state.request is None:
            _to_pynetdicom(dimse, context_id, value)  # a data set nobody announced here
        else:
            spool = state.spool
            assert spool is not None
            spool.write(value[1:])
            spool.file.flush()
            if header & 2:
                request, context = state.request, state.context_id
                state.reset()
                assoc._serve_request(request, context)
    # A response queued meanwhile (served here, or by pynetdicom's inline queue) is sent in
    # this turn of the DUL's loop, as after pynetdicom's own DT-2, not after its idle wait
    # (the loop looked at that queue before it read this PDU: one event for its head).
    if not dul.to_provider_queue.empty():
        dul._process_recv_primitive()


def _command_complete(dul: DULServiceProvider, state: Assembly, context_id: int) -> None:
    assoc: Any = dul.assoc
    command = bytes(state.command)
    state.command = bytearray()
    request = store_request(command)
    context = assoc._accepted_cx.get(context_id)
    if request is None or context is None:
        # pynetdicom's way: the command set whole as one last fragment
        _to_pynetdicom(assoc.dimse, context_id, memoryview(b"\x03" + command))
        return
    spool = receive.SpoolFile(delete=False, mode="wb", suffix=".dcm")
    spool.write(_PREAMBLE)
    receive._write_file_meta_info(
        spool,
        receive._create_file_meta(
            sop_class_uid=request.AffectedSOPClassUID,
            sop_instance_uid=request.AffectedSOPInstanceUID,
            transfer_syntax=context.transfer_syntax[0],
        ),
    )
    request._context_id = context_id
    request._dataset_path = Path(spool.name)
    request._dataset_file = spool
    state.request, state.context_id, state.spool = request, context_id, spool


def store_request(command: bytes) -> C_STORE | None:
    """The C-STORE request a command set encodes, or None when it is anything else or holds
    what pynetdicom would read differently."""
    values: dict[int, Any] = {}
    offset, end = 0, len(command)
    try:
        while offset < end:
            group, element, length = _ELEMENT.unpack_from(command, offset)
            offset += 8
            kind = _STORE_RQ_ELEMENTS.get(element)
            if group != 0 or kind is None or offset + length > end or element in values:
                return None
            raw = command[offset : offset + length]
            offset += length
            if kind == _SHORT:
                if length != 2:
                    return None
                (values[element],) = _US.unpack(raw)
            elif kind == _LENGTH:
                values[element] = length
            else:
                text = raw.decode("ascii")
                values[element] = text.rstrip("\0 ") if kind == _UID else text.strip()
    except (struct.error, UnicodeDecodeError):
        return None
    if (
        values.get(0x0100) != _C_STORE_RQ
        or values.get(0x0800, _NO_DATA_SET) == _NO_DATA_SET
        or not values.get(0x0002)
        or not values.get(0x1000)
        or 0x0110 not in values
    ):
        return None
    request = C_STORE()
    try:
        request.MessageID = values[0x0110]
        request.AffectedSOPClassUID = values[0x0002]
        request.AffectedSOPInstanceUID = values[0x1000]
        request.Priority = values.get(0x0700, 0x0000)
        if 0x1030 in values:
            request.MoveOriginatorApplicationEntityTitle = values[0x1030]
        if 0x1031 in values:
            request.MoveOriginatorMessageID = values[0x1031]
    except (TypeError, ValueError):
        return None
    request.DataSet = BytesIO()  # empty, as pynetdicom leaves it when the data set is in a file
    return request


def _to_pynetdicom(dimse: Any, context_id: int, value: memoryview) -> None:
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, value))  # type: ignore[arg-type]
    dimse.receive_primitive(primitive)


def _abort(dul: DULServiceProvider, state: Assembly) -> None:
    spool = state.spool
    state.reset()
    if spool is not None:
        spool.discard()
    dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT (PS3.8 9.2.3, AA-8)
