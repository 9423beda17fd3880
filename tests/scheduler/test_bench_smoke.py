"""The scheduler benchmark runs end to end on a tiny workload, so that it cannot rot: SQLite
always, PostgreSQL too when the suite runs on it (a schema of the bench's own, dropped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scheduler_bench_runs_tiny() -> None:
    backends = "sqlite,postgresql" if os.environ.get("RTOPS_DATABASE_URL") else "sqlite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.scheduler_bench",
            "--days",
            "10",
            "--rooms",
            "1",
            "--bookings",
            "5",
            "--requests",
            "8",
            "--backends",
            backends,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for backend in backends.split(","):
        assert f"{backend}: " in done.stdout
    assert done.stdout.count("booking: p50") == len(backends.split(","))
    assert done.stdout.count("batch: 8 requests") == len(backends.split(","))
