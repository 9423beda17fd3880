"""The reconciliation of the object store and its index (docs/scp_durability.md).

An index commit does not wait for its flush, so a power cut (or a PostgreSQL crash) can lose
the last ones; the object files cannot be lost, and every file whose row is not known durable
has a name in the store's ``.recent/`` directory. One round of the reconciliation:

1. re-indexes each ``.recent`` object the index lacks, through the C-STORE path (same checks,
   revision rule, event and deterministic event id, so its event is queued once);
2. flushes the index (``Ingestor.confirm``: a commit that waits for its flush, after which
   every earlier commit is durable) and the key links (``ObjectStore.sync``);
3. removes the ``.recent`` names of the objects whose rows it saw (step 1's lookup) or wrote
   (re-indexed) before that flush.

It runs once before the DICOM port opens (``run_at_start``) and then every
``RTOPS_SCP_CONFIRM_INTERVAL_S`` seconds in a thread, which keeps ``.recent`` short: the
start-up scan is the objects of the last interval, not the store. The round in the thread
also finds rows a PostgreSQL crash lost while the SCP kept running.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from services.scp_listener.devices import DeviceRegistry, RegistryError
from services.scp_listener.objectstore import crash_point
from services.scp_listener.service import Ingestor, Status
from services.scp_listener.settings import ScpSettings
from shared.events import SourceDevice

log = structlog.get_logger(__name__)

# Consecutive failed rounds after which the thread stops (a database gone for good, as after
# a test): the next start's round picks up whatever it left.
_MAX_FAILURES = 60
# A C-STORE names its file in .recent/ before it reads the header; by this age it has
# answered (a periodic round leaves younger un-indexed objects alone; the start-up round,
# with no C-STORE running, takes every one).
IN_FLIGHT_S = 5.0

Sources = Callable[[str], SourceDevice]
# Storage or internal failures: the object is not refused, it is kept for the next round.
_TRANSIENT = frozenset({Status.OUT_OF_RESOURCES, Status.PROCESSING_FAILURE})


def reconcile(
    ingestor: Ingestor, sources: Sources, settled_s: float = 0.0, *, relink: bool = True
) -> int:
    """One round; returns how many objects it re-indexed. ``settled_s``: leave un-indexed
    objects younger than this to the C-STORE that may still be storing them (its file is
    flushed and named in ``.recent/`` before its header is read). ``relink``: make the key
    link of indexed objects again where it is missing; only the operating system loses one
    (a power cut), and the start-up round after it does this, so the periodic rounds skip it
    (under ten senders it was a third of their time)."""
    store = ingestor.store
    recent = store.recent()
    if not recent:
        return 0
    present = ingestor.indexed(recent)
    confirmed = set(present)  # committed before the flush below: durable after it
    restored = 0
    refused = set()
    settled = datetime.now(UTC) - timedelta(seconds=settled_s)
    for entry in recent:
        if entry.key in present:
            if relink:
                # Its row survived; its key link may not have (neither was flushed).
                store.relink(entry)
            continue
        if entry.modified > settled:
            continue
        try:
            outcome = ingestor.restore(entry, sources(entry.calling_ae))
        except OSError as exc:  # removed meanwhile: its failed store discarded it
            log.info("a .recent object went away before it was restored", error=str(exc))
            continue
        if outcome.status in _TRANSIENT:
            log.warning(
                "could not re-index a stored object the index lacks; the next round retries",
                key=entry.key,
                status=f"0x{outcome.status:04X}",
                reason=outcome.reason,
            )
        elif outcome.status != Status.SUCCESS:
            # Never answered success (the rules refused it): keep the file, drop the name.
            log.error(
                "a stored object the index lacked was refused on re-indexing; its file is "
                "kept, un-indexed",
                key=entry.key,
                status=f"0x{outcome.status:04X}",
                reason=outcome.reason,
            )
            refused.add(entry.key)
        else:
            confirmed.add(entry.key)  # its row is there now: re-indexed, or stored meanwhile
            if outcome.created:
                restored += 1
                log.warning(
                    "re-indexed a stored object the index lacked (lost index commit, or a "
                    "store ended between its file and its commit); its event is queued",
                    key=entry.key,
                    sop_instance_uid=outcome.sop_instance_uid,
                    calling_ae=entry.calling_ae,
                )
    crash_point("reconciled")
    ingestor.confirm(len(confirmed))
    store.sync()
    crash_point("confirmed")
    for entry in recent:
        if entry.key in confirmed or entry.key in refused:
            store.forget(entry)
    return restored


def registry_sources(registry_path: Path) -> Sources:
    """Calling AE title -> the source device the registry names now (a device removed since
    its object arrived becomes role "other")."""

    def source(ae_title: str) -> SourceDevice:
        try:
            device = DeviceRegistry(registry_path).devices.get(ae_title)
        except RegistryError:
            device = None
        return device.as_source() if device else SourceDevice(ae_title=ae_title, role="other")

    return source


def run_at_start(
    settings: ScpSettings, ingestor: Ingestor, *, interval_s: float | None = None
) -> int:
    """The start-up round (before the DICOM port opens), then a round every ``interval_s``
    (default ``settings.scp_confirm_interval_s``) in a daemon thread. Returns how many
    objects the start-up round re-indexed."""
    if interval_s is None:
        interval_s = settings.scp_confirm_interval_s
    sources = registry_sources(settings.scp_device_registry)
    restored = reconcile(ingestor, sources)
    if restored:
        log.warning(f"start-up reconciliation re-indexed {restored} stored object(s)")
    start_confirming(ingestor, sources, interval_s)
    return restored


_confirming: weakref.WeakKeyDictionary[Ingestor, threading.Event] = weakref.WeakKeyDictionary()
_confirming_lock = threading.Lock()


def start_confirming(ingestor: Ingestor, sources: Sources, interval_s: float) -> None:
    """Start the thread of periodic rounds (once per ingestor, until ``stop_confirming``)."""
    with _confirming_lock:
        if ingestor in _confirming:
            return
        stop = _confirming[ingestor] = threading.Event()
    # A weak reference: the thread also ends with its app if nobody stopped it.
    ref = weakref.ref(ingestor)
    root = ingestor.store.root
    thread = threading.Thread(
        target=_confirm_forever,
        args=(ref, root, sources, interval_s, stop),
        name="scp-reconcile",
        daemon=True,
    )
    thread.start()


def stop_confirming(ingestor: Ingestor) -> None:
    """End the periodic rounds (the app stops: its database may go away; the next start's
    round confirms what this one left)."""
    with _confirming_lock:
        stop = _confirming.pop(ingestor, None)
    if stop is not None:
        stop.set()


def _confirm_forever(
    ref: weakref.ReferenceType[Ingestor],
    root: Path,
    sources: Sources,
    interval_s: float,
    stop: threading.Event,
) -> None:
    failures = 0
    while not stop.wait(interval_s):
        ingestor = ref()
        if ingestor is None or not root.is_dir():
            return
        try:
            reconcile(ingestor, sources, settled_s=IN_FLIGHT_S, relink=False)
            failures = 0
        except Exception as exc:
            failures += 1
            log.warning("reconciliation round failed; the next one retries", error=str(exc))
            if failures >= _MAX_FAILURES:
                log.error("reconciliation stopped after repeated failures; the next start runs it")
                return
        finally:
            del ingestor
