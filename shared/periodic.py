"""Periodic background work (sweeps, digests, housekeeping) in a service's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


async def every(interval_s: float, name: str, work: Callable[[], object]) -> None:
    """Run the blocking ``work`` in a thread every ``interval_s`` seconds until cancelled. A
    failure is logged with the task's ``name`` and its traceback, and the next round runs as
    planned: one bad round never stops the sweep."""
    while True:
        try:
            await asyncio.to_thread(work)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic task failed; it runs again at its next interval", task=name)
        await asyncio.sleep(interval_s)
