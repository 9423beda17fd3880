"""The SCP with every fsync switched off, for ``bench.scp_bench --no-fsync`` only.

Issue 14 asks for the CBCT ratio with fsync off as well, so that the software's own cost is
visible apart from this disk's fsync latency. This is deliberately not a setting: it lives in
``bench/``, patches the processes it starts and nothing else, and a power cut after a success
from them can lose the object. Never run it for real data.

``python -m bench.scp_nofsync`` is the parent; it starts its workers as this module too (with
the worker's arguments, ``--index`` first), and they switch fsync off in themselves as well.
Until the eighth session only the parent did, so the workers, which serve most associations,
still flushed: the ratios measured "with fsync off" before then were of a half-switched SCP.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def switch_off_fsync(role: str) -> None:
    """Every ``os.fsync`` (the object file, its directories) and SQLite's commits unflushed.
    Imports only sqlalchemy and shared.db, so a worker can still keep pydicom lean after it."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    import shared.db

    make_engine = shared.db.make_engine

    def no_sync(*args: Any, **kwargs: Any) -> Engine:
        engine = make_engine(*args, **kwargs)
        if engine.dialect.name == "sqlite":
            # Registered after shared.db's own connect hook, so it runs last and wins.
            @event.listens_for(engine, "connect")
            def _off(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("PRAGMA synchronous=OFF")

        return engine

    os.fsync = lambda fd: None
    print(
        f"bench.scp_nofsync: fsync is OFF in process {os.getpid()} ({role}): benchmark only, "
        "objects are not durable",
        file=sys.stderr,
        flush=True,
    )
    shared.db.make_engine = no_sync  # type: ignore[assignment]
    if "shared.runtime" in sys.modules:  # imported it by name already (the parent)
        sys.modules["shared.runtime"].make_engine = no_sync


def worker() -> None:
    from services.scp_listener import worker as scp_worker

    switch_off_fsync("worker")  # before main() imports make_engine from shared.db
    scp_worker.main(sys.argv[1:])


def parent() -> None:
    from services.scp_listener.__main__ import prepare, run

    # First, as the service's own main does: with several processes the metrics' shared
    # directory must be set before prometheus_client is imported (shared.runtime imports it).
    settings, processes, cpus = prepare()
    import shared.runtime  # noqa: F401  (patched by name below)
    from services.scp_listener import processes as scp_processes

    switch_off_fsync("parent")
    scp_processes.WORKER_MODULE = "bench.scp_nofsync"  # the workers: this module, worker()
    run(settings, processes, cpus)


if __name__ == "__main__":
    worker() if sys.argv[1:2] == ["--index"] else parent()
