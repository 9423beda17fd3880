"""Test support: run the SCP app for real (uvicorn in a thread), read a test's JetStream
stream, and send DICOM with pynetdicom or DCMTK."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import pydicom
import uvicorn
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener.app import SERVICE, create_app
from services.scp_listener.receive import RESERVE
from services.scp_listener.settings import ScpSettings
from shared.db import make_engine, migrate, session_factory
from shared.events import CloudEvent, parse_event
from shared.natsd import port_free
from tests.databases import drop_service_schema

REPO = Path(__file__).resolve().parents[1]
# Real vendor samples (sources and licences in tests/data/README.md).
TEST_DATA = REPO / "tests" / "data"
MIGRATIONS = REPO / "services" / "scp_listener" / "migrations"


def _ports_of_this_worker() -> Iterator[int]:
    """Ports below the kernel's ephemeral range, a slice of their own per xdist worker.

    A port from ``bind(0)`` is an ephemeral one: between the test choosing it and a service
    binding it seconds later, any outgoing connection on the machine may take it (a CI run
    lost a suite start to that). Below the range only listeners choose ports, and each
    worker's slice keeps two workers from choosing the same one."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    size = 1000
    start = max(1024, low - 16 * size) + (index % 16) * size
    offset = os.getpid() % size  # a rerun of the same worker starts elsewhere in its slice
    return itertools.cycle(start + (offset + k) % size for k in range(size))


_PORTS = _ports_of_this_worker()


def free_port(host: str = "127.0.0.1") -> int:
    """A port a test's service can listen on a while later (see ``_ports_of_this_worker``)."""
    for port in _PORTS:
        if port_free(port, host):
            return port
    raise AssertionError("no free port")  # pragma: no cover - cycle never ends


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class RunningScp:
    """The real SCP app: uvicorn (HTTP side) in a thread, whose lifespan starts the DICOM
    listener, the outbox relay and the series sweep. Ports are picked free."""

    def __init__(self, settings: ScpSettings) -> None:
        self.settings = settings
        engine = make_engine(settings, SERVICE)
        migrate(engine, settings, SERVICE, MIGRATIONS)
        engine.dispose()
        self.app = create_app(settings)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, message="SCP app startup")
        self.dicom_port: int = self.app.state.dicom_server.server_address[1]
        self.http_port: int = self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def wait_outbox_empty(self, timeout: float = 30.0) -> None:
        """Every queued event has been published and acknowledged by JetStream."""
        engine = make_engine(self.settings, SERVICE)
        try:
            factory = session_factory(engine)
            wait_for(lambda: _pending(factory)[0] == 0, timeout, 0.05, "empty outbox")
        finally:
            engine.dispose()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Nothing left to publish: the outbox is empty and no image series waits for its
        quiet time (a waiting series would publish an event later)."""
        engine = make_engine(self.settings, SERVICE)
        try:
            factory = session_factory(engine)
            wait_for(
                lambda: _pending(factory) == (0, 0), timeout, 0.05, "empty outbox, no dirty series"
            )
        finally:
            engine.dispose()


def _pending(factory: sessionmaker[Session]) -> tuple[int, int]:
    """(unsent outbox rows, image series still to publish)."""
    from services.scp_listener.store import ImageSeries, Outbox
    from shared.outbox import outbox_depth

    with factory() as session:
        dirty = session.scalar(
            select(func.count()).select_from(ImageSeries).where(ImageSeries.dirty.is_(True))
        )
    return outbox_depth(factory, Outbox), dirty or 0


def scp_settings(base: dict[str, object], **overrides: object) -> ScpSettings:
    values: dict[str, object] = {
        "scp_port": 0,
        "scp_host": "127.0.0.1",
        "scp_series_quiet_s": 0.5,
        "scp_sweep_interval_s": 0.2,
        **base,
        **overrides,
    }
    return ScpSettings(**values)  # type: ignore[arg-type]


def drop_test_schema(settings: ScpSettings) -> None:
    drop_service_schema(settings, SERVICE)


@contextmanager
def scp_rest_app(settings: ScpSettings) -> Iterator[Any]:
    """The SCP's app on a migrated database of its own, without DICOM or NATS
    (``background=False``): for REST and page tests that ingest through ``app.state.ingestor``.
    The schema goes away afterwards."""
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    engine.dispose()
    app = create_app(settings, background=False)
    try:
        yield app
    finally:
        app.state.runtime.close()
        drop_test_schema(settings)


# ---------------------------------------------------------------- events


async def _stream_events(url: str, stream: str) -> tuple[list[CloudEvent], int]:
    """Every event in the stream, and the stream's last sequence (0 when it has none)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return [], 0  # nothing was ever published
        events: list[CloudEvent] = []
        if info.state.messages == 0:
            return events, info.state.last_seq
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            if msg.data is not None:
                events.append(parse_event(msg.data))
        return events, info.state.last_seq
    finally:
        await nc.close()


