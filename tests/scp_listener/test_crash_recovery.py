"""Crash at every step of a store (issue 14): the SCP as a real process is ended at one step
of one C-STORE (``RTOPS_SCP_CRASH_AT``, os._exit there) or killed from outside after the
answer or the publication, restarted, and the sender re-sends what was not answered success.
Then every object answered success is indexed once and its event is in the stream once, and
nothing else was published. A power cut is simulated too: the index commits no flush covered
are dropped after a kill, and the start-up reconciliation restores them and their events.

Each SCP is ``python -m services.scp_listener`` (one process), forked from a process that
imported it once (``Zygote``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification
from sqlalchemy import delete, select

from services.scp_listener.app import SERVICE
from services.scp_listener.settings import ScpSettings
from services.scp_listener.store import ArrivalHour, DicomObject, Outbox
from shared.db import make_engine, migrate, session_factory
from shared.events import TreatmentRecorded
from shared.events.base import event_id
from tests import dicom_factories as f
from tests.support import (
    MIGRATIONS,
    REPO,
    _stream_events,
    drop_test_schema,
    free_port,
    read_for_sending,
    wait_for,
)

OBJECTS = 3


class Zygote:
    """A process that imported the SCP once and forks every SCP these tests start: a fork
    starts in a fraction of a second where a fresh interpreter took 10 s of imports on this
    loaded machine. It imports only (no thread runs in it), so forking it is safe."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.scp_listener.test_crash_recovery", "--zygote"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def ask(self, **command: Any) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise AssertionError("the zygote process ended")
        return int(answer)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    yield z
    z.close()


@dataclass
class Scp:
    settings: ScpSettings
    zygote: Zygote
    env: dict[str, str]
    dicom_port: int
    http_port: int
    log: Path
    pid: int | None = None
    exit_code: int | None = None

    def start(self, **extra: str) -> None:
        self.exit_code = None
        self.pid = self.zygote.ask(op="start", env={**self.env, **extra}, log=str(self.log))
        wait_for(self._ready, timeout=60, interval=0.05, message="the SCP's /readyz")

    def _ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/readyz"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_exit(self) -> int:
        assert self.pid is not None
        self.exit_code = self.zygote.ask(op="wait", pid=self.pid)
        return self.exit_code

    def signal(self, signum: int) -> int:
        assert self.pid is not None
        if self.exit_code is None:
            self.zygote.ask(op="signal", pid=self.pid, signum=signum)
            self.wait_exit()
        return self.exit_code  # type: ignore[return-value]

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.pid is not None:
            self.signal(signal.SIGTERM)


@pytest.fixture
def scp(base_settings: dict[str, Any], tmp_path: Path, zygote: Zygote) -> Iterator[Scp]:
    settings = ScpSettings(**base_settings)
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    engine.dispose()
    dicom_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "RTOPS_VAR_DIR": str(settings.var_dir),
        "RTOPS_NATS_URL": settings.resolved_nats_url(),
        "RTOPS_DATABASE_SCHEMA_PREFIX": settings.database_schema_prefix,
        "RTOPS_STREAM_NAME": settings.stream_name,
        "RTOPS_SUBJECT_PREFIX": settings.subject_prefix,
        "RTOPS_SCP_HOST": "127.0.0.1",
        "RTOPS_SCP_PORT": str(dicom_port),
        "RTOPS_SCP_HTTP_HOST": "127.0.0.1",
        "RTOPS_SCP_HTTP_PORT": str(http_port),
        "RTOPS_SCP_PROCESSES": "1",
        "RTOPS_LOG_FORMAT": "console",
    }
    env.pop("RTOPS_SCP_CRASH_AT", None)
    if settings.database_url:
        env["RTOPS_DATABASE_URL"] = settings.database_url
    running = Scp(settings, zygote, env, dicom_port, http_port, tmp_path / "scp.log")
    try:
        yield running
    finally:
        running.stop()
        drop_test_schema(settings)


def _records(tmp_path: Path) -> list[Path]:
    return [
        f.write(f.treatment_record(plan_uid="1.2.3", fraction_number=i), tmp_path / f"r{i}.dcm")
        for i in range(1, OBJECTS + 1)
    ]


def _send(port: int, paths: list[Path]) -> list[int]:
    """C-STORE each file over one association: its status, or -1 when none came back (the
    association ended); nothing more is sent after that."""
    ae = AE(ae_title="TRUEBEAM1")
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="RTOPS")
    statuses = [-1] * len(paths)
    if not assoc.is_established:
        return statuses
    for i, path in enumerate(paths):
        rsp = assoc.send_c_store(read_for_sending(path))
        if "Status" not in rsp:
            break
        statuses[i] = int(rsp.Status)
    if assoc.is_established:
        assoc.release()
    return statuses


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _index(settings: ScpSettings) -> tuple[Counter[str], list[str], int]:
    """(index rows per UID, outbox event ids, outbox rows not yet sent)."""
    engine = make_engine(settings, SERVICE)
    try:
        with session_factory(engine)() as session:
            uids = Counter(session.scalars(select(DicomObject.sop_instance_uid)))
            outbox = session.execute(select(Outbox.event_id, Outbox.sent_at)).all()
    finally:
        engine.dispose()
    return uids, [r.event_id for r in outbox], sum(r.sent_at is None for r in outbox)


