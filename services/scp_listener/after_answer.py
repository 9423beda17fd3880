"""An image's index row, written after its C-STORE response has gone out (issue 14).

Success is answered once the object cannot be lost: its file is flushed and named in the
store's ``.recent/`` directory, which was flushed too (``ObjectStore.put``). The index row is
not part of that promise: a row lost to a crash or a failed write is written again by the
reconciliation from the ``.recent`` name (docs/scp_durability.md). An image queues no event,
so its row is only the index, and writing it before the response kept the sender waiting
for a SQL statement (about 0.5 ms of the ~10 ms a 0.5 MiB CBCT slice takes here).

``later(assoc, work)`` keeps that write for the association; the DUL thread does it right
after it has sent the next PDU of data (the response), while the sender reads and encodes its
next object, and before it reads anything more from the peer: a re-sent object then finds
its row, and the rows of an association's objects are all there before its release is
answered and its series are published. An association holds at most one such write. One
left when the connection ends (the response never sent) is done then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu import P_DATA_TF

log = structlog.get_logger(__name__)

Work = Callable[[], None]
_PYNETDICOM_SEND = DULServiceProvider._send


class _Slot:
    __slots__ = ("lock", "work")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work: Work | None = None


_slots: dict[Any, _Slot] = {}
_slots_lock = threading.Lock()


def later(assoc: Any, work: Work) -> None:
    """Do ``work`` after the association's next PDU of data is sent (its response)."""
    with _slots_lock:
        slot = _slots.setdefault(assoc, _Slot())
    done(assoc)  # an earlier one not done yet (never, as the C-STORE handler runs done first)
    with slot.lock:
        slot.work = work


def done(assoc: Any) -> None:
    """Do the association's kept write now, if any; a caller on another thread waits for the
    one in progress (the release's publication needs its row)."""
    slot = _slots.get(assoc)
    if slot is None:
        return
    with slot.lock:  # taken even when empty: the write may be in progress on another thread
        work, slot.work = slot.work, None
        if work is not None:
            _run(work)


def _run(work: Work) -> None:
    try:
        work()
    except Exception:  # the .recent name stays: the reconciliation writes the row
        log.exception("an index row written after its answer failed; the reconciliation adds it")


def forget(event: Event) -> None:
    """At the end of a connection: what is left is done, and the association forgotten."""
    done(event.assoc)
    with _slots_lock:
        _slots.pop(event.assoc, None)


def _send(self: DULServiceProvider, pdu: Any) -> None:
    try:
        _PYNETDICOM_SEND(self, pdu)
    finally:
        if isinstance(pdu, P_DATA_TF):
            done(self.assoc)


def install() -> None:
    DULServiceProvider._send = _send  # type: ignore[method-assign]
