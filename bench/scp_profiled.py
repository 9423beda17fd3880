"""The SCP with every thread under cProfile, for ``bench.scp_pdu`` only.

pynetdicom runs each association in two threads (the DUL reader and the association's
reactor); ``cProfile`` profiles only the thread that enabled it, so every thread started in this
process enables a profiler of its own and writes it to ``RTOPS_BENCH_PROFILE_DIR`` when it ends
(an association's threads end at its release). Combine them with ``pstats.Stats(*files)``.
"""

from __future__ import annotations

import cProfile
import os
import threading
from pathlib import Path

_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    profile = cProfile.Profile()
    profile.enable()
    try:
        _run(self)
    finally:
        profile.disable()
        folder = Path(os.environ["RTOPS_BENCH_PROFILE_DIR"])
        profile.dump_stats(folder / f"{os.getpid()}-{threading.get_ident()}-{id(self)}.prof")


if __name__ == "__main__":
    from services.scp_listener.lean import keep_lean

    keep_lean()  # before pydicom is imported, as in the SCP's own entry point
    from services.scp_listener.__main__ import main

    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    main()
