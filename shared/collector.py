"""The garbage collector's settings for a long-running service process.

CPython's default (a young-generation pass every 700 net allocations) is tuned for small
scripts. A service that evaluates thousands of courses allocates millions of short-lived
objects while holding a large, stable heap (rules, caches, ORM state): with the default, about
a third of billing's evaluation time went to collector passes over objects that were never
garbage (measured in ``bench/billing_bench.py``, docs/billing.md). The tuning is what large
Python services do (fewer, larger young passes; the startup heap frozen out of every pass);
reference cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

# Young passes every 100,000 net allocations (a few MB at most between passes); the older
# generations' factors as CPython's defaults scaled to keep full passes rare.
THRESHOLDS = (100_000, 50, 100)


def tune_collector() -> None:
    """Freeze what is alive now (imports, settings, rules: never garbage) and set
    ``THRESHOLDS``. Call once, when the process has started."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
