"""Several SCP processes on one port (``RTOPS_SCP_PROCESSES``; docs/scp_scale.md).

The process ``python -m services.scp_listener`` starts (the parent) serves HTTP, runs the one
outbox relay and the quiet-series sweep, and is the only one that accepts on the DICOM
port(s). Each connection it accepts goes to the SCP process with the fewest connections open
(``Balancer``): the parent serves it itself, or passes the socket to a worker over that
worker's own Unix socket (``SCM_RIGHTS``), so the C-STOREs of one process do not wait on
another's GIL. Letting the kernel spread connections (``SO_REUSEPORT``, before) split ten
senders 7/3 or 8/2 about a third of the time, and the process with more finished last. A
worker has its own database pool and ``Ingestor``; what it commits it announces to the parent
over a datagram socket (``ParentLink.wake``), which wakes the parent's relay at once (one
relay: outbox rows leave in order, each once). Its refusals and failed stores go the same way
to the parent's problems page, and so does the end of each of its connections (``ended``),
which the balancer counts.

A worker dies with the parent (``PR_SET_PDEATHSIG``); one that exits on its own is logged and
started again (its connections in the meantime stay with the parent and the other workers);
SIGHUP to the parent is forwarded; stopping sends SIGTERM and waits for the workers'
associations in progress to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from pydantic import SecretStr

from services.scp_listener.metrics import Problem, ProblemSink
from services.scp_listener.settings import ScpSettings

log = structlog.get_logger(__name__)

WORKER_MODULE = "services.scp_listener.worker"
# How long a stop waits for a worker's associations in progress before it is killed: below
# Kubernetes' default 30 s grace period, so the pod ends by itself.
STOP_GRACE_S = 25.0
_WATCH_S = 0.5
# A worker that dies within this long of its start is restarted after a growing delay
# (1, 2, 4 ... 30 s): a worker failing at start would otherwise restart twice a second.
_QUICK_DEATH_S = 10.0
_MAX_BACKOFF_S = 30.0
_DATAGRAM = 65536


def settings_json(settings: ScpSettings) -> bytes:
    """The parent's settings for a worker (secrets included: they travel over a pipe)."""
    values = settings.model_dump(mode="json")
    for name, value in settings:
        if isinstance(value, SecretStr):
            values[name] = value.get_secret_value()
    return json.dumps(values).encode()


def settings_from_json(data: bytes) -> ScpSettings:
    return ScpSettings.model_validate(json.loads(data))


# ---------------------------------------------------------------- worker -> parent


class ParentLink:
    """A worker's end of the datagram socket to the parent: ``wake`` after a commit (the
    Ingestor's ``on_commit``), ``record`` a problem (a ``ProblemSink``)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)

    def wake(self) -> None:
        # A full socket means wakes are queued already: the relay runs anyway.
        self._send(b"w")

    def ready(self, index: int) -> None:
        """Worker ``index`` takes connections now. Blocking: the parent gives it none before
        this arrives, and reads its inbox at once."""
        try:
            self._sock.send(b"r%d" % index)
        except OSError as exc:
            log.error("the worker could not tell the parent it is ready", error=str(exc))

    def ended(self, index: int) -> None:
        """One connection of worker ``index`` closed (the parent's balancer counts them)."""
        if not self._send(b"e%d" % index):
            log.warning("the end of a connection was not passed to the parent", worker=index)

    def record(self, problem: Problem) -> None:
        if not self._send(b"p" + problem.to_json()):
            log.warning("problem not passed to the problems page", reason=problem.reason)

    def _send(self, message: bytes) -> bool:
        try:
            self._sock.send(message, socket.MSG_DONTWAIT)
        except OSError:  # full (the parent is busy) or gone (this worker is about to die)
            return False
        return True


class WorkerInbox:
    """The parent's end: wakes its outbox relay when a worker committed, and records the
    workers' problems where the page reads them."""

    def __init__(
        self,
        on_commit: Callable[[], None],
        problems: ProblemSink,
        balancer: Balancer | None = None,
    ) -> None:
        self._on_commit = on_commit
        self._problems = problems
        self._balancer = balancer
        self._own, self.worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._own.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._own.fileno(), self.read)

    def read(self) -> None:
        woken = False
        while True:
            try:
                message = self._own.recv(_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            if message[:1] == b"w":
                woken = True
            elif message[:1] == b"e" and self._balancer is not None:
                with contextlib.suppress(ValueError):
                    self._balancer.ended(int(message[1:]))
            elif message[:1] == b"r" and self._balancer is not None:
                with contextlib.suppress(ValueError):
                    self._balancer.ready(int(message[1:]))
            elif message[:1] == b"p":
                try:
                    self._problems.record(Problem.from_json(message[1:]))
                except (ValueError, TypeError) as exc:
                    log.warning("unreadable problem from an SCP worker", error=str(exc))
        if woken:
            self._on_commit()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._own.fileno())
        self._own.close()
        self.worker_end.close()