def _published(settings: ScpSettings) -> Counter[str]:
    events, _ = asyncio.run(_stream_events(settings.resolved_nats_url(), settings.stream_name))
    return Counter(e.id for e in events)


def _expected_ids(paths: list[Path]) -> set[str]:
    return {event_id(TreatmentRecorded.type, f"{_uid(p)}:1") for p in paths}


def _settle_and_check(scp: Scp, paths: list[Path], answered: set[int]) -> None:
    """Every object answered success is indexed once, its event published once; nothing
    else was published."""
    wait_for(lambda: _index(scp.settings)[2] == 0, timeout=30, message="an empty outbox")
    uids, outbox_ids, _ = _index(scp.settings)
    for i in answered:
        assert uids[_uid(paths[i])] == 1, f"object {i} was answered success but is not indexed"
    assert set(uids.values()) <= {1}
    expected = _expected_ids([paths[i] for i in answered])
    wait_for(
        lambda: expected <= set(_published(scp.settings)),
        timeout=30,
        message="every answered object's event in the stream",
    )
    published = _published(scp.settings)
    assert all(n == 1 for n in published.values()), f"published twice: {published}"
    # Only events of objects that are indexed (answered, or stored before the crash).
    assert set(published) == _expected_ids([p for p in paths if uids[_uid(p)]])
    assert Counter(outbox_ids) == Counter(published)


IN_PROCESS_STEPS = [
    "received",  # the data set is in the spool, nothing stored yet
    "file_fsynced",
    "renamed",  # in .recent, its directory not flushed yet
    "recent_fsynced",  # durable, no key link yet
    "linked",  # under its key, the transaction not committed
    "committed",  # committed, success not answered yet
]


# RTOPS_CRASH_REPEAT=n runs every crash n times with the object that crashes moving through
# 1..OBJECTS ("many times": run once with 5 and reported in docs/scp_durability.md).
REPEAT = range(int(os.environ.get("RTOPS_CRASH_REPEAT") or 1))


@pytest.mark.parametrize("repeat", REPEAT)
@pytest.mark.parametrize("step", IN_PROCESS_STEPS)
def test_crash_at_a_step_of_a_store(scp: Scp, tmp_path: Path, step: str, repeat: int) -> None:
    paths = _records(tmp_path)
    nth = 2 if repeat == 0 else 1 + repeat % OBJECTS
    scp.start(RTOPS_SCP_CRASH_AT=f"{step}:{nth}")  # the nth object's store ends there
    statuses = _send(scp.dicom_port, paths)
    assert statuses == [0] * (nth - 1) + [-1] * (OBJECTS - nth + 1), statuses
    assert scp.wait_exit() == 70

    scp.start()
    # The sender retries what was not answered success: stored now (or a duplicate).
    assert _send(scp.dicom_port, paths[nth - 1 :]) == [0] * (OBJECTS - nth + 1)
    _settle_and_check(scp, paths, answered=set(range(OBJECTS)))


@pytest.mark.parametrize("step", ["file_fsynced", "renamed", "recent_fsynced"])
def test_crash_at_a_flush_step_while_another_connection_is_open(
    scp: Scp, tmp_path: Path, step: str
) -> None:
    """With a second connection open, the process flushes on the receiving thread, one step
    after the other (services/scp_listener/connections.py): the same recovery holds."""
    paths = _records(tmp_path)
    scp.start(RTOPS_SCP_CRASH_AT=f"{step}:2")
    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(Verification)
    idle = ae.associate("127.0.0.1", scp.dicom_port, ae_title="RTOPS")
    assert idle.is_established
    try:
        assert _send(scp.dicom_port, paths) == [0, -1, -1]
        assert scp.wait_exit() == 70
    finally:
        idle.abort()
    scp.start()
    assert _send(scp.dicom_port, paths[1:]) == [0, 0]
    _settle_and_check(scp, paths, answered=set(range(OBJECTS)))


