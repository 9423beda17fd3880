"""C-STORE served on the DUL thread that received it, and the DUL's idle wait that ends when
the peer sends (services/scp_listener/inline_store.py, issue 14)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom import AE, association, dul
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.scp_listener import inline_store
from services.scp_listener.service import Ingestor
from tests import dicom_factories as f
from tests.scp_listener.test_hash_on_receive import indexed
from tests.support import RunningScp, pynetdicom_echo, storescu


def test_installed_at_scp_import() -> None:
    import services.scp_listener.scp  # noqa: F401

    assert DIMSEServiceProvider.__init__ is inline_store._dimse_init
    assert DIMSEServiceProvider.send_msg is inline_store.send_msg
    assert isinstance(dul.time, inline_store._SocketClock)
    assert isinstance(association.time, inline_store._ReactorClock)


def test_stores_are_served_on_the_dul_thread_and_the_rest_by_the_reactor(
    start_scp: Callable[..., RunningScp],
    dcmtk: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served_on: list[threading.Thread] = []
    ingest = Ingestor.ingest

    def recording(self: Ingestor, *args: Any, **kwargs: Any) -> Any:
        served_on.append(threading.current_thread())
        return ingest(self, *args, **kwargs)

    monkeypatch.setattr(Ingestor, "ingest", recording)
    scp = start_scp()
    paths = f.write_series(f.cbct_series(n_slices=6), tmp_path / "cbct")
    # DCMTK sends the six over one association and releases it: every object stored, in
    # order, each by the thread that read its PDUs, and the release still answered.
    run = storescu(dcmtk["storescu"], scp.dicom_port, paths)
    assert run.returncode == 0, run.stderr
    assert len(served_on) == 6
    assert all(isinstance(t, DULServiceProvider) for t in served_on)
    assert len(indexed(scp)) == 6
    # C-ECHO is not a C-STORE: pynetdicom's reactor answers it as before.
    assert pynetdicom_echo(scp.dicom_port).Status == 0x0000


def test_idle_dul_wakes_when_its_peer_sends() -> None:
    mine, peer = socket.socketpair()
    woke: list[float] = []

    def idle() -> None:
        start = time.perf_counter()
        dul.time.sleep(2.0)  # what DULServiceProvider.run_reactor calls when idle
        woke.append(time.perf_counter() - start)

    # A DUL thread as run_reactor is one: a DULServiceProvider with an open socket.
    thread = DULServiceProvider.__new__(DULServiceProvider)
    threading.Thread.__init__(thread, target=idle)
    thread.socket = SimpleNamespace(socket=mine)  # type: ignore[assignment]
    try:
        thread.start()
        time.sleep(0.05)
        peer.send(b"\x04")
        thread.join(5)
    finally:
        mine.close()
        peer.close()
    assert woke and woke[0] < 1.0


def test_sleep_outside_a_dul_thread_sleeps() -> None:
    start = time.perf_counter()
    dul.time.sleep(0.05)
    assert time.perf_counter() - start >= 0.05


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "status", "message_id"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", 0x0000, 1),  # odd-length class UID
        ("1.2.840.10008.5.1.4.1.1.481.5", "1.2.3.45", 0x0000, 65535),  # even-length
        ("1.2.840.10008.5.1.4.1.1.481.2", "1." + "2" * 62, 0xB000, 7),  # 64 characters
        ("1.2.840.10008.5.1.4.1.1.2", None, 0xA700, 2),  # no instance UID: left out
    ],
)
def test_status_only_response_is_the_bytes_pynetdicom_encodes(
    sop_class: str, sop_instance: str | None, status: int, message_id: int
) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = message.encode_msg(1, 16384)
    assert pdata.presentation_data_value_list == [
        (1, b"\x03" + inline_store.store_response_command(rsp))
    ]


def test_a_response_with_an_error_comment_takes_pynetdicoms_way() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.Status = 0xC210
    rsp.ErrorComment = "the object is truncated"
    assert inline_store.store_response_command(rsp) is None


def test_a_response_whose_uid_is_not_ascii_takes_pynetdicoms_way() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.\u00e9"
    rsp.Status = 0x0000
    assert inline_store.store_response_command(rsp) is None


def test_the_acceptors_reactor_is_woken_by_a_release_and_an_echo(
    start_scp: Callable[..., RunningScp], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no wake-up the reactor would look at its queues only every 30 s: both the C-ECHO
    # (the DIMSE message queue) and the A-RELEASE (the DUL's queue to the user) must wake it.
    monkeypatch.setattr(inline_store, "REACTOR_IDLE", 30.0)
    scp = start_scp()
    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
    assert assoc.is_established
    time.sleep(0.2)  # the reactor is asleep by now
    start = time.perf_counter()
    assert assoc.send_c_echo().Status == 0x0000
    echoed = time.perf_counter() - start
    time.sleep(0.2)
    start = time.perf_counter()
    assoc.release()
    released = time.perf_counter() - start
    assert assoc.is_released
    assert echoed < 5.0 and released < 5.0


def test_the_reactor_clock_waits_for_its_wake_up_only_in_an_acceptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inline_store, "REACTOR_IDLE", 30.0)
    clock = association.time
    assert isinstance(clock, inline_store._ReactorClock)
    wake = threading.Event()
    woke: list[float] = []

    def reactor() -> None:
        start = time.perf_counter()
        clock.sleep(0.001)  # what Association._run_reactor calls between looks
        woke.append(time.perf_counter() - start)

    for acceptor in (True, False):
        woke.clear()
        thread = threading.Thread(target=reactor)
        thread.is_acceptor = acceptor  # type: ignore[attr-defined]
        setattr(thread, inline_store._WAKE, wake)
        thread.start()
        time.sleep(0.2)
        inline_store.WakingQueue(wake).put("A-RELEASE")
        thread.join(5)
        assert woke
        # an acceptor waits for the put; a requestor keeps pynetdicom's 1 ms poll
        assert (woke[0] >= 0.2) is acceptor and woke[0] < 5
        wake.clear()
