"""Reading PDUs off the socket: within the maximum length we advertised, and with one copy.

pynetdicom's DUL thread (``DULServiceProvider._read_pdu_data``) reads whatever length a PDU's
header announces, 4 KiB per ``recv`` into a growing ``bytearray``, and then copies it three or
four more times (the whole PDU to ``bytes``, each PDV out of it, each fragment without its
message control header) before the fragment reaches the spool file. It never compares the
length with the Maximum Length it advertised (PS3.8 D.3.3.1): with no limit advertised, one
64 MB element sent in one P-DATA-TF PDU drove the SCP to 417 MB (issue 15), and a header
announcing 4 GiB would be read for as long as the peer sends.

``install`` replaces that one method with ``read_pdu``, which

* refuses a P-DATA-TF PDU longer than the Maximum Length this side advertised, and any other
  PDU longer than ``OTHER_PDU_LIMIT``, before reading its body: the DUL's state machine gets
  Evt19 (invalid PDU), so it sends an A-ABORT and ends the association as for any other
  invalid PDU (PS3.8 9.2.3, AA-8); what the peer goes on sending is read and thrown away, in
  pieces, until it stops or the ARTIM timer closes the connection, and a warning is logged;
* reads the body with ``recv_into`` into one buffer of the announced size (one copy from the
  kernel, as many bytes per call as have arrived), and hands a P-DATA-TF's fragments on as
  ``memoryview`` slices of that buffer, so the spool file is written straight from it.

A P-DATA-TF that ``store_assembly`` takes (an established association's C-STORE request)
goes there, without a state machine event; everything else (the state machine, DIMSE
assembly, the events ``EVT_DATA_RECV`` and ``EVT_PDU_RECV`` when a handler is bound) stays
pynetdicom's. What this saved is measured in docs/scp_performance.md.
"""

from __future__ import annotations

import struct
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem

from services.scp_listener import store_assembly

log = structlog.get_logger(__name__)

P_DATA_TF_TYPE = 0x04
_PDU_TYPES = frozenset(range(0x01, 0x08))  # PS3.8 9.3.1: A-ASSOCIATE-RQ .. A-ABORT
# A-ASSOCIATE-RQ/AC/RJ, A-RELEASE-RQ/RP and A-ABORT have no advertised limit. An association
# request with 128 presentation contexts of 30 transfer syntaxes each and user identity items
# at their 64 KiB maximum stays well under this.
OTHER_PDU_LIMIT = 1 << 20
# Bodies up to this size are read into a buffer allocated up front; a longer one (possible only
# with no limit advertised) grows with what actually arrives, so a header that merely announces
# gigabytes allocates nothing.
_PREALLOCATE = 4 << 20
_CHUNK = 1 << 20
_DRAIN = 64 << 10
# Set on a DUL that refused a PDU (to the words of the refusal): whatever its peer sends after
# that is the rest of the refused PDU, never a PDU header.
_REFUSED = "_rtops_refused_pdu"


# pynetdicom's own reader, kept for the comparison in bench/scp_pdu_micro.py.
PYNETDICOM_READ_PDU = DULServiceProvider._read_pdu_data


def install() -> None:
    DULServiceProvider._read_pdu_data = read_pdu  # type: ignore[method-assign]


def refusal(dul: DULServiceProvider) -> str | None:
    """Why this connection's PDU was refused (None: none was)."""
    return getattr(dul, _REFUSED, None) or None


def advertised_limit(dul: DULServiceProvider) -> int:
    """The Maximum Length this side advertised for P-DATA-TF PDUs (0: none)."""
    assoc: Any = dul.assoc
    user = assoc.requestor if assoc.is_requestor else assoc.acceptor
    return int(user.maximum_length or 0)


