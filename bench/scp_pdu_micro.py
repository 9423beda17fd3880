"""The DUL's per-PDU receive path alone, in one thread: ``--pdus`` P-DATA-TF PDUs of
``--size`` bytes (data set fragments) read from a socket pair and taken through the DIMSE
assembly into a hashing spool file, by pynetdicom's own reader or by ``pdu_reader``. Run it
under callgrind for instruction counts of the loop alone (the load does not move them); it
prints CPU seconds too.

    RTOPS_BENCH_CALLGRIND=1 valgrind --tool=callgrind --instr-atstart=no \
        .venv/bin/python -m bench.scp_pdu_micro --reader ours --size 16384 --pdus 2000
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider

from services.scp_listener import pdu_reader, receive

CT = "1.2.840.10008.5.1.4.1.1.2"


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def command_set() -> bytes:
    body = (
        _element(0x0000_0002, CT.encode() + b"\x00")
        + _element(0x0000_0100, struct.pack("<H", 0x0001))
        + _element(0x0000_0110, struct.pack("<H", 1))
        + _element(0x0000_0700, struct.pack("<H", 0))
        + _element(0x0000_0800, struct.pack("<H", 0x0000))
        + _element(0x0000_1000, b"1.2.3.4\x00")
    )
    return _element(0x0000_0000, struct.pack("<L", len(body))) + body


def pdu(control: int, data: bytes) -> bytes:
    item = struct.pack(">LBB", len(data) + 2, 1, control) + data
    return struct.pack(">BBL", 0x04, 0, len(item)) + item


class FakeDul:
    """What the read path touches of a DULServiceProvider and its association."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = SimpleNamespace(socket=sock, recv=self._recv)
        self.event_queue: queue.Queue[str] = queue.Queue()
        self._recv_pdu: queue.Queue[Any] = queue.Queue()
        cx = SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])
        self.assoc = SimpleNamespace(
            get_handlers=lambda event: [],
            is_requestor=False,
            # not an acceptor: PDUs go through DT-2 as below, never store_assembly
            is_acceptor=False,
            acceptor=SimpleNamespace(maximum_length=0),
            requestor=SimpleNamespace(address="127.0.0.1", port=0, ae_title="X"),
            _accepted_cx={1: cx},
            _handlers={},
        )
        self.message = DIMSEMessage()

    def _recv(self, n: int) -> bytearray:
        # pynetdicom's AssociationSocket.recv, on this socket
        out = bytearray()
        while len(out) < n:
            chunk = self.socket.socket.recv(min(4096, n - len(out)))
            if not chunk:
                return out
            out.extend(chunk)
        return out

    def _decode_pdu(self, data: bytearray) -> Any:
        return DULServiceProvider._decode_pdu(self, data)  # type: ignore[arg-type]

    def deliver(self) -> bool:
        """The state machine's DT-2: the PDU to DIMSE; True when the message is complete."""
        self.event_queue.get_nowait()
        primitive = self._recv_pdu.get_nowait().to_primitive()
        return bool(self.message.decode_msg(primitive, self.assoc))


def run(reader: str, size: int, pdus: int) -> float:
    _config.STORE_RECV_CHUNKED_DATASET = True
    receive.install()
    read = pdu_reader.read_pdu if reader == "ours" else pdu_reader.PYNETDICOM_READ_PDU
    a, b = socket.socketpair()
    fragment = bytes(size - 12)
    stream = pdu(0x03, command_set()) + b"".join(
        pdu(0x02 if i == pdus - 1 else 0x00, fragment) for i in range(pdus)
    )
    writer = threading.Thread(target=a.sendall, args=(stream,))
    writer.start()
    dul = FakeDul(b)
    _instrument("on")
    started = time.process_time()
    read(dul)  # the command
    dul.deliver()
    done = False
    for _ in range(pdus):
        read(dul)
        done = dul.deliver()
    cpu = time.process_time() - started
    _instrument("off")
    writer.join()
    assert done, "the data set did not complete"
    dul.message._data_set_file.close()
    return cpu


def _instrument(state: str) -> None:
    """Under ``valgrind --tool=callgrind --instr-atstart=no``: count only the loop."""
    if os.environ.get("RTOPS_BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reader", choices=("ours", "pynetdicom"), default="ours")
    parser.add_argument("--size", type=int, default=16384, help="PDU length")
    parser.add_argument("--pdus", type=int, default=2000)
    args = parser.parse_args(argv)
    cpu = run(args.reader, args.size, args.pdus)
    each = cpu * 1e6 / args.pdus
    print(f"{args.reader}: {args.pdus} PDUs of {args.size} bytes, {each:.1f} us CPU each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
