"""One CPU for each SCP process when the processes cover every CPU they may run on (issue 14;
docs/scp_scale.md, "CPU pinning").

An SCP process is many threads under one GIL: a receiving thread that releases the GIL for a
system call wakes the next one, and when the two sit on different cores every such handoff is
a wake-up across cores (an inter-processor interrupt; on a virtual machine, a halted vCPU woken
by the hypervisor). With two processes on two cores and ten senders, pinning each process to a
core of its own took 0.89 of the wall time and 0.84 of the CPU seconds (docs/scp_scale.md).

``auto`` (the default) pins only when every allowed CPU gets a process
(``RTOPS_SCP_PROCESSES`` at least the number of CPUs in this process's affinity, the
default): fewer processes than CPUs pinned to "the first" CPUs would leave the others to
nobody, and in a container limited by a CFS quota, whose affinity is the whole node, every
pod would crowd onto the node's first CPUs. ``on`` pins whatever the number (a machine of
its own for the SCP: one process on one of two cores took 0.88-0.93 of the wall time of one
process free to use both, the senders on the same machine); ``off`` never.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Literal

Pinning = Literal["auto", "on", "off"]


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (a cpuset or ``taskset`` counts; empty off Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity to read or set
        return set()


def cpu_plan(processes: int, allowed: Collection[int], pinning: Pinning = "auto") -> list[int]:
    """The CPU of each SCP process (index 0 the parent), the allowed CPUs taken in turn; empty
    when the processes are not pinned: ``off``, a single CPU (nothing to choose), or with
    ``auto`` fewer processes than CPUs."""
    cpus = sorted(allowed)
    if pinning == "off" or len(cpus) < 2 or (pinning == "auto" and processes < len(cpus)):
        return []
    return [cpus[index % len(cpus)] for index in range(processes)]


def pin_to(cpu: int) -> str | None:
    """Keep the calling thread, and every thread it starts afterwards, on ``cpu``: called first
    thing, before the process starts a thread. A refusal (the CPU went offline, a cpuset
    changed) leaves the process unpinned, which is slower, not wrong: its reason is returned
    for the caller to log once logging is set up."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        return f"SCP process not pinned to CPU {cpu}: {exc}"
    return None
