"""The benchmarks still run (tiny sizes): a benchmark nobody can run measures nothing."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

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


def test_the_scp_without_fsync_switches_it_off_in_its_workers_too(
    tmp_path: Path, nats_url: str
) -> None:
    """``--no-fsync`` measured a half-switched SCP until the workers, which serve most
    associations, ran the switch as well."""
    from bench.scp_bench import start_scp, stop_process, wait_http_ok

    scp = start_scp(
        tmp_path / "var", nats_url, tmp_path / "scp.log", fsync=False, RTOPS_SCP_PROCESSES="2"
    )
    try:
        wait_http_ok(scp.url("/readyz"), scp.proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            roles = re.findall(r"fsync is OFF in process \d+ \((\w+)\)", scp.log_path.read_text())
            if len(roles) == 2:
                break
            time.sleep(0.2)
        assert sorted(roles) == ["parent", "worker"]
    finally:
        stop_process(scp.proc)
