"""How many DICOM connections this process serves now, and so whether helper threads pay.

Three parts of a C-STORE's work can be handed to helper threads while the thread receiving it
goes on: hashing large fragments (``receive``), creating spool files ahead
(``receive.SpoolReserve``), and flushing the stored file and its ``.recent`` directory
(``ObjectStore.flush_ahead``). With one association in the process, the other core is idle:
handing them over took about 5% (hashing) and 0.3-0.5 ms per object (creating) off a CBCT's
wall time, and the flushes' 1.5 ms wait overlaps the reading of the header. With several,
each handover wakes a thread on a machine whose cores the other associations keep busy.
Ten senders on two processes of a 2-core machine (five associations each) took 13-15% longer
with hashing behind than with it inline, 12% longer with flushing ahead, and 7% longer with
the spool files created ahead, one wake-up of their thread per file (medians of 5-6 paired
runs; docs/scp_performance.md, "The tenth session"). So hashing and flushing are handed over
only while the process serves at most one connection (``alone``). Spool files are taken from
the reserve by every connection since its thread is woken once per sixteen files (``receive``,
"The thirteenth session").

scp.py counts the connections through pynetdicom's EVT_CONN_OPEN and EVT_CONN_CLOSE. A count
that drifted would only change which thread does the work, never its result.
"""

from __future__ import annotations

import threading
from typing import Any

_open = 0
_lock = threading.Lock()


def opened(_event: Any = None) -> None:
    global _open
    with _lock:
        _open += 1


def closed(_event: Any = None) -> None:
    global _open
    with _lock:
        _open -= 1


def alone() -> bool:
    """Whether this process serves at most one DICOM connection now."""
    return _open <= 1