# ---------------------------------------------------------------- parent -> workers


class Balancer:
    """The parent's choice of process for each connection it accepted: the one with the
    fewest connections open (a worker on a tie). Counts rise when a connection is given and
    fall when it closes (the parent's own ``EVT_CONN_CLOSE``, a worker's
    ``ParentLink.ended``). A worker gets connections only once it has said it is ready
    (``ParentLink.ready``), and again only after it says so when it is started again: one
    passed to a worker still starting waited for its imports, and was lost with it if it
    failed to start (the peer saw its association aborted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, int] = {0: 0}
        self._channels: dict[int, socket.socket] = {}

    def channel(self, index: int) -> socket.socket:
        """A new channel to worker ``index`` (started now, or again): the returned end is
        the worker's, to pass to it and close here once it is started."""
        own, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with self._lock:
            old = self._channels.pop(index, None)
            self._channels[index] = own
            self._open.pop(index, None)  # until it is ready
        if old is not None:
            old.close()
        return theirs

    def ready(self, index: int) -> None:
        """Worker ``index`` (started on ``channel(index)``) takes connections from now on."""
        with self._lock:
            if index in self._channels and index not in self._open:
                self._open[index] = 0
        log.info("SCP worker ready", worker=index)

    def dispatch(self, sock: socket.socket, address: Any, tls: bool) -> bool:
        """Pass ``sock`` to the least busy worker and return True, or return False for the
        parent to serve it (it is the least busy, or no worker could take it)."""
        with self._lock:
            # Ties go to a worker: the parent's own threads (HTTP, the relay, the durability
            # rounds) share its GIL, and a CBCT served there took 15.7 ms a slice against
            # 10.8 ms in a worker (200 slices from storescu, one association each).
            order = sorted(self._open, key=lambda i: (self._open[i], i == 0, i))
            note = json.dumps({"tls": tls, "peer": list(address)}).encode()
            for index in order:
                if index == 0:
                    break  # the parent serves it
                try:
                    socket.send_fds(self._channels[index], [note], [sock.fileno()])
                except OSError as exc:  # the worker is gone (it is being started again)
                    log.warning(
                        "an SCP worker could not take a connection; served elsewhere",
                        worker=index,
                        error=str(exc),
                    )
                    continue
                self._open[index] += 1
                return True
            self._open[0] += 1
            return False

    def ended(self, index: int) -> None:
        with self._lock:
            if self._open.get(index, 0) > 0:
                self._open[index] -= 1

    @property
    def open_connections(self) -> dict[int, int]:
        with self._lock:
            return dict(self._open)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel.close()


