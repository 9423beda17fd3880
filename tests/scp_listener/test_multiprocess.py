"""Several SCP processes on one port (issue 14): the real ``python -m services.scp_listener``
with ``RTOPS_SCP_PROCESSES=2``, ten senders at once, a worker killed, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from services.scp_listener.app import SERVICE
from services.scp_listener.content_locks import shared_locks
from services.scp_listener.metrics import Problem, RecentProblems
from services.scp_listener.processes import (
    Balancer,
    ParentLink,
    WorkerInbox,
    receive_connections,
)
from services.scp_listener.settings import DEV_DEVICES
from services.scp_listener.store import DicomObject
from shared.db import make_engine, migrate, session_factory
from tests import dicom_factories as f
from tests.conftest import dcmtk_tool
from tests.support import (
    MIGRATIONS,
    REPO,
    drop_test_schema,
    free_port,
    pynetdicom_echo,
    pynetdicom_store,
    scp_settings,
    storescu,
    stream_message_ids,
    wait_for,
)

SENDERS = 10
SLICES = 10


@dataclass
class Scp:
    proc: subprocess.Popen[bytes]
    dicom_port: int
    http: str
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def pids(self, event: str) -> set[int]:
        return {line["pid"] for line in self.lines() if line.get("event") == event}

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.http}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


@pytest.fixture
def scp_processes(tmp_path: Path, base_settings: dict[str, object]) -> Iterator[Scp]:
    settings = scp_settings(base_settings)
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    engine.dispose()
    dicom_port, http_port = free_port(), free_port()
    registry = tmp_path / "devices.yaml"
    registry.write_text(DEV_DEVICES.read_text())
    env = {
        **os.environ,
        "RTOPS_VAR_DIR": str(settings.var_dir),
        "RTOPS_NATS_URL": str(base_settings["nats_url"]),
        "RTOPS_STREAM_NAME": settings.stream_name,
        "RTOPS_SUBJECT_PREFIX": settings.subject_prefix,
        "RTOPS_DATABASE_SCHEMA_PREFIX": settings.database_schema_prefix,
        "RTOPS_SCP_HOST": "127.0.0.1",
        "RTOPS_SCP_PORT": str(dicom_port),
        "RTOPS_SCP_HTTP_HOST": "127.0.0.1",
        "RTOPS_SCP_HTTP_PORT": str(http_port),
        "RTOPS_SCP_PROCESSES": "2",
        # Ten senders from one address: above the default of 4 per peer (docs/scp_scale.md).
        "RTOPS_SCP_MAX_ASSOCIATIONS_PER_PEER": "16",
        # Series publish at their association's release; a short quiet window would publish
        # a slow (loaded machine) series early and once more at its release.
        "RTOPS_SCP_SERIES_QUIET_S": "60",
        "RTOPS_SCP_SWEEP_INTERVAL_S": "0.2",
        "RTOPS_LOG_FORMAT": "json",
        "RTOPS_SCP_DEVICE_REGISTRY": str(registry),
        "RTOPS_SCP_DEVICE_REGISTRY_POLL_S": "0.5",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "scp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _on_two_cpus([sys.executable, "-m", "services.scp_listener"]),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    scp = Scp(proc, dicom_port, f"http://127.0.0.1:{http_port}", log)
    try:
        wait_for(lambda: _ready(scp), timeout=60, interval=0.2, message="SCP /readyz")
        wait_for(
            lambda: len(scp.pids("DICOM SCP listening")) == 2,
            timeout=60,
            message="two SCP processes listening",
        )
        yield scp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drop_test_schema(settings)


TWO_CPUS = sorted(os.sched_getaffinity(0))[:2]


def _on_two_cpus(command: list[str]) -> list[str]:
    """``command`` on two CPUs (where the machine has them): two processes then cover them,
    as the default number does, and each runs on a CPU of its own (cpu_pinning.py)."""
    return [
        sys.executable,
        "-c",
        f"import os, sys; os.sched_setaffinity(0, {set(TWO_CPUS)!r}); "
        "os.execv(sys.executable, sys.argv[1:])",
        *command,
    ]


def _ready(scp: Scp) -> bool:
    if scp.proc.poll() is not None:
        raise AssertionError(f"the SCP exited: {scp.log.read_text()[-3000:]}")
    try:
        return httpx.get(f"{scp.http}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _send_all(port: int, batches: list[list[Path]]) -> list[Any]:
    """Every batch over its own association, all at once (DCMTK storescu where installed)."""
    tool = dcmtk_tool("storescu")
    results: list[Any] = [None] * len(batches)

    def send(i: int) -> None:
        if tool:
            done = storescu(tool, port, batches[i])
            results[i] = done.returncode == 0 or done.stdout + done.stderr
        else:
            results[i] = set(pynetdicom_store(port, batches[i])) == {0}

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_ten_senders_two_processes(
    scp_processes: Scp, tmp_path: Path, base_settings: dict[str, object]
) -> None:
    scp = scp_processes
    batches = []
    for i in range(SENDERS):
        series = f.cbct_series(n_slices=SLICES, rows=16, columns=16)
        record = f.treatment_record(plan_uid=None, fraction_number=i + 1)
        batches.append(f.write_series([*series, record], tmp_path / f"sender{i}"))
    assert _send_all(scp.dicom_port, batches) == [True] * SENDERS

    # Every object stored once, in one index.
    settings = scp_settings(base_settings)
    engine = make_engine(settings, SERVICE)
    try:
        with session_factory(engine)() as session:
            stored = session.scalar(select(func.count()).select_from(DicomObject))
    finally:
        engine.dispose()
    assert stored == SENDERS * (SLICES + 1)

    # Every event on the stream exactly once: a record and a CBCT series per sender.
    url, stream = str(base_settings["nats_url"]), settings.stream_name
    wait_for(
        lambda: len(stream_message_ids(url, stream)) >= 2 * SENDERS,
        timeout=30,
        message="20 events",
    )
    ids = stream_message_ids(url, stream)
    assert len(ids) == 2 * SENDERS and len(set(ids)) == len(ids) and "" not in ids

    # Both processes served the senders: the parent gives each connection to the process
    # with the fewest open, so ten at once split five and five.
    assert len(scp.pids("association accepted")) == 2

    # /metrics counts every process's stores, and refusals wherever they happened.
    assert scp.metric("rtops_scp_objects_stored_total") == SENDERS * (SLICES + 1)
    for _ in range(4):
        assert not pynetdicom_echo(scp.dicom_port, calling="INTRUDER").is_established
    wait_for(
        lambda: scp.metric("rtops_scp_rejections_total", reason="unknown_calling_ae") == 4,
        timeout=10,
        message="four refusals counted",
    )

    # The device registry reloads in every process: on SIGHUP to the parent (forwarded), and
    # when the file changes (each process polls it).
    def reloads(trigger: str) -> int:
        return sum(
            1
            for line in scp.lines()
            if line.get("event") == "device registry reloaded" and line.get("trigger") == trigger
        )

    scp.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads("SIGHUP") == 2, timeout=20, message="two SIGHUP reloads")
    registry = tmp_path / "devices.yaml"
    registry.write_text(
        registry.read_text() + "  - ae_title: NEWLINAC\n    role: linac\n    machine: New1\n"
    )
    wait_for(lambda: reloads("file changed") == 2, timeout=20, message="two file reloads")

    # A worker killed outright is started again, and serves.
    parent = psutil.Process(scp.proc.pid)
    (worker,) = parent.children()
    worker_cpus = os.sched_getaffinity(worker.pid)
    worker.kill()
    wait_for(
        lambda: any(
            "exited with status -9; starting it again" in str(line.get("event"))
            for line in scp.lines()
        ),
        timeout=10,
        message="the restart logged",
    )
    wait_for(lambda: len(parent.children()) == 1, timeout=10, message="a new worker")
    (restarted,) = parent.children()
    assert restarted.pid != worker.pid
    wait_for(
        lambda: restarted.pid in scp.pids("DICOM SCP listening"),
        timeout=30,
        message="the new worker listening",
    )
    # on the CPU of the worker it replaces (a CPU of its own, the parent's being the other)
    assert os.sched_getaffinity(restarted.pid) == worker_cpus
    assert len(worker_cpus) == (1 if len(TWO_CPUS) == 2 else len(TWO_CPUS))

    # SIGTERM stops every process cleanly (uvicorn re-raises the signal once it has shut
    # down, hence -15).
    scp.proc.send_signal(signal.SIGTERM)
    assert scp.proc.wait(40) in (0, -signal.SIGTERM)
    events = [str(line.get("event")) for line in scp.lines()]
    assert "SCP worker stopped" in events and "Application shutdown complete." in events
    assert events.index("SCP worker stopped") < events.index("Application shutdown complete.")
    assert not psutil.pid_exists(restarted.pid)


def test_worker_link_wakes_the_relay_and_passes_problems() -> None:
    """A worker's commit wakes the parent's relay; its problems reach the parent's page."""
    woken: list[int] = []
    problems = RecentProblems()
    inbox = WorkerInbox(lambda: woken.append(1), problems)
    link = ParentLink(os.dup(inbox.worker_end.fileno()))
    try:
        link.wake()
        link.wake()
        link.record(Problem(kind="store", reason="cannot_understand", calling_ae="TB1", detail="x"))
        inbox.read()
        assert woken == [1]  # two wakes, one nudge
        (problem,) = problems.newest_first()
        assert (problem.reason, problem.calling_ae, problem.detail) == (
            "cannot_understand",
            "TB1",
            "x",
        )
        inbox.read()  # nothing new: no wake
        assert woken == [1]
    finally:
        inbox.close()


