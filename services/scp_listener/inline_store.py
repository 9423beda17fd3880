"""C-STORE requests served on the thread that received them, and a DUL thread that wakes when
its peer sends instead of at the end of a fixed sleep.

pynetdicom hands every object through two polling threads. The DUL thread decodes the last
P-DATA-TF of a request and queues the message; the association's reactor, which sleeps 1 ms
between looks at that queue, picks it up and runs the handler; the response goes back into a
queue that the DUL thread, asleep 1 ms at a time whenever it found nothing to do, sends; and
after sending it the DUL thread sleeps again before it reads the sender's next request. A
sender such as ``storescu`` waits for each response before it sends the next object, so those
sleeps (about 2-3 ms per object) were most of the wall time a 0.5 MiB CBCT slice took beyond
DCMTK's (1.5 ms per slice on this machine; docs/scp_performance.md).

``install`` changes these, all through names pynetdicom looks up at run time:

* each DIMSE provider's message queue (``DIMSEServiceProvider.msg_queue``) serves a complete
  C-STORE request at once, on the DUL thread that decoded it, through the association's own
  ``_serve_request`` (the path pynetdicom itself takes for N-EVENT-REPORT requests, in a thread
  of their own). Everything else is queued for the reactor as before. (Most C-STORE requests
  no longer reach this queue: ``store_assembly`` serves them the same way without pynetdicom's
  DIMSE decoding; the queue serves those it leaves to pynetdicom.) The DUL thread is the
  only one that reads the socket and the only one that sends, so serving there changes no
  order: a peer waits for the response before it sends again (we negotiate one outstanding
  operation), and an A-RELEASE-RQ read afterwards still reaches the reactor after every
  C-STORE it follows;
* the DUL module's ``time.sleep``, which only its idle loop calls on the DUL thread, waits on
  that association's socket for at most the same time (``select``): the loop goes on as soon
  as the peer's next PDU arrives. Outside a DUL thread, or with no open socket, it sleeps;
* the association's reactor, which pynetdicom wakes every 1 ms to look for work (a release, an
  abort, a C-ECHO), waits instead until the DUL hands it something (``WakingQueue``: the DIMSE
  message queue and the DUL's queue to the user, both filled on the DUL thread) or at most
  ``REACTOR_IDLE`` (what no queue announces: its DUL thread ending, its idle timer, a local
  kill). A thousand wake-ups a second, each taking the GIL from the thread that reads the
  peer's data, cost 0.3 ms of CPU per CBCT slice with one sender, and ten of them with ten;
* a C-STORE response that carries a status alone (every success) is encoded here, from the
  same values, instead of through a pydicom Dataset (``send_msg``: 1 ms per object). Other
  responses (with an Error Comment or an Offending Element), and any association with an
  ``EVT_DIMSE_SENT`` handler bound, take pynetdicom's way. The bytes are the same
  (tests/scp_listener/test_inline_store.py compares them).
"""

from __future__ import annotations

import queue
import select
import struct
import threading
import time
from typing import Any

from pynetdicom import association, dul, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

_PYNETDICOM_DIMSE_INIT = DIMSEServiceProvider.__init__
PYNETDICOM_SEND_MSG = DIMSEServiceProvider.send_msg
_C_STORE_RSP = 0x8001  # PS3.7 9.3.1.2, Command Field
_NO_DATA_SET = 0x0101  # PS3.7 E.1, Command Data Set Type
_LAST_COMMAND_FRAGMENT = b"\x03"  # PS3.8 E.2: command, last fragment
# pynetdicom's acceptor reactor polls with time.sleep(0.001) (Association._run_reactor).
_REACTOR_POLL = 0.001
REACTOR_IDLE = 0.05
_WAKE = "_rtops_wake"


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue whose ``put`` wakes the association's reactor."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()  # after the put: the reactor looks once more after every wake-up


