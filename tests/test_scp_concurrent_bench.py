"""The concurrent-senders benchmark still runs (tiny sizes): bench/scp_concurrent.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_scp_concurrent_bench_runs(dcmtk: dict[str, str], fsync: bool) -> None:
    args = ["--senders", "2", "--slices", "2", "--records", "1", "--rows", "16", "--processes", "2"]
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
    assert ("WITHOUT fsync" in done.stdout) is not fsync
    table = done.stdout.splitlines()
    # Two rows (1 and 2 processes), each with nothing lost or duplicated and one peak RSS
    # per SCP process.
    rows = [line.split() for line in table if line.split()[:1] in (["1"], ["2"])]
    assert [(row[0], row[8], row[9]) for row in rows] == [("1", "0", "0"), ("2", "0", "0")]
    assert [len(" ".join(row[10:]).split(",")) for row in rows] == [1, 2]
    # When each sender finished, and each process's CPU while they ran.
    spread = [line for line in table if line.startswith("with ")]
    assert [len(line.split("per process: ")[1].split(",")) for line in spread] == [1, 2]
    assert [len(line.split("finished at ")[1].split(" s;")[0].split()) for line in spread] == [2, 2]
