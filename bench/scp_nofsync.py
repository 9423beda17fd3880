"""The SCP with every fsync switched off, for ``bench.scp_bench --no-fsync`` only.

Issue 14 asks for the CBCT ratio with fsync off as well, so that the software's own cost is
visible apart from this disk's fsync latency. This is deliberately not a setting: it lives in
``bench/``, patches the process it starts and nothing else, and a power cut after a success
from this process can lose the object. Never run it for real data.
"""

from __future__ import annotations

import os
from typing import Any

from services.scp_listener.__main__ import prepare, run

# First, as the service's own main does: with several processes the metrics' shared directory
# must be set before prometheus_client is imported (shared.runtime imports it).
settings, processes = prepare()

from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

import shared.db  # noqa: E402
import shared.runtime  # noqa: E402

_make_engine = shared.db.make_engine


def _no_sync(*args: Any, **kwargs: Any) -> Engine:
    engine = _make_engine(*args, **kwargs)
    if engine.dialect.name == "sqlite":
        # Registered after shared.db's own connect hook, so it runs last and wins.
        @event.listens_for(engine, "connect")
        def _off(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA synchronous=OFF")

    return engine


if __name__ == "__main__":
    os.fsync = lambda fd: None  # the object file and its directory
    shared.db.make_engine = _no_sync  # type: ignore[assignment]
    shared.runtime.make_engine = _no_sync  # type: ignore[assignment]
    run(settings, processes)
