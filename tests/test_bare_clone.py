"""`make test` passes in a bare clone: nothing the tests or benchmarks read lies outside the
repository. The real vendor samples are committed under tests/data (sources and licences in
its README)."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, TEST_DATA

# How code reaches for the sample folder beside the clone (the layout before tests/data).
OUTSIDE = (
    "../shared/data",
    "shared/data",
    '"..", "shared"',
    '"shared" / "data"',
    "'shared' / 'data'",
    "REPO.parent",
    "/work/",
)
PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")
PARENT_CHAIN = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent)+)")


def code_files() -> list[Path]:
    files = [*REPO.joinpath("tests").rglob("*.py"), *REPO.joinpath("bench").rglob("*.py")]
    return sorted(p for p in files if p.name != Path(__file__).name)


def test_no_test_or_benchmark_reads_outside_the_repository() -> None:
    found = []
    for path in [*code_files(), REPO / "Makefile", REPO / "pyproject.toml"]:
        text = path.read_text()
        for needle in OUTSIDE:
            if needle in text:
                found.append(f"{path.relative_to(REPO)}: {needle!r}")
        # Path(__file__).parents[n] / .parent.parent...: must stay inside the repository.
        depths = [int(m) for m in PARENTS.findall(text)]
        depths += [chain.count(".parent") - 1 for chain in PARENT_CHAIN.findall(text)]
        for depth in depths:
            if not path.resolve().parents[depth].is_relative_to(REPO):
                found.append(f"{path.relative_to(REPO)}: parents[{depth}] leaves the repository")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def listed_samples() -> list[tuple[str, str]]:
    """(pattern, licence) of every row of the sample table in tests/data/README.md."""
    rows = []
    for line in (TEST_DATA / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and (m := re.fullmatch(r"`([^`]+)`", cells[0])):
            rows.append((m.group(1), cells[4]))
    return rows


def test_every_listed_sample_exists_and_every_sample_is_listed() -> None:
    rows = listed_samples()
    assert len(rows) >= 10
    files = sorted(p.relative_to(TEST_DATA).as_posix() for p in TEST_DATA.rglob("*.dcm"))
    for pattern, licence in rows:
        assert licence, f"{pattern}: no licence in tests/data/README.md"
        assert fnmatch.filter(files, pattern), f"tests/data/README.md lists {pattern}: missing"
    unlisted = [f for f in files if not any(fnmatch.fnmatch(f, p) for p, _ in rows)]
    assert not unlisted, f"add these samples (source, licence) to tests/data/README.md: {unlisted}"


def _repository_files() -> list[str]:
    """Tracked and new (not ignored) files, as they are in the working tree."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in out.split("\0") if name and (REPO / name).is_file()]


def test_the_sample_tests_pass_in_a_copy_without_anything_beside_it(tmp_path: Path) -> None:
    """A copy of the repository's files alone (no ../shared beside it, no .venv, no var/)
    runs the tests that read the real samples."""
    clone = tmp_path / "isolated" / "rtops"
    for name in _repository_files():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, target)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "tests/scp_listener/test_extract.py",
            "tests/scp_listener/test_read_header.py",
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
