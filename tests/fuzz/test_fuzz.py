"""The fuzz harness for a bounded time on every run of the suite (issue 15): atheris in a
subprocess from the seed corpus, ``RTOPS_FUZZ_SECONDS`` of fuzzing (default 40; 0 skips).
Any input that breaks the SCP's contract fails the test with the input printed, ready to go
into ``test_regressions.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.harness import CORPUS

REPO = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("RTOPS_FUZZ_SECONDS", "40"))


@pytest.mark.skipif(SECONDS <= 0, reason="RTOPS_FUZZ_SECONDS=0")
@pytest.mark.timeout(SECONDS + 240)
def test_fuzzing_the_read_and_extract_path_finds_no_crash(tmp_path: Path) -> None:
    found = tmp_path / "new"  # libFuzzer adds new inputs to the first directory
    found.mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.harness",
            f"-max_total_time={SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
            str(found),
            str(CORPUS),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECONDS + 220,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("oom-*"))
    stats = [line for line in run.stderr.splitlines() if line.startswith("stat::")]
    if run.returncode != 0 or crashes:
        reproducers = "\n".join(f"{p.name}: {p.read_bytes().hex()}" for p in crashes)
        pytest.fail(
            f"the fuzzer found a crash (exit {run.returncode}).\n{run.stderr[-4000:]}\n"
            f"Reproduce: tests.fuzz.harness.check_input(bytes.fromhex(...)) with\n{reproducers}"
        )
    assert any(line.startswith("stat::number_of_executed_units") for line in stats), run.stderr[
        -2000:
    ]
