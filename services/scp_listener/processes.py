"""Several SCP processes on one port (``RTOPS_SCP_PROCESSES``; docs/scp_scale.md).

The process ``python -m services.scp_listener`` starts (the parent) serves HTTP, runs the one
outbox relay and the quiet-series sweep, and listens on the DICOM port(s) like every worker it
starts here: N processes in all, each with ``SO_REUSEPORT`` on the same port(s), so the kernel
spreads new connections over them and the C-STOREs of one process do not wait on another's
GIL. A worker has its own database pool and ``Ingestor``; what it commits it announces to the
parent over a datagram socket (``ParentLink.wake``), which wakes the parent's relay at once
(one relay: outbox rows leave in order, each once). Its refusals and failed stores go the
same way to the parent's problems page.

A worker dies with the parent (``PR_SET_PDEATHSIG``); one that exits on its own is logged and
started again; SIGHUP to the parent is forwarded; stopping sends SIGTERM and waits for the
workers' associations in progress to finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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

    def __init__(self, on_commit: Callable[[], None], problems: ProblemSink) -> None:
        self._on_commit = on_commit
        self._problems = problems
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


# ---------------------------------------------------------------- the workers


class WorkerPool:
    """Workers 1..count (the parent is process 0), started with the parent's settings on the
    ports it listens on, kept running until ``stop``."""

    def __init__(
        self,
        settings: ScpSettings,
        count: int,
        *,
        port: int,
        tls_port: int | None,
        inbox: WorkerInbox,
    ) -> None:
        self._settings = settings
        self._count = count
        self._port = port
        self._tls_port = tls_port
        self._inbox = inbox
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
        args = [sys.executable, "-m", WORKER_MODULE, "--index", str(index)]
        args += ["--port", str(self._port), "--link-fd", str(fd), "--parent", str(os.getpid())]
        if self._tls_port is not None:
            args += ["--tls-port", str(self._tls_port)]
        # No preexec_fn (unsafe in a process with threads, which this one has): the worker
        # asks for its death signal itself, first thing (``die_with_parent`` in worker.py).
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, pass_fds=(fd,))
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


def wait_for_associations(listeners: Any, grace_s: float = STOP_GRACE_S) -> None:
    """After the ports stopped accepting: let associations in progress finish (bounded)."""
    deadline = time.monotonic() + grace_s
    while listeners.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