def stream_events(settings: ScpSettings) -> list[CloudEvent]:
    return asyncio.run(_stream_events(settings.resolved_nats_url(), settings.stream_name))[0]


def await_events(scp: RunningScp, count: int, *, timeout: float = 30.0) -> list[CloudEvent]:
    """The stream's events once the SCP has nothing left to publish; exactly ``count`` of
    them, else AssertionError (too few after ``timeout``, or any extra).

    The outbox relay marks a row sent only after JetStream acknowledged it, so an idle SCP
    (``wait_idle``) means every event it will publish is in the stream: no settling sleep, and
    an unexpected extra event cannot arrive after the check.
    """
    url, stream = scp.settings.resolved_nats_url(), scp.settings.stream_name
    wait_for(
        lambda: len(asyncio.run(_stream_events(url, stream))[0]) >= count,
        timeout,
        0.1,
        f"{count} events in {stream}",
    )
    while True:
        scp.wait_idle(timeout)
        events, last_seq = asyncio.run(_stream_events(url, stream))
        scp.wait_idle(timeout)
        # Stable: nothing was published between the two idle checks.
        if asyncio.run(_stream_events(url, stream))[1] == last_seq:
            break
    assert len(events) == count, (
        f"expected exactly {count} events in {stream}, found {len(events)}: "
        f"{[e.type for e in events]}"
    )
    return events


def by_type(events: Iterable[CloudEvent], type_: str) -> list[CloudEvent]:
    return [e for e in events if e.type == type_]


# ---------------------------------------------------------------- senders


def read_for_sending(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # Files saved without file meta (some Monaco exports) are implicit VR little endian.
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def pynetdicom_store(
    port: int, paths: Iterable[Path], *, calling: str = "TRUEBEAM1", called: str = "RTOPS"
) -> list[int]:
    """Send files over one association; returns each C-STORE status."""
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association {'rejected' if assoc.is_rejected else 'failed'}")
    statuses = []
    try:
        for path in paths:
            rsp = assoc.send_c_store(read_for_sending(path))
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        assoc.release()
    return statuses


def send_file_as_is(
    port: int,
    path: Path,
    *,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    calling: str = "TRUEBEAM1",
    called: str = "RTOPS",
) -> int:
    """Send a file's data set bytes exactly as they are in the file (pynetdicom's chunked
    send: nothing is decoded or re-encoded), in a context of its own transfer syntax; returns
    the C-STORE status. The SOP class sent is the file meta's Media Storage SOP Class UID."""
    from pynetdicom import _config

    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class_uid, transfer_syntax_uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionRefusedError("association not established")
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    return int(rsp.Status) if "Status" in rsp else -1


def spooled(spool: Path) -> list[Path]:
    """The files in an SCP's receive spool that hold data: besides them it keeps at most
    ``receive.RESERVE`` empty files created ahead, and one just taken may be empty until its
    preamble is written (a file being received holds at least its 128-byte preamble and
    "DICM")."""
    files = sorted(p for p in spool.iterdir() if p.is_file()) if spool.exists() else []
    empty = [p for p in files if p.stat().st_size == 0]
    assert len(empty) <= RESERVE + 1, f"{len(empty)} empty spool files: more than the reserve"
    return [p for p in files if p not in empty]


def pynetdicom_echo(port: int, *, calling: str = "TRUEBEAM1", called: str = "RTOPS") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        if not assoc.is_established:
            return assoc
        return assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()


def storescu(
    tool: str,
    port: int,
    paths: Iterable[Path],
    *,
    calling: str = "TRUEBEAM1",
    called: str = "RTOPS",
    extra: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu, one association for all files; -R proposes only the files' classes."""
    cmd = [
        tool,
        "-R",
        "-aet",
        calling,
        "-aec",
        called,
        *extra,
        "127.0.0.1",
        str(port),
        *map(str, paths),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def stream_message_ids(url: str, stream: str) -> list[str]:
    """The ``Nats-Msg-Id`` of every message on ``stream``, in order: how tests and benchmarks
    count each event exactly once."""

    async def read() -> list[str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            ids = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
            return ids
        finally:
            await nc.close()

    return asyncio.run(read())
