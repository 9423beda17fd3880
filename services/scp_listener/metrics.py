"""Prometheus metrics of the SCP, in a registry of its own (one per app instance), and the
recent refusals and failed stores, with their reasons, that the problems page lists.

With several SCP processes (``RTOPS_SCP_PROCESSES``) every process counts into prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set before prometheus_client is imported), and
the parent's ``/metrics`` serves the SCP's counters and histograms summed over every process
(``ScpMetrics(..., summed_from=<that directory>)``); the other processes send their problems to
the parent, whose page lists them all.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

RECENT_PROBLEMS = 500


@dataclass(frozen=True)
class Problem:
    """One refused association, refused presentation context or failed C-STORE."""

    kind: Literal["association", "context", "store"]
    reason: str  # the metric label: unknown_calling_ae, wrong_called_ae, cannot_understand...
    calling_ae: str
    detail: str  # the words of the log line (with the case hint, the status's reason)
    status: int | None = None  # a C-STORE's answer (0xC210, 0xA900, 0xA700, 0x0110, ...)
    sop_class: str | None = None  # a SOP class name (sop.NAMES) or UID
    sop_instance_uid: str | None = None
    called_ae: str | None = None
    peer: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> bytes:
        return json.dumps({**asdict(self), "at": self.at.isoformat()}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Problem:
        values: dict[str, Any] = json.loads(data)
        values["at"] = datetime.fromisoformat(values["at"])
        return cls(**values)


class ProblemSink(Protocol):
    def record(self, problem: Problem) -> None: ...


class RecentProblems:
    """The last ``size`` problems, kept in memory by the SCP process (thread-safe: the DICOM
    side records from its association threads, the pages read). A restart empties it; the
    log lines and the ``rtops_scp_rejections`` counter are the lasting record."""

    def __init__(self, size: int = RECENT_PROBLEMS) -> None:
        self._items: deque[Problem] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.size = size
        self.total = 0  # since the process started, including those pushed out
        self.since = datetime.now(UTC)

    def record(self, problem: Problem) -> None:
        with self._lock:
            self._items.append(problem)
            self.total += 1

    def newest_first(self) -> list[Problem]:
        with self._lock:
            return list(reversed(self._items))


# The SCP's counters and histograms: what ``summed_from`` serves summed over the processes.
SUMMED = frozenset(
    {
        "rtops_scp_objects_stored",
        "rtops_scp_bytes_stored",
        "rtops_scp_duplicates",
        "rtops_scp_rejections",
        "rtops_scp_internal_errors",
        "rtops_scp_store_seconds",
    }
)


class SummedOverProcesses:
    """A collector of the SCP metrics in a multiprocess directory, summed over every process
    that wrote there (a worker that died keeps its counts: they happened)."""

    def __init__(self, directory: Path) -> None:
        self._all = MultiProcessCollector(None, path=str(directory))

    def collect(self) -> Iterable[Metric]:
        return [m for m in self._all.collect() if m.name in SUMMED]


class ScpMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        problems: ProblemSink | None = None,
        summed_from: Path | None = None,
    ) -> None:
        """``problems``: where problems go (default: kept here for the page). ``summed_from``:
        a multiprocess directory; the counters then count into it, and ``registry`` serves
        their sum over every SCP process instead of this process's values."""
        self.problems: Any = problems if problems is not None else RecentProblems()
        if summed_from is not None:
            registry.register(SummedOverProcesses(summed_from))
            outbox_registry, registry = registry, CollectorRegistry()
        else:
            outbox_registry = registry
        self.objects = Counter(
            "rtops_scp_objects_stored",
            "new objects stored, by SOP class",
            ["sop_class"],
            registry=registry,
        )
        self.bytes = Counter(
            "rtops_scp_bytes_stored",
            "bytes of new objects, by SOP class",
            ["sop_class"],
            registry=registry,
        )
        self.duplicates = Counter(
            "rtops_scp_duplicates",
            "re-sent objects that changed nothing",
            ["sop_class"],
            registry=registry,
        )
        self.rejections = Counter(
            "rtops_scp_rejections",
            "refused associations and failed C-STOREs, by reason",
            ["reason"],
            registry=registry,
        )
        self.internal_errors = Counter(
            "rtops_scp_internal_errors",
            "C-STOREs answered 0x0110 because of a bug in rtops, not a fault of the object",
            registry=registry,
        )
        self.store_seconds = Histogram(
            "rtops_scp_store_seconds",
            "C-STORE handling time, received to answered",
            ["sop_class"],
            registry=registry,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.outbox_depth = Gauge(
            "rtops_scp_outbox_depth",
            "events waiting to be published",
            registry=outbox_registry,
            multiprocess_mode="liveall",
        )

    def track_outbox(self, depth: Callable[[], int]) -> None:
        self.outbox_depth.set_function(depth)
