"""``python -m services.scp_listener``: the SCP and its HTTP side, plus the other SCP processes
that share its DICOM port(s) (``RTOPS_SCP_PROCESSES``, default one per CPU core)."""

from __future__ import annotations

from services.scp_listener.lean import keep_lean

keep_lean()  # first: before anything imports pydicom

import os  # noqa: E402
from pathlib import Path  # noqa: E402

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


def cpu_cores() -> int:
    """The cores this process may run on (a cpuset or ``taskset`` counts, a CFS quota does
    not: set RTOPS_SCP_PROCESSES to a container's CPU limit)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prepare() -> tuple[ScpSettings, int]:
    """The settings and the number of processes; with more than one, the shared metrics
    directory is set up. Before prometheus_client is imported (by ``run``'s imports): it
    picks its value store once, at import."""
    settings = settings_or_exit(ScpSettings, "scp_listener")
    processes = settings.scp_processes or cpu_cores()
    if processes > 1:
        os.environ[MULTIPROC_ENV] = str(shared_metrics_dir(settings.var_dir))
    return settings, processes


def main() -> None:
    run(*prepare())


def run(settings: ScpSettings, processes: int) -> None:
    from services.scp_listener.app import create_app
    from shared.web import serve

    serve(
        lambda: create_app(settings, processes=processes),
        settings,
        host=settings.scp_http_host,
        port=settings.scp_http_port,
        service="scp_listener",
    )


if __name__ == "__main__":
    main()
