"""Test support: run the SCP app for real (uvicorn in a thread), read a test's JetStream
stream, and send DICOM with pynetdicom or DCMTK."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import nats
import pydicom
import uvicorn
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy import MetaData
from sqlalchemy.orm import Session, sessionmaker

from services.scp_listener.app import SERVICE, create_app
from services.scp_listener.settings import ScpSettings
from shared.db import drop_schema, ensure_schema, make_engine, migrate, session_factory
from shared.events import CloudEvent, parse_event
from shared.settings import RtopsSettings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MIGRATIONS = REPO / "services" / "scp_listener" / "migrations"


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
        from services.scp_listener.store import Outbox
        from shared.db import session_factory
        from shared.outbox import outbox_depth

        engine = make_engine(self.settings, SERVICE)
        try:
            factory = session_factory(engine)
            wait_for(lambda: outbox_depth(factory, Outbox) == 0, timeout, 0.1, "empty outbox")
        finally:
            engine.dispose()


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


@contextlib.contextmanager
def scratch_database(
    settings: RtopsSettings, name: str, metadata: MetaData
) -> Iterator[sessionmaker[Session]]:
    """Tables of ``metadata`` in a database (or PostgreSQL schema) of their own, dropped after."""
    engine = make_engine(settings, name)
    ensure_schema(engine, settings, name)
    metadata.create_all(engine)
    try:
        yield session_factory(engine)
    finally:
        drop_schema(engine, settings, name)
        engine.dispose()


def drop_test_schema(settings: ScpSettings) -> None:
    engine = make_engine(settings, SERVICE)
    try:
        drop_schema(engine, settings, SERVICE)
    finally:
        engine.dispose()


# ---------------------------------------------------------------- events


async def _stream_events(url: str, stream: str) -> list[CloudEvent]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        events: list[CloudEvent] = []
        if info.state.messages == 0:
            return events
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            if msg.data is not None:
                events.append(parse_event(msg.data))
        return events
    finally:
        await nc.close()


def stream_events(settings: ScpSettings) -> list[CloudEvent]:
    try:
        return asyncio.run(_stream_events(settings.resolved_nats_url(), settings.stream_name))
    except nats.js.errors.NotFoundError:
        return []


def await_events(
    settings: ScpSettings, count: int, *, timeout: float = 30.0, settle: float = 1.0
) -> list[CloudEvent]:
    """Wait until ``count`` events are in the stream, then ``settle`` seconds for any extra
    (which the caller's exact assertions would then catch)."""
    wait_for(
        lambda: len(stream_events(settings)) >= count,
        timeout,
        0.2,
        f"{count} events in {settings.stream_name}",
    )
    time.sleep(settle)
    return stream_events(settings)


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
