"""A connection that closes before its A-ASSOCIATE-RQ ends its association at once.

pynetdicom's acceptor thread waits for the A-ASSOCIATE-RQ on its DUL's queue for the whole
ACSE timeout (``RTOPS_SCP_ASSOCIATION_REQUEST_TIMEOUT_S``, default 5 s). When the peer closes
first (Sta2 + Evt17: action AA-5, back to Sta1; PS3.8 9.2.3) the DUL thread stops, but nothing
tells the acceptor thread, which holds one of the process's ``RTOPS_SCP_MAX_ASSOCIATIONS`` until
the timeout. A connection reset by its peer (what many load balancers' TCP health checks and
port scanners do) is not even closed meanwhile: AA-5 only shuts the socket down, ``shutdown``
fails on a reset socket, and the close after it is skipped, so the connection also counts
against its address's ``RTOPS_SCP_MAX_ASSOCIATIONS_PER_PEER`` until then. Measured before this
module: two reset connections held their address's two slots for 4.9 s.

``install`` makes AA-5 also put ``None`` on the acceptor's queue, which pynetdicom's thread
takes for its timeout: it stops its DUL and closes the socket (``shutdown_request``).
"""

from __future__ import annotations

from pynetdicom import fsm
from pynetdicom.dul import DULServiceProvider

_AA_5 = "AA-5"  # the only action of Sta2 + Evt17 (fsm.TRANSITION_TABLE)
_PYNETDICOM_AA_5 = fsm.ACTIONS[_AA_5]


def _closed_before_request(dul: DULServiceProvider) -> str:
    next_state: str = _PYNETDICOM_AA_5[1](dul)
    if dul.assoc.is_acceptor:
        dul.to_user_queue.put(None)  # type: ignore[arg-type]
    return next_state


def install() -> None:
    description, _, next_state = _PYNETDICOM_AA_5
    fsm.ACTIONS[_AA_5] = (description, _closed_before_request, next_state)