def receive_connections(
    fd: int, serve: Callable[[socket.socket, tuple[str, int], bool], None]
) -> threading.Thread:
    """A worker's end of its channel: ``serve`` every connection the parent passes (a daemon
    thread, until the channel closes)."""
    channel = socket.socket(fileno=fd)

    def loop() -> None:
        while True:
            try:
                note, fds, _flags, _addr = socket.recv_fds(channel, 4096, 1)
            except OSError:
                return
            if not note and not fds:
                return  # the parent's end closed
            for fd in fds:
                sock = socket.socket(fileno=fd)
                try:
                    meta = json.loads(note)
                    serve(sock, (str(meta["peer"][0]), int(meta["peer"][1])), bool(meta["tls"]))
                except Exception:
                    log.exception("a connection passed by the parent could not be served")
                    sock.close()

    thread = threading.Thread(target=loop, name="scp-connections", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- the workers


class WorkerPool:
    """Workers 1..count (the parent is process 0), started with the parent's settings on the
    ports it listens on, kept running until ``stop``."""

    def __init__(
        self,
        settings: ScpSettings,
        count: int,
        *,
        tls: bool,
        inbox: WorkerInbox,
        balancer: Balancer,
        cpus: Sequence[int] = (),
    ) -> None:
        """``cpus``: worker i's CPU at ``cpus[i - 1]``; empty: not pinned (cpu_pinning.py)."""
        self._settings = settings
        self._cpus = list(cpus)
        self._count = count
        self._tls = tls
        self._inbox = inbox
        self._balancer = balancer
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started_at: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="scp-workers", daemon=True)

    @property
    def pids(self) -> dict[int, int]:
        with self._lock:
            return {index: proc.pid for index, proc in self._procs.items()}

    def start(self) -> None:
        # Spool directories of workers of an earlier run (maybe more of them than now).
        for stale in self._settings.spool_dir().glob("w*"):
            shutil.rmtree(stale, ignore_errors=True)
        with self._lock:
            for index in range(1, self._count + 1):
                self._procs[index] = self._spawn(index)
        self._watcher.start()

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        fd = self._inbox.worker_end.fileno()
        channel = self._balancer.channel(index)
        args = [sys.executable, "-m", WORKER_MODULE, "--index", str(index)]
        args += ["--link-fd", str(fd), "--connections-fd", str(channel.fileno())]
        args += ["--parent", str(os.getpid())]
        if self._tls:
            args += ["--tls"]
        if self._cpus:
            args += ["--cpu", str(self._cpus[index - 1])]
        # No preexec_fn (unsafe in a process with threads, which this one has): the worker
        # asks for its death signal itself, first thing (``die_with_parent`` in worker.py).
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=(fd, channel.fileno()))
        finally:
            channel.close()  # the worker's end: this process keeps its own
        assert proc.stdin is not None
        proc.stdin.write(settings_json(self._settings))
        proc.stdin.close()
        self._started_at[index] = time.monotonic()
        log.info("SCP worker started", worker=index, pid=proc.pid)
        return proc

    def _watch(self) -> None:
        restart_at: dict[int, float] = {}
        while not self._stopping.wait(_WATCH_S):
            with self._lock:
                for index, proc in list(self._procs.items()):
                    if proc.poll() is None:
                        continue
                    now = time.monotonic()
                    if index not in restart_at:
                        quick = now - self._started_at[index] < _QUICK_DEATH_S
                        deaths = self._quick_deaths.get(index, 0) + 1 if quick else 0
                        self._quick_deaths[index] = deaths
                        delay = min(_MAX_BACKOFF_S, 2.0 ** (deaths - 1)) if deaths else 0.0
                        restart_at[index] = now + delay
                        log.error(
                            f"SCP worker {index} (pid {proc.pid}) exited with status "
                            f"{proc.returncode}; starting it again"
                            + (f" in {delay:g} s" if delay else ""),
                            worker=index,
                            pid=proc.pid,
                            status=proc.returncode,
                        )
                    if now >= restart_at[index] and not self._stopping.is_set():
                        del restart_at[index]
                        self._procs[index] = self._spawn(index)

    def forward(self, signum: int = signal.SIGHUP) -> None:
        """Send a signal to every worker (SIGHUP: reload the device registry)."""
        with self._lock:
            for proc in self._procs.values():
                if proc.poll() is None:
                    proc.send_signal(signum)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every worker, wait for them (their associations in progress finish), kill
        what is still running after ``grace_s``."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        with self._lock:
            procs = dict(self._procs)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for index, proc in procs.items():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    f"SCP worker {index} (pid {proc.pid}) did not stop within {grace_s:g} s; "
                    "killed",
                    worker=index,
                )
                proc.kill()
                proc.wait()
        self._balancer.close()


def wait_for_associations(listeners: Any, grace_s: float = STOP_GRACE_S) -> None:
    """After the ports stopped accepting: let associations in progress finish (bounded)."""
    deadline = time.monotonic() + grace_s
    while listeners.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
