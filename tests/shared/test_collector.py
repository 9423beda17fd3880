"""``tune_collector``: what `serve` and the billing benchmark apply once a process started."""

from __future__ import annotations

import gc

from shared.collector import THRESHOLDS, tune_collector


def test_tune_collector_sets_the_thresholds_and_freezes_the_startup_heap() -> None:
    before = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0
        # Cycles are still collected, only less often.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