class InlineStoreQueue(WakingQueue):
    """The DIMSE message queue of one association: C-STORE requests are served on ``put``,
    anything else wakes the reactor."""

    def __init__(self, provider: DIMSEServiceProvider, wake: threading.Event) -> None:
        super().__init__(wake)
        self._provider = provider

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, primitive = item
        assoc: Any = self._provider.assoc
        if (
            isinstance(primitive, C_STORE)
            and primitive.MessageIDBeingRespondedTo is None
            and assoc.is_acceptor
            and threading.current_thread() is assoc.dul
        ):
            assoc._serve_request(primitive, context_id)
            return
        super().put(item, block, timeout)


def _dimse_init(self: DIMSEServiceProvider, assoc: Any) -> None:
    # The association builds its DUL, then its DIMSE provider (Association.__init__), and
    # nothing is queued on either before its threads start.
    _PYNETDICOM_DIMSE_INIT(self, assoc)
    wake = threading.Event()
    setattr(assoc, _WAKE, wake)
    self.msg_queue = InlineStoreQueue(self, wake)
    assoc.dul.to_user_queue = WakingQueue(wake)


class _Clock:
    """The ``time`` module, but for a ``sleep`` of its own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _ReactorClock(_Clock):
    """What ``pynetdicom.association`` sees as its ``time`` module."""

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        wake = getattr(thread, _WAKE, None)
        # A requestor's reactor stays pynetdicom's: its user's release() and send_c_echo()
        # wait, 0.1 ms at a time, for the reactor to pause, which it does only after a sleep.
        if wake is None or seconds != _REACTOR_POLL or not getattr(thread, "is_acceptor", False):
            time.sleep(seconds)
            return
        wake.wait(REACTOR_IDLE)
        # Cleared before the reactor looks at its queues: a put after this wakes the next wait.
        wake.clear()


class _SocketClock(_Clock):
    """What ``pynetdicom.dul`` sees as its ``time`` module."""

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        sock = (
            getattr(thread.socket, "socket", None)
            if isinstance(thread, DULServiceProvider) and thread.socket is not None
            else None
        )
        if sock is None:
            time.sleep(seconds)
            return
        try:
            select.select([sock], [], [], seconds)
        except (OSError, ValueError):  # closed meanwhile
            time.sleep(seconds)


def _ui(tag: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"  # PS3.5 6.2: UI values are padded with NUL to an even length
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _us(tag: int, value: int) -> bytes:
    return struct.pack("<HHLH", tag >> 16, tag & 0xFFFF, 2, value)


def store_response_command(primitive: C_STORE) -> bytes | None:
    """The command set of a C-STORE response that carries only its status (implicit VR
    little endian, PS3.7 6.3.1 and 9.3.1.2), or None when it carries anything more."""
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    status = primitive.Status
    if not isinstance(status, int) or primitive.MessageIDBeingRespondedTo is None:
        return None
    try:
        body = _command_body(primitive, status)
    except UnicodeEncodeError:  # not a UID at all (a hostile peer's): pynetdicom's own way
        return None
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def _command_body(primitive: C_STORE, status: int) -> bytes:
    return b"".join(
        (
            _ui(0x00000002, primitive.AffectedSOPClassUID)
            if primitive.AffectedSOPClassUID
            else b"",
            _us(0x00000100, _C_STORE_RSP),
            _us(0x00000120, primitive.MessageIDBeingRespondedTo),
            _us(0x00000800, _NO_DATA_SET),
            _us(0x00000900, status),
            _ui(0x00001000, primitive.AffectedSOPInstanceUID)
            if primitive.AffectedSOPInstanceUID
            else b"",
        )
    )


def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    # A status-only response (under 200 bytes) fits one PDU of any maximum from 256 bytes on.
    fits = not self.maximum_pdu_size or self.maximum_pdu_size >= 256
    command = (
        store_response_command(primitive)
        if isinstance(primitive, C_STORE)
        and fits
        and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        else None
    )
    if command is None:
        PYNETDICOM_SEND_MSG(self, primitive, context_id)
        return
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
    self.dul.send_pdu(pdata)


def install() -> None:
    DIMSEServiceProvider.__init__ = _dimse_init  # type: ignore[method-assign]
    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
    dul.time = _SocketClock()  # type: ignore[attr-defined]
    association.time = _ReactorClock()  # type: ignore[attr-defined]
