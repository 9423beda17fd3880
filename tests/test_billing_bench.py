"""The billing benchmark runs end to end on a tiny workload, so that it cannot rot. SQLite
always; PostgreSQL too when the suite runs on it (``RTOPS_DATABASE_URL``: the bench then
creates and drops a throwaway database of its own on that server). Everything else is in temp
dirs of the bench's own, so parallel runs do not meet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_billing_bench_runs_tiny() -> None:
    backends = "sqlite,postgresql" if os.environ.get("RTOPS_DATABASE_URL") else "sqlite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.billing_bench",
            "--courses",
            "20",
            "--claim-lines",
            "200",
            "--events",
            "300",
            "--linacs",
            "2",
            "--per-linac",
            "30",
            "--rounds",
            "1",
            "--backends",
            backends,
            "--in-process",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "## 1. charge evaluation: 20 courses" in out
    assert "## 2. reconciliation: 200-line claim file" in out
    assert "SQLite: POST" in out
    assert "sqlite: " in out and "events/s" in out
    assert "billing / QA tracker = " in out
    assert "not run" not in out, out
    # Every seeded kind that the file received is found again.
    found = next(line for line in out.splitlines() if line.strip().startswith("found:"))
    for kind in ("duplicate_charge", "unknown_code", "unsupported_charge", "missing_charge"):
        assert kind in found