def test_worker_link_reports_the_end_of_a_connection_to_the_balancer() -> None:
    balancer = Balancer()
    balancer.channel(1).close()
    inbox = WorkerInbox(lambda: None, RecentProblems(), balancer)
    link = ParentLink(os.dup(inbox.worker_end.fileno()))
    try:
        balancer._open[1] = 2  # as if two connections were passed to worker 1
        link.ended(1)
        inbox.read()
        assert balancer.open_connections[1] == 1
    finally:
        inbox.close()
        balancer.close()


def test_a_worker_gets_connections_only_once_it_says_it_is_ready() -> None:
    """A connection passed to a worker still starting waited for it, and was lost with it
    if it failed to start: until its ``ready`` reaches the parent, the parent serves."""
    balancer = Balancer()
    end = balancer.channel(1)
    inbox = WorkerInbox(lambda: None, RecentProblems(), balancer)
    link = ParentLink(os.dup(inbox.worker_end.fileno()))
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        assert balancer.dispatch(pairs[0][0], ("10.0.0.7", 1000), False) is False
        end.setblocking(False)
        with pytest.raises(BlockingIOError):
            socket.recv_fds(end, 4096, 1)  # nothing was passed to the worker
        link.ready(1)
        inbox.read()
        assert balancer.open_connections == {0: 1, 1: 0}
        assert balancer.dispatch(pairs[1][0], ("10.0.0.7", 1001), False) is True
        _note, fds, _flags, _addr = socket.recv_fds(end, 4096, 1)
        assert len(fds) == 1
        os.close(fds[0])
    finally:
        inbox.close()
        balancer.close()
        end.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_balancer_gives_each_connection_to_the_least_busy_process() -> None:
    """Ties go to a worker (the parent's GIL also serves HTTP and the relay); a worker's
    connections count until it reports their end; a passed connection arrives in the worker
    with its peer and kind; a worker that is gone is skipped."""
    balancer = Balancer()
    ends = {index: balancer.channel(index) for index in (1, 2)}
    for index in ends:
        balancer.ready(index)
    received: dict[int, list[tuple[socket.socket, tuple[str, int], bool]]] = {1: [], 2: []}
    for index, end in ends.items():
        receive_connections(
            end.detach(), lambda sock, peer, tls, i=index: received[i].append((sock, peer, tls))
        )
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        chosen = [
            balancer.dispatch(ours, ("10.0.0.7", 1000 + n), n == 3)
            for n, (ours, _theirs) in enumerate(pairs)
        ]
        # worker 1, worker 2, the parent (the only one with none), then worker 1 again
        assert chosen == [True, True, False, True]
        assert balancer.open_connections == {0: 1, 1: 2, 2: 1}
        wait_for(lambda: len(received[1]) == 2 and received[2], timeout=5, message="passed sockets")
        assert [(peer, tls) for _sock, peer, tls in received[1]] == [
            (("10.0.0.7", 1000), False),
            (("10.0.0.7", 1003), True),
        ]
        pairs[0][1].sendall(b"ping")  # the worker's descriptor is the same connection
        assert received[1][0][0].recv(4) == b"ping"
        balancer.ended(2)
        balancer.ended(2)  # never below zero
        assert balancer.open_connections == {0: 1, 1: 2, 2: 0}
        # worker 2 gone and started again, not ready yet: the connection goes to the next
        # least busy, the parent
        balancer.channel(2).close()
        extra = socket.socketpair()
        pairs.append(extra)
        assert balancer.dispatch(extra[0], ("10.0.0.7", 2000), False) is False
        assert balancer.open_connections == {0: 2, 1: 2}
    finally:
        balancer.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
        for conns in received.values():
            for sock, _peer, _tls in conns:
                sock.close()


