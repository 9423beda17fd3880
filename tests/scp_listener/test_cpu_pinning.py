"""Which CPU each SCP process runs on (services/scp_listener/cpu_pinning.py; the processes'
own affinity with two processes: test_multiprocess.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.scp_listener.__main__ import MULTIPROC_ENV, prepare
from services.scp_listener.cpu_pinning import cpu_plan


@pytest.mark.parametrize(
    ("processes", "allowed", "plan"),
    [
        (2, {0, 1}, [0, 1]),  # the default on two cores: one process per core
        (4, {0, 1, 2, 3}, [0, 1, 2, 3]),
        (3, {0, 1}, [0, 1, 0]),  # more processes than CPUs: the CPUs in turn
        (4, {5, 2}, [2, 5, 2, 5]),  # a cpuset's CPUs, whatever their numbers
        (1, {0, 1}, []),  # one process on two CPUs: the second CPU would serve no one
        (2, {0, 1, 2, 3}, []),  # a CFS-quota pod sees the whole node: no "first" CPUs
        (1, {3}, []),  # a single CPU: nothing to choose
        (4, {3}, []),
        (2, set(), []),  # no affinity to read (not Linux)
    ],
)
def test_processes_are_pinned_only_when_they_cover_every_cpu(
    processes: int, allowed: set[int], plan: list[int]
) -> None:
    assert cpu_plan(processes, allowed) == plan


@pytest.mark.parametrize(
    ("processes", "allowed", "plan"),
    [(1, {0, 1}, [0]), (2, {0, 1, 2, 3}, [0, 1]), (3, {4, 6}, [4, 6, 4]), (1, {3}, [])],
)
def test_pinning_on_pins_any_number_of_processes(
    processes: int, allowed: set[int], plan: list[int]
) -> None:
    assert cpu_plan(processes, allowed, "on") == plan


def test_pinning_can_be_switched_off() -> None:
    assert cpu_plan(2, {0, 1}, "off") == []
    assert cpu_plan(8, {0, 1}, "off") == []


def test_one_process_is_not_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``RTOPS_SCP_PROCESSES=1`` on a machine of several CPUs: the process keeps them all."""
    before = os.sched_getaffinity(0)
    monkeypatch.setenv("RTOPS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RTOPS_SCP_PROCESSES", "1")
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    _settings, processes, cpus = prepare()
    assert (processes, cpus) == (1, [])
    assert os.sched_getaffinity(0) == before


def test_pinning_switched_off_leaves_every_process_on_every_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = os.sched_getaffinity(0)
    monkeypatch.setenv("RTOPS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RTOPS_SCP_PROCESSES", str(max(2, len(before))))
    monkeypatch.setenv("RTOPS_SCP_CPU_PINNING", "off")
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    _settings, _processes, cpus = prepare()
    assert cpus == []
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to pin")
def test_pinning_on_pins_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``prepare`` pins the process it runs in (its calling thread, here this test's)."""
    before = os.sched_getaffinity(0)
    monkeypatch.setenv("RTOPS_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RTOPS_SCP_PROCESSES", "1")
    monkeypatch.setenv("RTOPS_SCP_CPU_PINNING", "on")
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    try:
        _settings, _processes, cpus = prepare()
        assert cpus == [min(before)]
        assert os.sched_getaffinity(0) == {min(before)}
    finally:
        os.sched_setaffinity(0, before)
