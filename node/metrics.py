"""The node's own Prometheus metrics, created on a registry passed in (never module globals).

With several receiver processes, `PROMETHEUS_MULTIPROC_DIR` is set before any of them imports
prometheus_client: every process then writes its values to files there, and `/metrics`, whichever
process answers, sums them (gauges: the supervisor's value, or the minimum of `ready`).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

NS = "ingestor"


class NodeMetrics:
    """Every metric the node exports; one instance per node, on the node's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(f"{NS}_requests", "Requests received, by signal, transport and result",
                                ["signal", "transport", "code"], registry=registry)
        self.request_bytes = Counter(f"{NS}_request_bytes", "Bytes of request bodies received",
                                     ["signal", "transport"], registry=registry)
        self.rows = Counter(f"{NS}_rows", "Rows appended to the WAL, by signal and database",
                            ["signal", "database"], registry=registry)
        self.table_rows = Counter(f"{NS}_table_rows", "Rows appended to the WAL, by table",
                                  ["database", "table"], registry=registry)
        self.rejected = Counter(f"{NS}_rejected_rows", "Points, records or spans refused, by reason",
                                ["signal", "reason"], registry=registry)
        self.wal_write_seconds = Histogram(
            f"{NS}_wal_write_seconds", "Time to append one request's rows to the WAL", registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0))
        self.wal_repairs = Counter(f"{NS}_wal_repaired_bytes", "Bytes truncated from torn segment tails at start",
                                   registry=registry)
        self.wal_segments = Gauge(f"{NS}_wal_segments", "Segments on disk (active and closed)", registry=registry,
                                  multiprocess_mode="max")
        self.wal_bytes = Gauge(f"{NS}_wal_bytes", "Bytes of segments on disk", registry=registry,
                               multiprocess_mode="max")
        self.ready = Gauge(f"{NS}_ready", "1 when the node is ready to take data", registry=registry,
                           multiprocess_mode="livemin")

    def exposition(self) -> CollectorRegistry:
        """The registry `/metrics` renders: this process's, or every receiver process's."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=path)
        return merged