def test_content_locks_exclude_other_processes(tmp_path: Path) -> None:
    """The same bytes stored by two processes at once serialise on a file lock: while this
    process holds a stripe, another process cannot take it (and can once it is released)."""

    locks = shared_locks(tmp_path, 4)
    assert len(locks) == 4
    probe = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError: sys.exit(1)\n"
    )
    lock_file = str(tmp_path / ".locks" / "02")

    def other_process_can_lock() -> bool:
        done = subprocess.run([sys.executable, "-c", probe, lock_file], check=False)
        return done.returncode == 0

    with locks[2]:
        assert not other_process_can_lock()
    assert other_process_can_lock()


def test_workers_die_with_the_parent(scp_processes: Scp) -> None:
    """A parent killed outright (SIGKILL, the OOM killer) leaves no worker serving the port."""
    parent = psutil.Process(scp_processes.proc.pid)
    (worker,) = parent.children()
    scp_processes.proc.kill()
    scp_processes.proc.wait()
    _gone, alive = psutil.wait_procs([worker], timeout=30)
    assert not alive


@pytest.mark.skipif(len(TWO_CPUS) < 2, reason="one CPU: nothing to pin")
def test_each_process_runs_on_a_cpu_of_its_own(scp_processes: Scp) -> None:
    """Two processes on two CPUs: every thread of the parent on one, every thread of the worker
    on the other, the worker's threads started after it pinned itself included."""
    parent = psutil.Process(scp_processes.proc.pid)
    (worker,) = parent.children()
    cpus = {}
    for process in (parent, worker):
        threads = {frozenset(os.sched_getaffinity(t.id)) for t in process.threads()}
        assert len(threads) == 1, f"{process.pid}: threads on {threads}"
        (cpus[process.pid],) = threads
    assert sorted(cpu for cpu_set in cpus.values() for cpu in cpu_set) == TWO_CPUS
    assert any(
        line.get("event") == "SCP processes pinned to CPUs" for line in scp_processes.lines()
    )