def test_crash_after_an_image_is_answered_before_its_row(scp: Scp, tmp_path: Path) -> None:
    """An image's row is written after its answer (services/scp_listener/after_answer.py):
    the SCP ends between the two, at the second slice. Every slice answered success is
    indexed once after the restart, the second by the start-up round from its .recent name,
    without the sender sending it again."""
    slices = f.cbct_series(n_slices=OBJECTS, rows=16, columns=16)
    paths = [f.write(ds, tmp_path / f"s{i}.dcm") for i, ds in enumerate(slices)]
    scp.start(RTOPS_SCP_CRASH_AT="answered:2")
    statuses = _send(scp.dicom_port, paths)
    assert scp.wait_exit() == 70
    # The answer went out before the crash; the connection's end may reach the sender
    # before the bytes do.
    assert statuses[0] == 0 and statuses[1] in (0, -1) and statuses[2] == -1, statuses
    scp.start()
    unanswered = [p for p, status in zip(paths, statuses, strict=True) if status != 0]
    assert _send(scp.dicom_port, unanswered) == [0] * len(unanswered)
    uids, _, _ = _index(scp.settings)
    assert {_uid(p): 1 for p in paths} == dict(uids)


@pytest.mark.parametrize("when", ["answered", "published"])
def test_killed_after_the_answer(scp: Scp, tmp_path: Path, when: str) -> None:
    paths = _records(tmp_path)
    scp.start()
    assert _send(scp.dicom_port, paths[:2]) == [0, 0]
    if when == "published":
        expected = _expected_ids(paths[:2])
        wait_for(lambda: expected <= set(_published(scp.settings)), timeout=30)
    scp.kill()

    scp.start()
    assert _send(scp.dicom_port, paths[1:]) == [0, 0]  # a duplicate, then a new object
    _settle_and_check(scp, paths, answered={0, 1, 2})


@pytest.mark.parametrize("repeat", REPEAT)
@pytest.mark.parametrize("step", ["reconciled", "confirmed"])
def test_crash_in_a_confirmation_round(scp: Scp, tmp_path: Path, step: str, repeat: int) -> None:
    paths = _records(tmp_path)
    scp.start(RTOPS_SCP_CRASH_AT=step, RTOPS_SCP_CONFIRM_INTERVAL_S="0.2")
    # The round may end the process before any answer went out (it runs while the first
    # object is being stored): what was answered is whatever the sender saw.
    _send(scp.dicom_port, paths)
    assert scp.wait_exit() == 70

    scp.start()
    assert _send(scp.dicom_port, paths) == [0] * OBJECTS
    _settle_and_check(scp, paths, answered=set(range(OBJECTS)))


@pytest.mark.parametrize("repeat", REPEAT)
def test_a_power_cut_loses_index_commits_that_the_start_restores(
    scp: Scp, tmp_path: Path, repeat: int
) -> None:
    """No confirmation round ran (a long interval): every commit of this run may be lost in
    a power cut. Kill the SCP and drop them, as a machine that lost its un-flushed writes
    would find the database; the start-up round re-indexes every answered object from its
    file and queues its event again, under the same id (the stream keeps one)."""
    paths = _records(tmp_path)
    scp.start(RTOPS_SCP_CONFIRM_INTERVAL_S="3600")
    assert _send(scp.dicom_port, paths) == [0] * OBJECTS
    expected = _expected_ids(paths)
    wait_for(lambda: expected <= set(_published(scp.settings)), timeout=30)
    scp.kill()
    store = scp.settings.object_store()
    assert len(list((store / ".recent").iterdir())) == OBJECTS  # none confirmed
    engine = make_engine(scp.settings, SERVICE)
    try:
        with session_factory(engine).begin() as session:
            for table in (DicomObject, Outbox, ArrivalHour):
                session.execute(delete(table))
    finally:
        engine.dispose()

    scp.start()

    assert list((store / ".recent").iterdir()) == []  # restored and confirmed
    _settle_and_check(scp, paths, answered=set(range(OBJECTS)))
    assert _published(scp.settings) == Counter(dict.fromkeys(expected, 1))


def _serve() -> None:
    """``python -m services.scp_listener``, whose start-up runs the reconciliation before the
    DICOM port opens (app.py's ``start_dicom``)."""
    from services.scp_listener.__main__ import main

    main()


def _zygote() -> None:
    """Serve ``Zygote``'s commands, one JSON line each, answered by one integer line."""
    # Imported before any fork, in the entry point's order (it keeps pydicom lean first).
    import services.scp_listener.__main__  # noqa: F401
    import shared.web  # noqa: F401
    from services.scp_listener import app, reconcile  # noqa: F401

    for line in sys.stdin.buffer:
        command = json.loads(line)
        if command["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(command["env"], command["log"])
            answer = pid
        elif command["op"] == "wait":
            _, status = os.waitpid(command["pid"], 0)
            answer = os.waitstatus_to_exitcode(status)
        else:
            os.kill(command["pid"], command["signum"])
            answer = 0
        sys.stdout.write(f"{answer}\n")
        sys.stdout.flush()


def _child(env: dict[str, str], log: str) -> None:
    code = 0
    try:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(env)
        _serve()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    _zygote() if "--zygote" in sys.argv else _serve()