def read_pdu(dul: DULServiceProvider) -> None:
    """Read one PDU, queue it and its state machine event (the contract of pynetdicom's
    ``_read_pdu_data``: Evt17 for a closed or short connection, Evt19 for an invalid PDU)."""
    sock: Any = dul.socket
    if getattr(dul, _REFUSED, False):
        _drain(sock)
        return
    try:
        header = _recv_exactly(sock.socket, 6)
    except (OSError, TimeoutError, AttributeError):
        header = None
    if header is None:
        dul.event_queue.put("Evt17")  # transport connection closed
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in _PDU_TYPES:
        log.warning(f"unknown PDU type 0x{pdu_type:02X} received", peer=_peer(dul))
        dul.event_queue.put("Evt19")
        return
    limit = advertised_limit(dul) if pdu_type == P_DATA_TF_TYPE else OTHER_PDU_LIMIT
    if limit and length > limit:
        _refuse(dul, pdu_type, length, limit)
        return
    try:
        body = _recv_body(sock.socket, length)
    except (OSError, TimeoutError, AttributeError):
        body = None
    if body is None:
        dul.event_queue.put("Evt17")
        return
    try:
        if pdu_type == P_DATA_TF_TYPE:
            values = presentation_data_values(body)
            if store_assembly.takes(dul):
                store_assembly.receive_fragments(dul, values)
                return
            pdu, event = _p_data(dul, header, body, values), "Evt10"
        else:
            pdu, event = dul._decode_pdu(bytearray(header + body))
    except Exception:
        log.exception("could not decode a received PDU", peer=_peer(dul), pdu_type=pdu_type)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def presentation_data_values(body: bytearray) -> list[tuple[int, memoryview]]:
    """A P-DATA-TF's presentation data values as (context ID, view into ``body``) (PS3.8
    9.3.5.1: each item is a 4-byte length, the presentation context ID, then the message
    control header and the fragment)."""
    view = memoryview(body)
    values = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise ValueError("truncated presentation data value item")
        (item_length,) = struct.unpack_from(">L", body, offset)
        if item_length < 2 or offset + 4 + item_length > end:
            raise ValueError(f"presentation data value item length {item_length} is invalid")
        values.append((body[offset + 4], view[offset + 5 : offset + 4 + item_length]))
        offset += 4 + item_length
    if not values:
        raise ValueError("P-DATA-TF without a presentation data value item")
    return values


def _p_data(
    dul: DULServiceProvider,
    header: bytes,
    body: bytearray,
    values: list[tuple[int, memoryview]],
) -> P_DATA_TF:
    """pynetdicom's P-DATA-TF of these values (views into ``body``)."""
    assoc = dul.assoc
    if assoc.get_handlers(evt.EVT_DATA_RECV):
        evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": header + bytes(body)})
    pdu = P_DATA_TF()
    items = pdu.presentation_data_value_items
    for context_id, value in values:
        item = PresentationDataValueItem()
        item.presentation_context_id = context_id
        item.presentation_data_value = value  # type: ignore[assignment]
        items.append(item)
    if assoc.get_handlers(evt.EVT_PDU_RECV):
        evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
    return pdu


def _refuse(dul: DULServiceProvider, pdu_type: int, length: int, limit: int) -> None:
    assoc: Any = dul.assoc
    kind = "P-DATA-TF" if pdu_type == P_DATA_TF_TYPE else f"type 0x{pdu_type:02X}"
    detail = (
        f"a {kind} PDU of {length} bytes is longer than the {limit} bytes this SCP accepts "
        "(RTOPS_SCP_MAX_PDU; PS3.8 D.3.3.1)"
    )
    setattr(dul, _REFUSED, detail)
    log.warning(
        f"aborted the association: {detail}",
        reason="pdu_too_long",
        peer=_peer(dul),
        calling_ae=str(getattr(assoc.requestor, "ae_title", "")).strip(),
        pdu_length=length,
        limit=limit,
    )
    dul.event_queue.put("Evt19")  # the state machine sends the A-ABORT


def _drain(sock: Any) -> None:
    """Throw away what a peer whose PDU we refused still sends, as long as it keeps sending
    (so that it can finish its write and read our A-ABORT): pynetdicom closes the connection
    the first time nothing is waiting, and the ARTIM timer bounds the whole."""
    try:
        data = sock.socket.recv(_DRAIN) if sock.socket is not None else b""
    except (OSError, TimeoutError):
        data = b""
    if not data:
        sock.close()  # Evt17


def _recv_exactly(raw: Any, n: int) -> bytes | None:
    """``n`` bytes (a PDU header: far below ``_PREALLOCATE``), or None if the connection ended
    first."""
    buffer = _recv_body(raw, n)
    return None if buffer is None else bytes(buffer)


def _recv_body(raw: Any, length: int) -> bytearray | None:
    if length <= _PREALLOCATE:
        buffer = bytearray(length)
        view = memoryview(buffer)
        got = 0
        while got < length:
            read = raw.recv_into(view[got:])
            if not read:
                return None
            got += read
        return buffer
    grown = bytearray()
    while len(grown) < length:
        data = raw.recv(min(_CHUNK, length - len(grown)))
        if not data:
            return None
        grown += data
    return grown


def _peer(dul: DULServiceProvider) -> str:
    requestor: Any = dul.assoc.requestor
    return f"{requestor.address}:{requestor.port}"
