"""Ten senders at once against one SCP process and against N (issue 14; docs/scp_scale.md).

Each sender is a DCMTK ``storescu`` process with one association carrying a CBCT series
(``--slices`` slices, 512x512, 16 bit) and ``--records`` treatment records, all senders started
together. The same data go, in the same run, to ``python -m services.scp_listener`` with
``RTOPS_SCP_PROCESSES=1`` and with ``RTOPS_SCP_PROCESSES=N`` (each on its own SQLite database,
object store and embedded NATS under a temp dir; ``RTOPS_SCP_MAX_ASSOCIATIONS_PER_PEER=16``,
since every sender is 127.0.0.1). ``--rounds`` pairs of runs (one process, N processes), the
order turned every round (1, N, N, 1, ...), each run on a fresh SCP: this machine's speed
drifts by a third within minutes, and a single pair measured the drift as often as the SCP.
Printed per run:

* aggregate MB/s and objects/s (bytes of every file / wall time from the first sender's start
  to the last one's exit); the ratio N / 1 of each round and their median (target: at least
  1.7 on 2 cores);
* p99 store time: the bucket bound of the SCP's own ``rtops_scp_store_seconds`` histogram
  (received -> answered, every process) that holds the 99th percentile;
* CPU seconds of the SCP's processes (user + system) while they received, which, unlike the
  wall time, a loaded machine does not inflate much, and the senders' own;
* how busy the machine was while the senders ran (every core, from ``/proc/stat``), and the
  round's ratio divided by that share of the N-process run: the ratio had that run kept every
  core busy with the same work. The senders run on the same cores, so their CPU is in it: when
  that figure stays under the target, the machine, not the SCP, is what is short;
* peak RSS of each SCP process over its life (the kernel's VmHWM, read at the end);
* events on the stream once the outbox is empty: expected, found, distinct ``Nats-Msg-Id``
  (lost = expected - distinct, duplicated = found - distinct; both must be 0).

The load average is printed first and last: the machine may be shared. Run from the root::

    python -m bench.scp_concurrent [--senders 10] [--slices 100] [--records 5] [--processes 2]
        [--rounds 5] [--no-fsync] [--one-process-on-one-cpu]

With N processes covering the cores (the default), each SCP process runs on a CPU of its own
(``RTOPS_SCP_CPU_PINNING=auto``); one process on several cores is not pinned.
``--one-process-on-one-cpu`` pins it too (``RTOPS_SCP_CPU_PINNING=on``), to show what pinning
alone gives.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from bench.scp_bench import (
    clean_env,
    dcmtk_tool,
    file_creation_line,
    file_creation_us,
    fresh_copies,
    start_scp,
    stop_process,
    wait_http_ok,
)
from services.scp_listener.cpu_pinning import allowed_cpus
from services.scp_listener.settings import ScpSettings
from services.scp_listener.store import DicomObject
from shared.db import make_engine, session_factory
from shared.natsd import EmbeddedNats
from tests.dicom_factories import cbct_series, treatment_record, write_series
from tests.support import stream_message_ids

SERVICE = "scp_listener"
CALLING_AE = "TRUEBEAM1"
TARGET_RATIO = 1.7


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------ data


def build(folder: Path, senders: int, slices: int, records: int, rows: int) -> list[list[Path]]:
    """One batch per sender: its own CBCT series and records (new UIDs each)."""
    cbct = write_series(cbct_series(n_slices=slices, rows=rows, columns=rows), folder / "base")
    plan = generate_uid()
    recs = write_series(
        (treatment_record(plan_uid=plan, fraction_number=i + 1) for i in range(records)),
        folder / "base",
    )
    return [fresh_copies(cbct + recs, folder / f"sender{i}") for i in range(senders)]


# ------------------------------------------------------------------ measuring


def peak_rss_bytes(pid: int) -> dict[int, int]:
    """Peak RSS of the SCP parent and each worker over its whole life, start-up included: the
    kernel's own high-water mark (VmHWM), read once at the end. Sampling it from this process
    every 50 ms, with the sender poll beside it, took 0.31 s of CPU in a 4.2 s run (psutil
    lists every process of the machine to find the children), on a machine the run
    saturates."""
    peaks: dict[int, int] = {}
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for p in (parent, *parent.children()):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks[p.pid] = int(line.split()[1]) * 1024
    return peaks


def cpu_seconds(pid: int) -> float:
    return sum(each_cpu_seconds(pid).values())


def each_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of the SCP parent and each worker, parent first."""
    seconds: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        for p in (parent, *parent.children()):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                seconds[p.pid] = t.user + t.system
    return seconds


