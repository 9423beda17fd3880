"""Prometheus metrics of the SCP, in a registry of its own (one per app instance)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ScpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
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
            "rtops_scp_outbox_depth", "events waiting to be published", registry=registry
        )

    def track_outbox(self, depth: Callable[[], int]) -> None:
        self.outbox_depth.set_function(depth)
