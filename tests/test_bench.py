"""The benchmarks still run (tiny sizes): a benchmark nobody can run measures nothing."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_qa_bench_runs() -> None:
    done = run("bench.qa_bench", "--days", "1", "--linacs", "1", "--per-linac", "2", "--calls", "2")
    assert done.returncode == 0, done.stderr
    assert "events/s" in done.stdout and "weekly summary" in done.stdout


def test_scp_bench_runs(dcmtk: dict[str, str]) -> None:
    done = run("bench.scp_bench", "--rounds", "1", "--slices", "2", "--records", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "targets" in done.stdout