def cpu_ticks() -> tuple[int, int]:
    """The machine's (busy, total) CPU time since boot, every core, in clock ticks: idle and
    waiting for I/O are not busy (proc(5), /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])  # guest time is counted in user time already
    return total - idle, total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def p99_bound(samples: dict[str, list[tuple[dict[str, str], float]]]) -> str:
    """The histogram bucket bound that holds the 99th percentile (all SOP classes)."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get("rtops_scp_store_seconds_bucket", []):
        bound = float(labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    if not buckets:
        return "n/a"
    total = buckets[max(buckets)]
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return f"<={bound:g}s" if bound != float("inf") else ">2.5s"
    return "n/a"


def wait_listening(pid: int, port: int, processes: int, timeout: float = 120.0) -> None:
    """The parent listens on the DICOM port and every worker is up (a worker's servers
    listen on a loopback port of their own once it is ready for passed connections)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parent = psutil.Process(pid)
        listening = 0
        for p in (parent, *parent.children()):
            with contextlib.suppress(psutil.Error):
                listening += any(
                    c.status == psutil.CONN_LISTEN and (p is not parent or c.laddr.port == port)
                    for c in p.net_connections("tcp")
                )
        if listening == processes:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{processes} SCP processes did not listen on {port} within {timeout}s")


@dataclass
class Result:
    processes: int
    wall_s: float
    nbytes: int
    objects: int
    stored: int
    p99: str
    cpu_s: float
    # Each sender's end, first to last: two groups mean one process finished behind the other.
    finished_s: list[float]
    cpu_per_process_s: list[float]  # while the senders ran, parent first
    senders_cpu_s: float
    busy: float  # share of the machine's CPU time busy while the senders ran, every core
    peaks_mb: list[float]
    expected_events: int
    events: int
    distinct: int

    @property
    def mb_s(self) -> float:
        return self.nbytes / 1e6 / self.wall_s

    @property
    def objects_s(self) -> float:
        return self.objects / self.wall_s


def run_once(
    tool: str,
    batches: list[list[Path]],
    processes: int,
    records: int,
    work: Path,
    *,
    fsync: bool = True,
    one_on_one_cpu: bool = False,
) -> Result:
    """One configuration once, on a database, object store and NATS of its own (under ``work``,
    which must be new)."""
    var = work / "var"
    nats_server = EmbeddedNats(work / "nats", port=0).start()
    stream = f"BENCH{processes}"
    scp = start_scp(
        var,
        nats_server.url,
        work / "scp.log",
        fsync=fsync,
        RTOPS_SCP_PROCESSES=str(processes),
        RTOPS_SCP_MAX_ASSOCIATIONS_PER_PEER="16",
        RTOPS_STREAM_NAME=stream,
        # ``auto`` pins N processes covering the cores, not one process on several.
        RTOPS_SCP_CPU_PINNING="on" if one_on_one_cpu else "auto",
    )
    try:
        wait_http_ok(scp.url("/readyz"), scp.proc, timeout=120)
        wait_listening(scp.proc.pid, scp.dicom_port, processes)
        processes_cpu0 = each_cpu_seconds(scp.proc.pid)
        cpu0 = sum(processes_cpu0.values())
        cmd = [tool, "-R", "-aet", CALLING_AE, "-aec", "RTOPS", "127.0.0.1", str(scp.dicom_port)]
        senders_cpu0 = children_cpu_seconds()  # the SCP, a child too, is reaped only later
        ticks0 = cpu_ticks()
        start = time.perf_counter()
        senders = [
            subprocess.Popen(
                [*cmd, *map(str, batch)],
                env=clean_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for batch in batches
        ]
        # One blocked thread per sender rather than a polling loop: the run saturates the
        # machine, and what this process spends is taken from the SCP.
        finished: dict[int, float] = {}

        def wait_for(i: int, proc: subprocess.Popen[bytes]) -> None:
            proc.wait()
            finished[i] = time.perf_counter() - start

        waiters = [
            threading.Thread(target=wait_for, args=(i, proc), daemon=True)
            for i, proc in enumerate(senders)
        ]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
        ticks = cpu_ticks()
        processes_cpu = each_cpu_seconds(scp.proc.pid)
        senders_cpu = children_cpu_seconds() - senders_cpu0
        for proc in senders:
            _, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"storescu exited with {proc.returncode}: {err.decode()[-800:]}")
        wall = time.perf_counter() - start
        expected = len(batches) * (1 + records)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen = metrics(scp.url("/metrics"))
            depth = sum(v for _, v in seen.get("rtops_scp_outbox_depth", []))
            if depth == 0 and len(stream_message_ids(nats_server.url, stream)) >= expected:
                break
            time.sleep(0.2)
        cpu = cpu_seconds(scp.proc.pid) - cpu0
        peaks = peak_rss_bytes(scp.proc.pid)
        ids = stream_message_ids(nats_server.url, stream)
        engine = make_engine(ScpSettings(var_dir=var, database_url=None), SERVICE)
        try:
            with session_factory(engine)() as session:
                stored = session.scalar(select(func.count()).select_from(DicomObject)) or 0
        finally:
            engine.dispose()
        return Result(
            processes=processes,
            wall_s=wall,
            nbytes=sum(p.stat().st_size for b in batches for p in b),
            objects=sum(len(b) for b in batches),
            stored=stored,
            p99=p99_bound(seen),
            cpu_s=cpu,
            finished_s=sorted(finished.values()),
            cpu_per_process_s=[
                processes_cpu[pid] - processes_cpu0.get(pid, 0.0) for pid in processes_cpu
            ],
            peaks_mb=[peaks[pid] / 1e6 for pid in sorted(peaks)],
            senders_cpu_s=senders_cpu,
            busy=(ticks[0] - ticks0[0]) / max(1, ticks[1] - ticks0[1]),
            expected_events=expected,
            events=len(ids),
            distinct=len(set(ids) - {""}),
        )
    finally:
        stop_process(scp.proc, timeout=40)
        nats_server.stop()


def pairs_order(rounds: int, many: int) -> list[int]:
    """1, N, N, 1, 1, N, ...: each round a pair of runs side by side in time, the order turned
    every round, so that a machine getting faster or slower during the run favours neither."""
    order: list[int] = []
    for number in range(rounds):
        order += [1, many] if number % 2 == 0 else [many, 1]
    return order


def print_results(results: list[Result], rounds: int) -> float:
    """The table, one row per run; returns the median of the rounds' ratios."""
    print(
        f"{'round':>5} {'procs':>5} {'wall s':>7} {'MB/s':>7} {'obj/s':>7} {'stored':>7} "
        f"{'p99 store':>10} {'SCP CPU s':>9} {'events':>6} {'lost':>4} {'dup':>4}  "
        "peak RSS per process (MB)"
    )
    for number, r in enumerate(results):
        print(
            f"{number // 2 + 1:>5} {r.processes:>5} {r.wall_s:>7.2f} {r.mb_s:>7.1f} "
            f"{r.objects_s:>7.1f} {r.stored:>7} {r.p99:>10} {r.cpu_s:>9.1f} {r.events:>6} "
            f"{r.expected_events - r.distinct:>4} {r.events - r.distinct:>4}  "
            + ", ".join(f"{mb:.0f}" for mb in r.peaks_mb)
        )
    for number, r in enumerate(results):
        print(
            f"round {number // 2 + 1}, {r.processes} process(es): senders finished at "
            + " ".join(f"{t:.2f}" for t in r.finished_s)
            + " s; CPU while they ran, per process: "
            + ", ".join(f"{c:.2f}" for c in r.cpu_per_process_s)
            + f" s; the senders' CPU {r.senders_cpu_s:.2f} s; machine busy {r.busy:.0%}"
        )
    ratios, at_full_use = [], []
    for number in range(rounds):
        pair = sorted(results[2 * number : 2 * number + 2], key=lambda r: r.processes)
        ratios.append(pair[1].mb_s / pair[0].mb_s)
        at_full_use.append(ratios[-1] / pair[1].busy)
    many = max(r.processes for r in results)
    print(f"ratio {many} processes / 1 per round: " + ", ".join(f"{x:.2f}x" for x in ratios))
    print(
        f"the same, had the {many}-process run kept every core busy: "
        + ", ".join(f"{x:.2f}x" for x in at_full_use)
        + f" (median {statistics.median(at_full_use):.2f}x)"
    )
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--rows", type=int, default=512, help="CBCT slice rows and columns")
    # The SCP's own default: the CPUs it may run on (its affinity), as RTOPS_SCP_PROCESSES=0.
    parser.add_argument("--processes", type=int, default=len(allowed_cpus()) or os.cpu_count() or 2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="pairs of runs (1 process, N processes), alternated; the ratio is their median",
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="the SCP through bench/scp_nofsync.py: what the disk's flushes cost (benchmark only)",
    )
    parser.add_argument(
        "--one-process-on-one-cpu",
        action="store_true",
        help="RTOPS_SCP_CPU_PINNING=on: the one-process runs pinned to one CPU too, as each "
        "of N processes is by default: what pinning alone gives one process",
    )
    args = parser.parse_args(argv)
    tool = dcmtk_tool("storescu")
    print(
        f"load average at start: {loadavg()} ({os.cpu_count()} cores)"
        + ("; the SCP WITHOUT fsync (--no-fsync)" if args.no_fsync else "")
        + ("; the one process pinned to one CPU" if args.one_process_on_one_cpu else "")
    )
    with tempfile.TemporaryDirectory(prefix="rtops-concurrent-") as tmp:
        work = Path(tmp)
        log(f"building {args.senders} x ({args.slices} slices + {args.records} records)")
        batches = build(work / "data", args.senders, args.slices, args.records, args.rows)
        # Written back before the first run, not during it: its fsyncs waited behind the
        # write-back of these 0.5 GB, the machine 80 % idle for a third of a second.
        os.sync()
        print(file_creation_line(file_creation_us(work / "creation-probe"), "every SCP process"))
        results = []
        for number, processes in enumerate(pairs_order(args.rounds, args.processes)):
            log(f"run {number + 1}: {args.senders} senders -> {processes} SCP process(es)")
            results.append(
                run_once(
                    tool,
                    batches,
                    processes,
                    args.records,
                    work / f"run{number + 1}",
                    fsync=not args.no_fsync,
                    one_on_one_cpu=args.one_process_on_one_cpu,
                )
            )
    ratio = print_results(results, args.rounds)
    verdict = "ok" if ratio >= TARGET_RATIO else "MISS"
    print(
        f"aggregate throughput {args.processes} processes / 1: {ratio:.2f}x, median of "
        f"{args.rounds} round(s) ({verdict}, target >= {TARGET_RATIO}x)"
    )
    print(f"load average at end: {loadavg()}")
    if any(
        r.stored != r.objects or r.distinct != r.expected_events or r.events != r.distinct
        for r in results
    ):
        print("objects or events lost or duplicated: see the table", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
