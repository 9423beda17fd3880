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

``install`` changes two things, both through names pynetdicom looks up at run time:

* each DIMSE provider's message queue (``DIMSEServiceProvider.msg_queue``) serves a complete
  C-STORE request at once, on the DUL thread that decoded it, through the association's own
  ``_serve_request`` (the path pynetdicom itself takes for N-EVENT-REPORT requests, in a thread
  of their own). Everything else is queued for the reactor as before. The DUL thread is the
  only one that reads the socket and the only one that sends, so serving there changes no
  order: a peer waits for the response before it sends again (we negotiate one outstanding
  operation), and an A-RELEASE-RQ read afterwards still reaches the reactor after every
  C-STORE it follows;
* the DUL module's ``time.sleep``, which only its idle loop calls on the DUL thread, waits on
  that association's socket for at most the same time (``select``): the loop goes on as soon
  as the peer's next PDU arrives. Outside a DUL thread, or with no open socket, it sleeps.
"""

from __future__ import annotations

import queue
import select
import threading
import time
from typing import Any

from pynetdicom import dul
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider

_PYNETDICOM_DIMSE_INIT = DIMSEServiceProvider.__init__


class InlineStoreQueue(queue.Queue):  # type: ignore[type-arg]
    """The DIMSE message queue of one association: C-STORE requests are served on ``put``."""

    def __init__(self, provider: DIMSEServiceProvider) -> None:
        super().__init__()
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
    _PYNETDICOM_DIMSE_INIT(self, assoc)
    self.msg_queue = InlineStoreQueue(self)


class _SocketClock:
    """What ``pynetdicom.dul`` sees as its ``time`` module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

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


def install() -> None:
    DIMSEServiceProvider.__init__ = _dimse_init  # type: ignore[method-assign]
    dul.time = _SocketClock()  # type: ignore[attr-defined]
