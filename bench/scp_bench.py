"""Benchmark of the rtops DICOM SCP against DCMTK's storescp and pynetdicom's storescp.

All three receivers run as separate processes on loopback and are fed by DCMTK's storescu (one
association per send), so the only thing that differs between the columns is the receiver.
Run from the repository root::

    python -m bench.scp_bench [--rounds 6] [--slices 200] [--records 50] [--out results.json]

Progress goes to stderr, the result table to stdout. A missed target is reported, not fatal:
the exit status is 0 whenever the benchmark itself ran. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
import pydicom
import pynetdicom
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RTBeamsTreatmentRecordStorage, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from services.scp_listener.settings import ScpSettings
from services.scp_listener.sop import CT_IMAGE, NAMES, RT_BEAMS_RECORD
from shared.db import make_engine, migrate
from shared.natsd import EmbeddedNats, free_port
from tests.dicom_factories import cbct_series, treatment_record, write_series

REPO = Path(__file__).resolve().parents[1]
SERVICE = "scp_listener"
MIGRATIONS = REPO / "services" / "scp_listener" / "migrations"
CALLING_AE = "TRUEBEAM1"  # a linac in services/scp_listener/devices.yaml
CALLED_AE = "RTOPS"
HOST = "127.0.0.1"

TARGETS = ("rtops", "dcmtk", "pynetdicom")
POSITIONS = ("first", "second", "third")
DISPLAY = {"rtops": "rtops", "dcmtk": "DCMTK", "pynetdicom": "pynetdicom"}
CODES = {"rtops": "r", "dcmtk": "d", "pynetdicom": "p"}  # the send order in the table
# (numerator, denominator) of the wall-time ratios; the first is the one the target judges.
RATIOS = (("rtops", "dcmtk"), ("rtops", "pynetdicom"), ("pynetdicom", "dcmtk"))
WORKLOADS = ("cbct", "records")
LABELS = {"cbct": NAMES[CT_IMAGE], "records": NAMES[RT_BEAMS_RECORD]}
STORE_HISTOGRAM = "rtops_scp_store_seconds"
STORED_COUNTER = "rtops_scp_objects_stored_total"
DUPLICATE_COUNTER = "rtops_scp_duplicates_total"

MB = 1_000_000
CBCT_RATIO_MAX = 3.5
PEAK_RSS_MAX_MB = 120.0
RECORD_P99_MAX_MS = 50.0
WARMUP_OBJECTS = 10
FOREIGN_CORES_WARN = 0.1
RSS_INTERVAL_S = 0.02
PAGE = 4096
PRIME_MIN_BYTES = 64 * MB

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def send_order(round_number: int) -> tuple[str, ...]:
    """Rotate the order every round, so that any effect of the position in the round (one was
    measured: see ``prime_memory``) falls on every target alike.

    Each block of three rounds holds the three rotations of one order, so every target goes
    first, second and third once per block. Every other block rotates the reversed order: plain
    rotation would always send DCMTK right after rtops and pynetdicom right after DCMTK, and
    the measured effect is one of what ran just before. Over six rounds every target follows
    every other one equally often (a Williams design)."""
    block, shift = divmod(round_number, len(TARGETS))
    base = TARGETS if block % 2 == 0 else TARGETS[::-1]
    return base[shift:] + base[:shift]


def position(target: str, round_number: int) -> int:
    """0 if ``target`` was sent first in that round, 1 if second, and so on."""
    return send_order(round_number).index(target)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ tools and processes


def dcmtk_tool(name: str) -> str:
    """DCMTK's binary, never pynetdicom's console script of the same name in the venv."""
    search = os.environ.get("RTOPS_DCMTK_BIN", "/usr/bin:/usr/local/bin")
    path = shutil.which(name, path=search)
    if path:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    raise SystemExit(
        f"bench: DCMTK's {name} not found in {search} (RTOPS_DCMTK_BIN); apt-get install dcmtk"
    )


def dcmtk_version(tool: str) -> str:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0].strip("$ ") if out.stdout else "unknown"


def clean_env(**overrides: str) -> dict[str, str]:
    # Inherited RTOPS_* settings (a PostgreSQL URL, a PDU limit) would make runs incomparable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTOPS_")}
    # DCMTK leaves Nagle on unless told; each small C-STORE response would then wait ~40 ms.
    env["TCP_NODELAY"] = "1"
    env.update(overrides)
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SCP exited with {proc.returncode} before {url} answered")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def _no_delay(event: Event) -> None:
    # pynetdicom leaves Nagle on for the sockets it opens; the probe must not time it.
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo_ok(port: int) -> bool:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=CALLED_AE)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return bool(status) and int(status.Status) == 0


def wait_echo(
    port: int, proc: subprocess.Popen[bytes], name: str = "storescp", timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        if echo_ok(port):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name} did not answer C-ECHO on port {port} within {timeout}s")


class PeakRss:
    """Polls the resident set of a process tree from a thread and keeps the peak, so that short
    spikes between two scrapes of a metrics endpoint are not missed."""

    def __init__(self, pid: int, interval: float = RSS_INTERVAL_S) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self.peak = 0
        self.peak_process = 0  # the largest single process (the SCP runs one per core)
        self.processes = 0
        self.samples = 0

    def per_process(self) -> list[int]:
        sizes: list[int] = []
        with contextlib.suppress(psutil.Error):
            sizes.append(self._process.memory_info().rss)
            for child in self._process.children(recursive=True):
                # A child may exit between listing and reading.
                with contextlib.suppress(psutil.Error):
                    sizes.append(child.memory_info().rss)
        return sizes

    def current(self) -> int:
        return sum(self.per_process())

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = self.per_process()
            self.peak = max(self.peak, sum(sizes))
            self.peak_process = max(self.peak_process, max(sizes, default=0))
            self.processes = max(self.processes, len(sizes))
            self.samples += 1
            self._stop.wait(self._interval)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class CpuLedger:
    """User-space CPU seconds of the whole host versus those of the bench's own processes (this
    one, its reaped storescu children, the SCP, both storescps, NATS), so that a run that shared the
    machine with something else says so. Kernel time is left out on both sides: the journal
    and loopback work our fsyncs and sends cause runs in kernel threads that are not ours."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]
        self._start = (self._host_user(), self._own_user())

    @staticmethod
    def _host_user() -> float:
        t = psutil.cpu_times()
        return t.user + t.nice

    def _own_user(self) -> float:
        me = os.times()
        total = me.user + me.children_user
        for process in self._processes:
            with contextlib.suppress(psutil.Error):
                for p in (process, *process.children(recursive=True)):
                    t = p.cpu_times()
                    total += t.user + t.children_user
        return total

    def since_start(self) -> tuple[float, float]:
        """(host user-space CPU seconds, of which not ours) since construction."""
        host, own = self._host_user() - self._start[0], self._own_user() - self._start[1]
        return host, max(0.0, host - own)


