"""The SCP's cost per object against the maximum PDU it advertises (issues 14 and 15).

For each ``--pdu`` value a fresh SCP (its own SQLite database and store, one embedded NATS for
all) is started with ``RTOPS_SCP_MAX_PDU`` set to it, warmed up with a few slices, then sent a
``--slices`` x 512 x 512 CBCT, once by DCMTK's ``storescu`` and once by pynetdicom (chunked
send: the file's bytes as they are, in PDUs as large as the SCP allows; DCMTK never sends more
than 128 KiB). Measured per send: the SCP process's CPU seconds (user + system, from
``/proc``) per object, which the machine's load barely moves, the wall time, and the SCP's
peak RSS over the whole run. ``--profile DIR`` runs the SCP under ``bench.scp_profiled`` and
prints the top functions by internal time of every thread together.

    .venv/bin/python -m bench.scp_pdu --pdu 16384,65536,262144,1048576,0 --slices 50
"""

from __future__ import annotations

import argparse
import contextlib
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from pynetdicom import AE, _config

from bench.scp_bench import (
    CALLED_AE,
    CALLING_AE,
    HOST,
    PeakRss,
    dcmtk_tool,
    fresh_copies,
    log,
    stop_process,
    storescu,
    wait_http_ok,
)
from bench.scp_bench import start_scp as start_bench_scp
from shared.natsd import EmbeddedNats
from tests.dicom_factories import cbct_series, write_series

WARMUP = 5


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def pynetdicom_send(port: int, paths: Sequence[Path]) -> float:
    """Wall seconds to send ``paths`` over one association, bytes as they are on disk."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    ae.maximum_pdu_size = 16384
    start = time.perf_counter()
    assoc = ae.associate(HOST, port, ae_title=CALLED_AE)
    if not assoc.is_established:
        raise RuntimeError("association refused")
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for path in paths:
            rsp = assoc.send_c_store(path)
            if int(rsp.Status) != 0:
                raise RuntimeError(f"C-STORE status 0x{int(rsp.Status):04X}")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    return time.perf_counter() - start


def measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, float | int | str]]:
    base = write_series(cbct_series(n_slices=args.slices, rows=512, columns=512), tmp / "base")
    storescu_tool = dcmtk_tool("storescu")
    rows: list[dict[str, float | int | str]] = []
    with contextlib.ExitStack() as stack:
        nats = EmbeddedNats(tmp / "nats", port=0).start()
        stack.callback(nats.stop)
        for pdu in args.pdu:
            var = tmp / f"var-{pdu}"
            module = "bench.scp_profiled" if args.profile else "services.scp_listener"
            if args.stock_reader:
                module = "bench.scp_stock_reader"
            env = {"RTOPS_SCP_MAX_PDU": str(pdu), "RTOPS_SCP_PROCESSES": "1"}
            if args.profile:
                folder = args.profile / str(pdu)
                folder.mkdir(parents=True, exist_ok=True)
                env["RTOPS_BENCH_PROFILE_DIR"] = str(folder)
            scp = start_bench_scp(var, nats.url, tmp / f"scp-{pdu}.log", module=module, **env)
            try:
                wait_http_ok(scp.url("/readyz"), scp.proc)
                storescu(storescu_tool, scp.dicom_port, fresh_copies(base[:WARMUP], tmp / "w"))
                peak = PeakRss(scp.proc.pid).start()
                for sender in args.senders:
                    for r in range(args.rounds):
                        copies = fresh_copies(base, tmp / f"{pdu}-{sender}-{r}")
                        before = cpu_seconds(scp.proc.pid)
                        if sender == "storescu":
                            wall = storescu(storescu_tool, scp.dicom_port, copies)
                        else:
                            wall = pynetdicom_send(scp.dicom_port, copies)
                        time.sleep(0.2)  # let the relay publish what the send queued
                        cpu = cpu_seconds(scp.proc.pid) - before
                        rows.append(
                            {
                                "pdu": pdu,
                                "sender": sender,
                                "round": r,
                                "cpu_ms_per_object": 1000 * cpu / len(copies),
                                "wall_s": wall,
                            }
                        )
                        log(f"pdu {pdu} {sender} round {r}: {rows[-1]}")
                peak.stop()
                for row in rows:
                    if row["pdu"] == pdu:
                        row["peak_rss_mb"] = peak.peak / 1e6
            finally:
                stop_process(scp.proc)
    return rows


def render(rows: list[dict[str, float | int | str]]) -> str:
    lines = [
        "| max PDU | sender | SCP CPU ms/object (median) | wall s (median) | SCP peak RSS MB |",
        "| --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["pdu"], r["sender"]) for r in rows}, key=lambda k: (k[0] or 1 << 40, k[1]))
    for pdu, sender in keys:
        mine = [r for r in rows if r["pdu"] == pdu and r["sender"] == sender]
        cpu = statistics.median(float(r["cpu_ms_per_object"]) for r in mine)
        wall = statistics.median(float(r["wall_s"]) for r in mine)
        lines.append(
            f"| {pdu or 'unlimited'} | {sender} | {cpu:.2f} | {wall:.2f} | "
            f"{float(mine[0].get('peak_rss_mb', 0)):.0f} |"
        )
    return "\n".join(lines)


def print_profile(folder: Path, top: int) -> None:
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [str(p) for p in sub.glob("*.prof")]
        if not files:
            continue
        print(f"\n## cProfile, max PDU {sub.name}, all threads, by internal time\n")
        stats = pstats.Stats(*files, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pdu",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[16384, 65536, 131072, 262144, 1048576, 0],
        help="maximum PDU lengths the SCP advertises, comma-separated (0 = unlimited)",
    )
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--senders",
        type=lambda s: s.split(","),
        default=["storescu", "pynetdicom"],
        help="storescu, pynetdicom or both",
    )
    parser.add_argument(
        "--stock-reader",
        action="store_true",
        help="pynetdicom's own PDU reader (bench.scp_stock_reader): the before of pdu_reader",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile files here")
    parser.add_argument("--top", type=int, default=30)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scp-pdu-") as tmp:
        rows = measure(args, Path(tmp))
    print(render(rows))
    if args.profile:
        print_profile(args.profile, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
