"""``python -m services.scp_listener``: the SCP and its HTTP side, plus the other SCP processes
that share its DICOM port(s) (``RTOPS_SCP_PROCESSES``, default one per CPU core)."""

from __future__ import annotations

from services.scp_listener.lean import keep_lean

keep_lean()  # first: before anything imports pydicom

import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from services.scp_listener.cpu_pinning import allowed_cpus, cpu_plan, pin_to  # noqa: E402
from services.scp_listener.settings import ScpSettings  # noqa: E402
from shared.settings import settings_or_exit  # noqa: E402

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_metrics_dir(var_dir: Path) -> Path:
    """``var/scp-metrics``, emptied: prometheus_client's per-process files of this run (the
    workers inherit the variable). A previous run's files would add its counts to ours."""
    directory = var_dir / "scp-metrics"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in directory.glob("*.db"):
        old.unlink(missing_ok=True)
    return directory


def prepare() -> tuple[ScpSettings, int, list[int]]:
    """The settings, the number of processes and the CPU of each (empty: not pinned,
    cpu_pinning.py). This process, the first, is pinned here, before it starts a thread;
    with more than one process the shared metrics directory is set up. Before
    prometheus_client is imported (by ``run``'s imports): it picks its value store once, at
    import."""
    settings = settings_or_exit(ScpSettings, "scp_listener")
    # A cpuset or ``taskset`` counts, a CFS quota does not: set RTOPS_SCP_PROCESSES to a
    # container's CPU limit.
    cpus = allowed_cpus()
    processes = settings.scp_processes or len(cpus) or os.cpu_count() or 1
    plan = cpu_plan(processes, cpus, settings.scp_cpu_pinning)
    if plan and (refused := pin_to(plan[0])):
        print(refused, file=sys.stderr)
        plan = []
    if processes > 1:
        os.environ[MULTIPROC_ENV] = str(shared_metrics_dir(settings.var_dir))
    return settings, processes, plan


def main() -> None:
    run(*prepare())


def run(settings: ScpSettings, processes: int, cpus: Sequence[int] = ()) -> None:
    from services.scp_listener.app import create_app
    from shared.web import serve

    serve(
        lambda: create_app(settings, processes=processes, cpus=cpus),
        settings,
        host=settings.scp_http_host,
        port=settings.scp_http_port,
        service="scp_listener",
    )


if __name__ == "__main__":
    main()
