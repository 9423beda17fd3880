"""The concurrent-senders benchmark still runs (tiny sizes): bench/scp_concurrent.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_scp_concurrent_bench_runs(dcmtk: dict[str, str], fsync: bool) -> None:
    args = ["--senders", "2", "--slices", "2", "--records", "1", "--rows", "16", "--processes", "2"]
    args += ["--rounds", "2"]
    args += [] if fsync else ["--no-fsync"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.scp_concurrent", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "aggregate throughput 2 processes / 1" in done.stdout
    assert "median of 2 round(s)" in done.stdout
    assert ("WITHOUT fsync" in done.stdout) is not fsync
    table = done.stdout.splitlines()
    # A row per run, the order turned in the second round, each with nothing lost or
    # duplicated and one peak RSS per SCP process.
    rows = [line.split() for line in table if line.split()[:1] in (["1"], ["2"])]
    assert [(row[0], row[1], row[9], row[10]) for row in rows] == [
        ("1", "1", "0", "0"),
        ("1", "2", "0", "0"),
        ("2", "2", "0", "0"),
        ("2", "1", "0", "0"),
    ]
    assert [len(" ".join(row[11:]).split(",")) for row in rows] == [1, 2, 2, 1]
    assert all(float(mb) > 20 for row in rows for mb in " ".join(row[11:]).split(","))
    # When each sender finished, and each process's CPU while they ran.
    spread = [line for line in table if line.startswith("round ") and "finished at" in line]
    assert [len(line.split("per process: ")[1].split(",")) for line in spread] == [1, 2, 2, 1]
    ends = [line.split("finished at ")[1].split(" s;")[0].split() for line in spread]
    assert [len(each) for each in ends] == [2] * 4
    # The senders' CPU, how busy the machine was, and the ratio at full use of the cores.
    assert all(float(line.split("senders' CPU ")[1].split()[0]) > 0 for line in spread)
    busy = [int(line.split("machine busy ")[1].rstrip("%")) for line in spread]
    assert all(0 < b <= 100 for b in busy)
    assert len(next(x for x in table if x.startswith("ratio ")).split("x")) == 3
    full = next(x for x in table if "kept every core busy" in x)
    assert len(full.split(": ")[1].split("(median")[0].split("x")) == 3
