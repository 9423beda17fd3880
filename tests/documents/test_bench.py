"""The documents benchmark runs end to end on a tiny workload, so that it cannot rot. SQLite
always; PostgreSQL too when the suite runs on it (``RTOPS_DATABASE_URL``: the bench then
creates and drops a throwaway database of its own on that server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_documents_bench_runs_tiny() -> None:
    backends = "sqlite,postgresql" if os.environ.get("RTOPS_DATABASE_URL") else "sqlite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.documents_bench",
            "--courses",
            "12",
            "--documents",
            "3",
            "--queries",
            "5",
            "--letters",
            "3",
            "--backends",
            backends,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GET /v1/plans: p50" in done.stdout
    assert "letters rendered:" in done.stdout
    assert done.stdout.count("a sampled patient:") == len(backends.split(","))
