"""The staff pages benchmark still runs (a tiny department): a benchmark nobody can run measures
nothing. Its servers take free ports and its data a temp dir (or schemas of their own on
PostgreSQL), so it runs beside other tests."""

from __future__ import annotations

from pathlib import Path

from bench.pages_bench import CHROMIUM, p95
from tests.test_bench import run


def test_pages_bench_runs() -> None:
    browser = Path(CHROMIUM).exists()
    done = run(
        "bench.pages_bench",
        *("--days", "2", "--linacs", "1", "--per-linac", "2", "--cbct-slices", "2"),
        *("--requests", "1", "--loads", "1"),
        *(() if browser else ("--no-browser",)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for page in ("worklist (physician, mine)", "fraction detail", "compliance.csv", "trend"):
        assert page in out, out
    for page in ("arrivals ?device=TRUEBEAM0", "devices", "problems", "reference: /healthz"):
        assert page in out, out
    assert ("First paint in headless Chromium" in out) == browser, out
    assert "targets: " in out


def test_p95_is_the_nearest_rank() -> None:
    assert p95([5.0]) == 5.0
    assert p95([float(n) for n in range(1, 21)]) == 19.0
    assert p95([float(n) for n in range(1, 101)]) == 95.0