@dataclass
class Scp:
    proc: subprocess.Popen[bytes]
    dicom_port: int
    http_port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.http_port}{path}"


def start_scp(
    var: Path,
    nats_url: str,
    log_path: Path,
    *,
    fsync: bool = True,
    module: str | None = None,
    **settings_env: str,
) -> Scp:
    """The SCP as ``python -m <module>`` (default the service itself, or ``bench.scp_nofsync``
    without fsync); ``settings_env`` adds ``RTOPS_*`` variables (``RTOPS_SCP_MAX_PDU=...``)."""
    # The service does not migrate on start (`rtops run` does it first), so do the same here.
    settings = ScpSettings(var_dir=var, database_url=None)
    engine = make_engine(settings, SERVICE)
    try:
        migrate(engine, settings, SERVICE, MIGRATIONS)
    finally:
        engine.dispose()
    dicom_port, http_port = free_port(), free_port()
    env = clean_env(
        RTOPS_VAR_DIR=str(var),
        RTOPS_SCP_PORT=str(dicom_port),
        RTOPS_SCP_HTTP_PORT=str(http_port),
        RTOPS_SCP_HOST=HOST,
        RTOPS_SCP_HTTP_HOST=HOST,
        RTOPS_LOG_LEVEL="WARNING",
        RTOPS_NATS_URL=nats_url,
        **settings_env,
    )
    if module is None:
        module = "services.scp_listener" if fsync else "bench.scp_nofsync"
    with log_path.open("wb") as out:
        # Own session: Ctrl-C reaches only the bench, which then stops the SCP before NATS.
        proc = subprocess.Popen(
            # bench.scp_nofsync: the same SCP with fsync off (--no-fsync; never a setting).
            [sys.executable, "-m", module],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Scp(proc, dicom_port, http_port, log_path)


def start_storescp(tool: str, out_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    # +xa: accept every transfer syntax, as our SCP does; the default single-process mode
    # writes each object to -od before it answers, which is what a fair reference needs.
    cmd = [tool, "-aet", CALLED_AE, "+xa", "-od", str(out_dir), str(port)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, port


def start_pynetdicom_storescp(out_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """pynetdicom's bundled storescp application, as shipped: it decodes each dataset and
    writes it to -od with pydicom before it answers, without fsync. It accepts every storage
    SOP class with the uncompressed and deflated transfer syntaxes and logs errors only."""
    port = free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pynetdicom", "storescp", str(port)]
    cmd += ["-aet", CALLED_AE, "-od", str(out_dir)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, port


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its children (the SCP's workers)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def uss_of(pid: int) -> int:
    """Memory unique to the process (no shared libraries); too slow to poll every 20 ms."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ------------------------------------------------------------------ test data


@dataclass
class RoundFiles:
    cbct: list[Path]
    records: list[Path]
    probe: list[Path]  # further records, for the pynetdicom latency probe

    def of(self, workload: str) -> list[Path]:
        return self.cbct if workload == "cbct" else self.records


def fresh_copies(sources: Sequence[Path], folder: Path) -> list[Path]:
    """Copies with new SOP Instance UIDs, and Series Instance UIDs renewed one to one, so the
    SCP stores them as new objects (an identical re-send is a duplicate that skips storage)
    while the series grouping stays as it was."""
    series: dict[str, str] = {}

    def renewed() -> Iterator[Dataset]:
        for path in sources:
            ds = pydicom.dcmread(path)
            uid = generate_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.SeriesInstanceUID = series.setdefault(str(ds.SeriesInstanceUID), generate_uid())
            yield ds

    return write_series(renewed(), folder)


def build_data(
    folder: Path, *, rounds: int, slices: int, records: int
) -> tuple[list[Path], list[RoundFiles]]:
    """The base objects (sent once to warm up) and a fresh copy of them for every round."""
    cbct = write_series(cbct_series(n_slices=slices, rows=512, columns=512), folder / "base")
    plan_uid = generate_uid()
    recs = write_series(
        (treatment_record(plan_uid=plan_uid, fraction_number=i) for i in range(1, records + 1)),
        folder / "base",
    )
    warmup = cbct[:WARMUP_OBJECTS] + recs[:WARMUP_OBJECTS]
    per_round = [
        RoundFiles(
            cbct=fresh_copies(cbct, folder / f"round{r}" / "cbct"),
            records=fresh_copies(recs, folder / f"round{r}" / "records"),
            probe=fresh_copies(recs, folder / f"round{r}" / "probe"),
        )
        for r in range(rounds)
    ]
    return warmup, per_round


def size_of(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


# ------------------------------------------------------------------ sending and measuring


def prime_memory(nbytes: int) -> None:
    """Write to ``nbytes`` of fresh memory and free it again, just before a timed send.

    On a VM whose guest hands freed pages back to the host (virtio-balloon free page reporting,
    as on the machine this was written on), the first write to such a page faults on the host.
    Page-cache pages for received files are then dear for whichever receiver runs right after
    the other one released memory: storescp sent second measured 0.56-0.61 s against 0.31-0.36 s
    when sent first, and 0.34-0.36 s after this priming. All receivers are primed alike. It
    does not remove every position effect, hence ``send_order`` and ``order_balanced`` too.
    """
    buffer = bytearray(nbytes)
    buffer[::PAGE] = b"\x01" * len(range(0, nbytes, PAGE))
    del buffer


def storescu(tool: str, port: int, paths: Sequence[Path]) -> float:
    """Wall seconds of one storescu run: process start, association, every C-STORE, release."""
    cmd = [tool, "-R", "-aet", CALLING_AE, "-aec", CALLED_AE, HOST, str(port), *map(str, paths)]
    start = time.perf_counter()
    done = subprocess.run(
        cmd, env=clean_env(), capture_output=True, text=True, timeout=900, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"storescu to port {port} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return wall


@dataclass
class ProbeResult:
    seconds: list[float]
    failure: str | None = None  # why the probe stopped early, if it did


def probe_latency(port: int, paths: Sequence[Path], received: Path | None = None) -> ProbeResult:
    """Client-observed seconds from sending each C-STORE to receiving its response, one
    association, objects sent one after the other. A C-STORE without an answer ends the probe
    for this round and is reported rather than fatal: it is a finding, not a bench error.
    ``received`` is the receiver's output directory (storescp, either of them), to tell a lost
    request from a lost answer."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(RTBeamsTreatmentRecordStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        HOST, port, ae_title=CALLED_AE, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)]
    )
    if not assoc.is_established:
        return ProbeResult([], f"association to port {port} was not established")
    result = ProbeResult([])
    try:
        for path in paths:
            start = time.perf_counter()
            status = assoc.send_c_store(path)
            elapsed = time.perf_counter() - start
            if status and int(status.Status) == 0:
                result.seconds.append(elapsed)
                continue
            # An empty status means no answer: aborted, or none within dimse_timeout.
            answer = f"status 0x{int(status.Status):04X}" if status else "no answer"
            written = ""
            if received is not None:
                uid = path.name.split(".", 1)[1].removesuffix(".dcm")
                stored = any(uid in f.name for f in received.iterdir())
                written = f"; the receiver {'had' if stored else 'had not'} written the object"
            result.failure = (
                f"C-STORE {len(result.seconds) + 1} of {len(paths)}: {answer} after "
                f"{elapsed:.1f}s{', association aborted' if assoc.is_aborted else ''}{written}"
            )
            break
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample_value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def buckets(samples: Samples, label: str) -> dict[float, float]:
    """Cumulative bucket counts of the store histogram for one SOP class, by upper bound."""
    out: dict[float, float] = {}
    for (name, labels), value in samples.items():
        values = dict(labels)
        if name == f"{STORE_HISTOGRAM}_bucket" and values.get("sop_class") == label:
            out[float(values["le"])] = value
    return out


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Like Prometheus' histogram_quantile: linear interpolation inside the bucket that holds
    the rank. A rank in the +Inf bucket yields the largest finite bound, a lower bound only."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            in_bucket = count - below
            return lower + (bound - lower) * ((rank - below) / in_bucket if in_bucket else 1.0)
        lower, below = bound, count
    return lower


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def file_creation_us(folder: Path, files: int = 200) -> float:
    """Median microseconds to create an empty file in ``folder`` (the files are kept: deleting
    them would slow the next ones). Every receiver creates a file per object. On ext4 without
    a journal the kernel skips inodes deleted in the last minutes by scanning past them
    (``recently_deleted`` in perf): after an earlier run's clean-up this rose from 0.02 ms to
    0.3-1 ms here, and creating spool files took 11 % of the SCP's CPU in the ten-sender run
    (docs/scp_performance.md, "The thirteenth session"). Reported, so that a run on a
    filesystem in that state can be told apart."""
    folder.mkdir(parents=True)
    times = []
    for number in range(files):
        start = time.perf_counter()
        os.close(os.open(folder / str(number), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def file_creation_line(us: float, slowed: str) -> str:
    return (
        f"a new file in the scratch folder: {us:.0f} us (median of 200; tens of us is usual, "
        f"hundreds slow {slowed})"
    )


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ the run


@dataclass
class Raw:
    """Everything measured; the summary is computed from it."""

    walls: dict[str, dict[str, list[float]]]
    bytes_per_round: dict[str, list[int]]
    store_buckets: dict[float, float]
    probe: dict[str, list[float]]
    probe_failures: dict[str, list[str]]
    cpu_ms_per_object: dict[str, dict[str, list[float]]]
    idle_rss: int
    peak_rss: int
    peak_rss_process: int
    processes: int
    rss_samples: int
    duplicates: float
    dcmtk: str
    uss_ready: int
    uss_end: int
    timed_s: float
    host_cpu_s: float
    foreign_cpu_s: float
    file_creation_us: float


def measure(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> Raw:
    storescu_bin, storescp_bin = dcmtk_tool("storescu"), dcmtk_tool("storescp")
    log(
        f"building test data in {tmp} ({args.slices} CBCT slices of 512x512, "
        f"{args.records} treatment records, {args.rounds} rounds of fresh UIDs)"
    )
    started = time.perf_counter()
    warmup, rounds = build_data(
        tmp / "data", rounds=args.rounds, slices=args.slices, records=args.records
    )
    # Written back now, not during the first rounds: an fsync of rtops' waited behind the
    # disk's write-back of the bench's own hundreds of MB of test data.
    os.sync()
    log(f"test data ready in {time.perf_counter() - started:.1f}s")
    create_us = file_creation_us(tmp / "creation-probe")

    nats = EmbeddedNats(tmp / "nats", port=0).start()
    stack.callback(nats.stop)
    scp = start_scp(tmp / "var", nats.url, tmp / "scp.log", fsync=not args.no_fsync)
    stack.callback(stop_process, scp.proc)
    rss = PeakRss(scp.proc.pid).start()
    stack.callback(rss.stop)
    received = {"dcmtk": tmp / "storescp", "pynetdicom": tmp / "pynetdicom-storescp"}
    storescp, storescp_port = start_storescp(storescp_bin, received["dcmtk"], tmp / "storescp.log")
    stack.callback(stop_process, storescp)
    pyscp, pyscp_port = start_pynetdicom_storescp(
        received["pynetdicom"], tmp / "pynetdicom-storescp.log"
    )
    stack.callback(stop_process, pyscp)
    wait_http_ok(scp.url("/readyz"), scp.proc)
    wait_echo(storescp_port, storescp)
    wait_echo(pyscp_port, pyscp, "pynetdicom's storescp")
    idle_rss = rss.current()
    uss_ready = uss_of(scp.proc.pid)
    ports = {"rtops": scp.dicom_port, "dcmtk": storescp_port, "pynetdicom": pyscp_port}
    log(
        f"rtops SCP ready (pid {scp.proc.pid}, DICOM {scp.dicom_port}), storescp ready "
        f"(port {storescp_port}), pynetdicom storescp ready (port {pyscp_port}), NATS {nats.url}"
    )

    for target in TARGETS:
        storescu(storescu_bin, ports[target], warmup)
    # The probe sends records by file without decoding them, so that it times the receiver
    # and the network rather than pydicom re-encoding each record in this process.
    _config.STORE_SEND_CHUNKED_DATASET = True

    walls: dict[str, dict[str, list[float]]] = {t: {w: [] for w in WORKLOADS} for t in TARGETS}
    # CPU ms per object of each receiver's process tree during its sends (user + system).
    cpu: dict[str, dict[str, list[float]]] = {t: {w: [] for w in WORKLOADS} for t in TARGETS}
    pids = {"rtops": scp.proc.pid, "dcmtk": storescp.pid, "pynetdicom": pyscp.pid}
    ledger = CpuLedger([p.pid for p in (scp.proc, storescp, pyscp, nats.proc) if p is not None])
    timed_start = time.perf_counter()
    store_buckets: dict[float, float] = {}
    probe: dict[str, list[float]] = {t: [] for t in TARGETS}
    probe_failures: dict[str, list[str]] = {t: [] for t in TARGETS}
    for number, files in enumerate(rounds):
        order = send_order(number)
        # The reference receivers' files stay until the end: deleted between rounds, they
        # would slow the next round's file creation (``file_creation_us``).
        for workload in WORKLOADS:
            paths = files.of(workload)
            for target in order:
                before = scrape(scp.url("/metrics")) if target == "rtops" else {}
                # Counted before each send: the latency probe writes here between sends too.
                had = count_files(received[target]) if target in received else 0
                prime_memory(max(2 * size_of(paths), PRIME_MIN_BYTES))
                cpu_before = tree_cpu(pids[target])
                walls[target][workload].append(storescu(storescu_bin, ports[target], paths))
                cpu[target][workload].append(
                    1000 * (tree_cpu(pids[target]) - cpu_before) / len(paths)
                )
                if target in received:
                    got = count_files(received[target]) - had
                    if got != len(paths):
                        raise RuntimeError(
                            f"{target}'s storescp wrote {got} new files, expected {len(paths)}"
                        )
                    continue
                after = scrape(scp.url("/metrics"))
                label = LABELS[workload]
                stored = sample_value(after, STORED_COUNTER, sop_class=label) - sample_value(
                    before, STORED_COUNTER, sop_class=label
                )
                if stored != len(paths):
                    raise RuntimeError(
                        f"rtops stored {stored:.0f} new {label} objects of "
                        f"{len(paths)} sent; the round measured something else"
                    )
                if workload == "records":
                    old = buckets(before, label)
                    for bound, count in buckets(after, label).items():
                        store_buckets[bound] = (
                            store_buckets.get(bound, 0.0) + count - old.get(bound, 0.0)
                        )
        for target in order:
            outcome = probe_latency(ports[target], files.probe, received.get(target))
            probe[target].extend(outcome.seconds)
            if outcome.failure:
                probe_failures[target].append(f"round {number + 1}: {outcome.failure}")
                log(f"latency probe to {target} failed in round {number + 1}: {outcome.failure}")
        log(
            f"round {number + 1}/{len(rounds)} (order {', '.join(order)}): "
            + ", ".join(f"{t} {w} {walls[t][w][-1]:.2f}s" for w in WORKLOADS for t in TARGETS)
        )

    timed_s = time.perf_counter() - timed_start
    host_cpu, foreign_cpu = ledger.since_start()
    uss_end = uss_of(scp.proc.pid)
    final = scrape(scp.url("/metrics"))
    duplicates = sum(v for (name, _), v in final.items() if name == DUPLICATE_COUNTER)
    rss.stop()
    return Raw(
        walls=walls,
        cpu_ms_per_object=cpu,
        bytes_per_round={w: [size_of(r.of(w)) for r in rounds] for w in WORKLOADS},
        store_buckets=store_buckets,
        probe=probe,
        probe_failures=probe_failures,
        idle_rss=idle_rss,
        peak_rss=rss.peak,
        peak_rss_process=rss.peak_process,
        processes=rss.processes,
        rss_samples=rss.samples,
        duplicates=duplicates,
        dcmtk=dcmtk_version(storescu_bin),
        uss_ready=uss_ready,
        uss_end=uss_end,
        timed_s=timed_s,
        host_cpu_s=host_cpu,
        foreign_cpu_s=foreign_cpu,
        file_creation_us=create_us,
    )


def order_balanced(ratios: Sequence[float], numerator: str) -> float:
    """Geometric mean over the positions of ``numerator`` in the round (first, second, third)
    of the median ratio of the rounds where it had that position: when the rounds are not a
    multiple of three some positions have a round more, and a plain median then leans towards
    theirs. Falls back to the plain median while some position has no round yet."""
    groups = [
        [r for n, r in enumerate(ratios) if position(numerator, n) == place]
        for place in range(len(TARGETS))
    ]
    if not all(groups):
        return statistics.median(ratios)
    return statistics.geometric_mean([statistics.median(g) for g in groups])


def summarize(args: argparse.Namespace, raw: Raw) -> dict[str, Any]:
    workloads: dict[str, Any] = {}
    for workload in WORKLOADS:
        size = statistics.fmean(raw.bytes_per_round[workload])
        objects = args.slices if workload == "cbct" else args.records
        per_target = {}
        for target in TARGETS:
            walls = raw.walls[target][workload]
            median = statistics.median(walls)
            positions = {
                place: [w for n, w in enumerate(walls) if position(target, n) == index]
                for index, place in enumerate(POSITIONS)
            }
            per_target[target] = {
                "median_s": median,
                "min_s": min(walls),
                "max_s": max(walls),
                "mb_per_s": size / MB / median,
                "objects_per_s": objects / median,
                "walls_s": walls,
                "median_s_by_position": {
                    place: statistics.median(w) if w else None for place, w in positions.items()
                },
            }
        workloads[workload] = {
            "objects": objects,
            "bytes_per_round": size,
            "targets": per_target,
        }
        for numerator, denominator in RATIOS:
            ratios = [
                o / d
                for o, d in zip(
                    raw.walls[numerator][workload], raw.walls[denominator][workload], strict=True
                )
            ]
            rounds = range(len(ratios))
            workloads[workload][f"ratio_{numerator}_over_{denominator}"] = {
                "median_of_per_round": statistics.median(ratios),
                "of_medians": per_target[numerator]["median_s"]
                / per_target[denominator]["median_s"],
                "order_balanced": order_balanced(ratios, numerator),
                "per_round": ratios,
                f"{numerator}_first": [position(numerator, n) == 0 for n in rounds],
                f"{numerator}_position": [position(numerator, n) + 1 for n in rounds],
            }

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    latency = {
        "server_histogram": {
            "what": f"{STORE_HISTOGRAM}{{sop_class={LABELS['records']!r}}}: C-STORE handling "
            "inside the SCP, received to answered, bucket-interpolated",
            "count": raw.store_buckets.get(math.inf, 0.0),
            "p50_ms": ms(histogram_quantile(0.50, raw.store_buckets)),
            "p99_ms": ms(histogram_quantile(0.99, raw.store_buckets)),
        },
    }
    for target in TARGETS:
        values = raw.probe[target]
        latency[f"client_round_trip_{target}"] = {
            "what": f"pynetdicom send_c_store to {target}, request sent to response received",
            "count": len(values),
            "p50_ms": ms(percentile(values, 0.50)),
            "p99_ms": ms(percentile(values, 0.99)),
            "max_ms": ms(max(values, default=None)),
            "failures": raw.probe_failures[target],
        }

    cbct_ratio = workloads["cbct"]["ratio_rtops_over_dcmtk"]["order_balanced"]
    peak_mb = raw.peak_rss / MB
    # Issue 14's target is per SCP process (RTOPS_SCP_PROCESSES runs one per core).
    peak_process_mb = raw.peak_rss_process / MB
    p99 = latency["client_round_trip_rtops"]["p99_ms"]
    targets = [
        {
            "name": "CBCT wall time rtops/DCMTK (order-balanced ratio)",
            "value": cbct_ratio,
            "limit": f"<= {CBCT_RATIO_MAX}x",
            "pass": cbct_ratio <= CBCT_RATIO_MAX,
        },
        {
            "name": "peak RSS per rtops SCP process (MB = 10^6 B)",
            "value": peak_process_mb,
            "limit": f"< {PEAK_RSS_MAX_MB:.0f} MB",
            "pass": peak_process_mb < PEAK_RSS_MAX_MB,
        },
        {
            "name": "treatment record store-to-ack p99 (client-observed)",
            "value": p99,
            "limit": f"< {RECORD_P99_MAX_MS:.0f} ms",
            # A record that was never acknowledged has no latency to rank, but it is a miss.
            "pass": p99 is not None and p99 < RECORD_P99_MAX_MS and not raw.probe_failures["rtops"],
        },
    ]
    return {
        "config": {
            "rounds": args.rounds,
            "slices": args.slices,
            "records": args.records,
            "no_fsync": args.no_fsync,
            "rows": 512,
            "columns": 512,
            "warmup_objects_per_workload": WARMUP_OBJECTS,
            "send_orders": [list(send_order(n)) for n in range(args.rounds)],
            "pynetdicom_storescp": "python -m pynetdicom storescp <port> -aet "
            f"{CALLED_AE} -od <dir>",
        },
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
            "pynetdicom": pynetdicom.__version__,
            "dcmtk": raw.dcmtk,
            "file_creation_us": raw.file_creation_us,
        },
        "workloads": workloads,
        "cpu_ms_per_object": {
            t: {w: statistics.median(v) for w, v in by_w.items() if v}
            for t, by_w in raw.cpu_ms_per_object.items()
        },
        "memory": {
            "idle_rss_mb": raw.idle_rss / MB,
            "peak_rss_mb": peak_mb,
            "peak_rss_process_mb": peak_process_mb,
            "processes": raw.processes,
            "samples": raw.rss_samples,
            "interval_s": RSS_INTERVAL_S,
            "uss_ready_mb": raw.uss_ready / MB,
            "uss_end_mb": raw.uss_end / MB,
        },
        "contention": {
            "timed_s": raw.timed_s,
            "host_user_cpu_s": raw.host_cpu_s,
            "foreign_cpu_s": raw.foreign_cpu_s,
            "foreign_cores": raw.foreign_cpu_s / raw.timed_s if raw.timed_s else 0.0,
        },
        "latency": latency,
        "rtops_duplicates": raw.duplicates,
        "targets": targets,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(summary: dict[str, Any]) -> str:
    cfg, host = summary["config"], summary["host"]
    cbct, records = summary["workloads"]["cbct"], summary["workloads"]["records"]
    lines = [
        f"rtops SCP benchmark: {cfg['rounds']} rounds; CBCT {cfg['slices']} slices 512x512 "
        f"16-bit ({cbct['bytes_per_round'] / MB:.1f} MB), {cfg['records']} treatment records "
        f"({records['bytes_per_round'] / MB:.2f} MB); sender DCMTK storescu, one association"
        + ("; rtops WITHOUT fsync (--no-fsync)" if cfg.get("no_fsync") else ""),
        f"host: {host['cpus']} CPUs, Python {host['python']}, pydicom {host['pydicom']}, "
        f"pynetdicom {host['pynetdicom']}, {host['dcmtk']}",
        file_creation_line(host["file_creation_us"], "every receiver"),
        "",
        f"{'workload':<10}{'target':<12}{'median s':>10}{'min s':>9}{'max s':>9}{'MB/s':>9}"
        f"{'obj/s':>9}",
    ]
    for workload, data in summary["workloads"].items():
        for target, t in data["targets"].items():
            lines.append(
                f"{workload:<10}{target:<12}{t['median_s']:>10.3f}{t['min_s']:>9.3f}"
                f"{t['max_s']:>9.3f}{t['mb_per_s']:>9.2f}{t['objects_per_s']:>9.0f}"
            )
    lines += [
        "",
        f"{'median s by position in the round':<36}"
        + "".join(f"{'sent ' + place:>13}" for place in POSITIONS),
    ]
    for workload, data in summary["workloads"].items():
        for target, t in data["targets"].items():
            by = t["median_s_by_position"]
            lines.append(
                f"{workload:<10}{target:<26}"
                + "".join(f"{_fmt(by[place], '.3f'):>13}" for place in POSITIONS)
            )
    orders = " ".join(f"{''.join(CODES[t] for t in order):>6}" for order in cfg["send_orders"])
    legend = ", ".join(f"{CODES[t]} {DISPLAY[t]}" for t in TARGETS)
    lines += [
        "",
        f"{'ratio':<28}{'median of rounds':>17}{'of medians':>12}{'order-balanced':>16}"
        "   per round",
        f"{'  send order (' + legend + ')':<73}   {orders}",
    ]
    for workload, data in summary["workloads"].items():
        for numerator, denominator in RATIOS:
            r = data[f"ratio_{numerator}_over_{denominator}"]
            name = f"{DISPLAY[numerator]}/{DISPLAY[denominator]}"
            rounds = " ".join(f"{x:>6.2f}" for x in r["per_round"])
            lines.append(
                f"{workload:<10}{name:<18}{r['median_of_per_round']:>16.2f}x"
                f"{r['of_medians']:>11.2f}x{r['order_balanced']:>15.2f}x   {rounds}"
            )
    cpu = summary["cpu_ms_per_object"]
    lines += ["", "receiver CPU per object (user + system of its processes, median of rounds, ms):"]
    for workload in WORKLOADS:
        row = {t: cpu.get(t, {}).get(workload) for t in TARGETS}
        ratio = (
            f"; rtops/DCMTK {row['rtops'] / row['dcmtk']:.1f}x"
            if row.get("rtops") and row.get("dcmtk")
            else ""
        )
        lines.append(
            f"  {workload}: " + ", ".join(f"{t} {_fmt(row[t], '.2f')}" for t in TARGETS) + ratio
        )
    mem = summary["memory"]
    lines += [
        "",
        f"rtops SCP memory (process tree, sampled every {mem['interval_s'] * 1000:.0f}"
        f" ms): RSS {mem['idle_rss_mb']:.1f} MB when ready, peak {mem['peak_rss_mb']:.1f}"
        f" MB over {mem['processes']} process(es), largest process"
        f" {mem['peak_rss_process_mb']:.1f} MB; unique (USS) {mem['uss_ready_mb']:.1f} MB"
        " when ready, "
        f"{mem['uss_end_mb']:.1f} MB at the end",
        "",
        f"{'treatment record latency, ms':<50}{'n':>6}{'p50':>8}{'p99':>8}{'max':>8}",
    ]
    names = {
        "server_histogram": "rtops server-side handling (histogram estimate)",
        "client_round_trip_rtops": "client-observed round trip, rtops SCP",
        "client_round_trip_dcmtk": "client-observed round trip, DCMTK (reference)",
        "client_round_trip_pynetdicom": "client-observed round trip, pynetdicom storescp",
    }
    for key, name in names.items():
        lat = summary["latency"][key]
        lines.append(
            f"{name:<50}{lat['count']:>6.0f}{_fmt(lat['p50_ms']):>8}"
            f"{_fmt(lat['p99_ms']):>8}{_fmt(lat.get('max_ms')):>8}"
        )
    for key, name in names.items():
        for failure in summary["latency"][key].get("failures", ()):
            lines.append(f"  probe failure, {name.split(', ')[-1]}: {failure}")
    lines += ["", "targets"]
    for target in summary["targets"]:
        value = _fmt(target["value"], ".2f")
        verdict = "PASS" if target["pass"] else "MISS"
        lines.append(f"  {verdict}  {target['name']}: {value} (target {target['limit']})")
    busy = summary["contention"]
    lines.append(
        f"other processes used {busy['foreign_cpu_s']:.1f} of the host's "
        f"{busy['host_user_cpu_s']:.1f} user-space CPU s during the {busy['timed_s']:.0f} s of "
        f"rounds ({busy['foreign_cores']:.2f} cores on average)"
    )
    if busy["foreign_cores"] > FOREIGN_CORES_WARN:
        lines.append(
            "warning: the host was shared with another workload; the timings are "
            "noisier than usual, re-run on a quiet machine"
        )
    if summary["rtops_duplicates"]:
        lines.append(
            f"warning: rtops counted {summary['rtops_duplicates']:.0f} duplicates; "
            "some sends did not exercise storage"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scp_bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="timed rounds (default 6: a multiple of 6 balances the send order fully)",
    )
    parser.add_argument("--slices", type=int, default=200, help="CBCT slices (default 200)")
    parser.add_argument(
        "--records", type=int, default=50, help="treatment records per round (default 50)"
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="run rtops with every fsync off (file, directory, SQLite commit): its own cost "
        "apart from the disk's; a benchmark-only switch, objects are not durable",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    for name in ("rounds", "slices", "records"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds through the ExitStack, which stops every process and removes tmp.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with contextlib.ExitStack() as stack:
            tmp = Path(tempfile.mkdtemp(prefix="rtops-scp-bench-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            try:
                raw = measure(args, tmp, stack)
            except Exception:
                for name in ("scp.log", "storescp.log", "pynetdicom-storescp.log"):
                    if text := tail(tmp / name):
                        log(f"last lines of {name}:\n{text}")
                raise
    except KeyboardInterrupt:
        log("interrupted: processes stopped, temporary files removed")
        return 130
    summary = summarize(args, raw)
    print(render(summary), flush=True)
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        log(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
