"""The SCP's memory on the network side (issue 15: "one 64 MB element drove the SCP to
417 MB"): a data set with a 64 MB element, sent in PDUs as long as the SCP advertises or in
one PDU that ignores it, leaves the SCP process under 150 MB (its resident set polled with
psutil) and either stored or refused with nothing left in the spool."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from services.scp_listener import lean
from services.scp_listener.app import SERVICE
from services.scp_listener.settings import ScpSettings
from shared.db import make_engine, migrate
from tests import dicom_factories as f
from tests.scp_listener.test_hash_on_receive import indexed
from tests.scp_listener.test_pdu_reader import _dataset_sha, _element, _pdu, p_data_header
from tests.support import MIGRATIONS, REPO, drop_test_schema, free_port, spooled, wait_for

LIMIT = 150_000_000  # bytes of resident memory, per SCP process
ELEMENT = 64 << 20


@dataclass
class ScpProcess:
    proc: subprocess.Popen[bytes]
    settings: ScpSettings
    port: int
    log: Path

    def rss(self) -> int:
        """The largest resident set among the SCP's processes (one per core may serve)."""
        try:
            root = psutil.Process(self.proc.pid)
            return max(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0


class PeakRss:
    def __init__(self, scp: ScpProcess) -> None:
        self.scp = scp
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.scp.rss())
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def scp_process(base_settings: dict[str, Any], tmp_path: Path) -> Iterator[ScpProcess]:
    """``python -m services.scp_listener`` with the suite's defaults (the maximum PDU among
    them), one process, on this test's database and stream."""
    settings = ScpSettings(**base_settings)
    engine = make_engine(settings, SERVICE)
    migrate(engine, settings, SERVICE, MIGRATIONS)
    engine.dispose()
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTOPS_")}
    env.update(
        {f"RTOPS_{k.upper()}": str(v) for k, v in base_settings.items() if v is not None},
        RTOPS_SCP_HOST="127.0.0.1",
        RTOPS_SCP_PORT=str(port),
        RTOPS_SCP_HTTP_HOST="127.0.0.1",
        RTOPS_SCP_HTTP_PORT=str(http_port),
        RTOPS_SCP_PROCESSES="1",
        RTOPS_LOG_FORMAT="json",
    )
    log = tmp_path / "scp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.scp_listener"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    scp = ScpProcess(proc, settings, port, log)
    try:
        wait_for(lambda: _ready(http_port, proc, log), 60, 0.1, "SCP subprocess ready")
        yield scp
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drop_test_schema(settings)


def _ready(http_port: int, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the SCP exited with {proc.returncode}:\n{log.read_text()}")
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as response,
    ):
        return bool(response.status == 200)
    return False


@pytest.fixture(scope="module")
def big_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CT slice of 4096 x 8192 16-bit pixels: one 64 MiB Pixel Data element."""
    ds = f.cbct_series(n_slices=1, rows=4096, columns=8192)[0]
    return f.write(ds, tmp_path_factory.mktemp("big") / "ct.dcm")


def associate(port: int) -> Any:
    ae = AE(ae_title="TRUEBEAM1")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="RTOPS")
    assert assoc.is_established
    return assoc


def spool_files(scp: ScpProcess) -> list[Path]:
    return spooled(scp.settings.spool_dir())


def test_64mb_element_in_many_pdus_is_stored_within_bound(
    scp_process: ScpProcess, big_ct: Path
) -> None:
    assoc = associate(scp_process.port)
    # What the SCP advertised (the default) is what pynetdicom splits the data set into.
    advertised = assoc.acceptor.maximum_length
    assert 0 < advertised <= 1 << 20
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with PeakRss(scp_process) as peak:
            status = assoc.send_c_store(big_ct)
            time.sleep(0.1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert int(status.Status) == 0
    assert peak.peak < LIMIT, f"peak RSS {peak.peak / 1e6:.0f} MB"
    ((key, _, _),) = indexed(scp_process)  # type: ignore[arg-type]
    # The data set as sent (the file meta is the SCP's own).
    assert _dataset_sha(scp_process.settings.object_store() / key) == _dataset_sha(big_ct)
    assert spool_files(scp_process) == []


def test_64mb_element_in_one_pdu_is_refused_unread(scp_process: ScpProcess, big_ct: Path) -> None:
    """A sender that ignores the advertised maximum and sends the data set as one P-DATA-TF:
    A-ABORT, logged, nothing read into memory, nothing stored or spooled."""
    assoc = associate(scp_process.port)
    context_id = assoc.accepted_contexts[0].context_id
    raw = assoc.dul.socket.socket
    command = (
        _element(0x0000_0002, str(CTImageStorage).encode() + b"\x00")
        + _element(0x0000_0100, (1).to_bytes(2, "little"))
        + _element(0x0000_0110, (1).to_bytes(2, "little"))
        + _element(0x0000_0700, (0).to_bytes(2, "little"))
        + _element(0x0000_0800, (0).to_bytes(2, "little"))
        + _element(0x0000_1000, b"1.2.3.4.5.6.7.8.9\x00")
    )
    command = _element(0x0000_0000, len(command).to_bytes(4, "little")) + command
    data = big_ct.read_bytes()[f._dataset_offset(big_ct.read_bytes()) :]
    with PeakRss(scp_process) as peak:
        raw.sendall(_pdu([(context_id, 0x03, command)]))
        body_length = len(data) + 6
        sent = 0
        with contextlib.suppress(OSError):  # the SCP aborts and closes mid-send
            raw.sendall(p_data_header(body_length) + (len(data) + 2).to_bytes(4, "big"))
            raw.sendall(bytes([context_id, 0x02]))
            for start in range(0, len(data), 1 << 20):
                sent += raw.send(data[start : start + (1 << 20)])
        wait_for(lambda: assoc.is_aborted or not assoc.is_established, 30, message="abort")
        time.sleep(0.2)
    assert peak.peak < LIMIT, f"peak RSS {peak.peak / 1e6:.0f} MB"
    assert indexed(scp_process) == []
    wait_for(lambda: spool_files(scp_process) == [], 10, message="empty spool")
    assert "pdu_too_long" in scp_process.log.read_text()


def test_lean_scp_imports_none_of_the_unused_libraries() -> None:
    """``keep_lean`` before the SCP's imports: no numpy, Pillow, rich, pygments, requests or
    tqdm in the process (docs/scp_performance.md, "Memory"), and the loggers still render an
    exception (structlog falls back to plain tracebacks)."""
    script = (
        "import sys;"
        "from services.scp_listener.lean import keep_lean; assert keep_lean();"
        "import services.scp_listener.__main__, services.scp_listener.app, structlog;"
        "names = ('numpy', 'PIL', 'rich', 'pygments', 'requests', 'tqdm');"
        "loaded = [n for n in names if sys.modules.get(n) is not None];"
        "assert not loaded, loaded;"
        "render = structlog.dev.ConsoleRenderer()\n"
        "try:\n    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    out = render(None, 'error', {'event': 'e', 'exc_info': True})\n"
        "assert 'ZeroDivisionError' in out, out\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_lean_caps_malloc_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SCP process runs two threads per association, and glibc gives each allocating
    thread an arena of its own: ``keep_lean`` caps them at two (M_ARENA_MAX)."""
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(lean.ctypes, "CDLL", lambda _name: Libc())
    monkeypatch.setattr(lean.ctypes.util, "find_library", lambda _name: "libc.so.6")
    monkeypatch.setattr(lean.sys, "platform", "linux")
    lean._cap_malloc_arenas()
    assert calls == [(-8, 2)]
