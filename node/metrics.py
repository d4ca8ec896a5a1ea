"""The node's own Prometheus metrics, created on a registry passed in (never module globals).

With several receiver processes, `PROMETHEUS_MULTIPROC_DIR` is set before any of them imports
prometheus_client: every process then writes its values to files there, and `/metrics`, whichever
process answers, sums them (gauges: the supervisor's value, or the minimum of `ready`).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from node import metrics_files

NS = "ingestor"


class NodeMetrics:
    """Every metric the node exports; one instance per node, on the node's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        metrics_files.install()  # before the first value: files that a full volume cannot SIGBUS
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
        self.memory_in_flight = Gauge(f"{NS}_memory_in_flight_bytes", "Bytes of requests and transfers in flight "
                                      "reserved from the memory budget (--max-memory)", registry=registry,
                                      multiprocess_mode="livesum")
        self.memory_refused = Counter(f"{NS}_memory_refused", "Requests and transfers refused because the memory "
                                      "budget stayed taken, by what", ["what"], registry=registry)
        self.slow_clients = Counter(f"{NS}_slow_clients", "Request bodies and transfers cut for being too slow "
                                    "(--stall-timeout, --min-request-rate), by transport", ["transport"],
                                    registry=registry)
        self.wal_write_seconds = Histogram(
            f"{NS}_wal_write_seconds", "Time to append one request's rows to the WAL", registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0))
        self.gc_pause_seconds = Histogram(
            f"{NS}_gc_pause_seconds", "Pauses of Python's garbage collector (every thread waits), by generation "
            "(2: a full collection)", ["generation"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.wal_repairs = Counter(f"{NS}_wal_repaired_bytes", "Bytes truncated from torn segment tails at start",
                                   registry=registry)
        self.wal_vanished = Counter(f"{NS}_wal_vanished_segments", "Segments whose file disappeared without being "
                                    "delivered, closed or while written (deleted by something other than the node)",
                                    registry=registry)
        self.wal_segments = Gauge(f"{NS}_wal_segments", "Segments on disk (active and closed)", registry=registry,
                                  multiprocess_mode="max")
        self.wal_bytes = Gauge(f"{NS}_wal_bytes", "Bytes of segments on disk", registry=registry,
                               multiprocess_mode="max")
        self.wal_journal_bytes = Gauge(f"{NS}_wal_journal_bytes", "Bytes of rows acknowledged in the WAL journal and "
                                       "not yet split into their tables' segments", registry=registry,
                                       multiprocess_mode="livesum")
        self.ready = Gauge(f"{NS}_ready", "1 when the node is ready to take data", registry=registry,
                           multiprocess_mode="livemin")
        self.uploads = Counter(f"{NS}_uploads", "Batches handed to a sink, by result (ok, failed, quarantined)",
                               ["sink", "result"], registry=registry)
        self.upload_bytes = Counter(f"{NS}_upload_bytes", "Uncompressed bytes of rows a sink confirmed", ["sink"],
                                    registry=registry)
        self.upload_rows = Counter(f"{NS}_upload_rows", "Rows a sink confirmed", ["sink"], registry=registry)
        self.upload_seconds = Histogram(f"{NS}_upload_seconds", "Time to deliver one batch", registry=registry,
                                        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.batch_bytes = Histogram(f"{NS}_batch_bytes", "Uncompressed bytes per delivered batch", registry=registry,
                                     buckets=(1e5, 1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2e9))
        self.quarantined_bytes = Counter(f"{NS}_quarantined_bytes", "Segment bytes moved to quarantine",
                                         registry=registry)

        self.transfers_received = Counter(f"{NS}_transfers_received", "Segment transfers from peers, by status",
                                          ["code"], registry=registry)
        self.transfer_received_bytes = Counter(f"{NS}_transfer_received_bytes", "Segment bytes accepted from peers",
                                               registry=registry)
        self.transfers_sent = Counter(f"{NS}_transfers_sent", "Segment transfers to peers, by result",
                                      ["result"], registry=registry)
        self.transfer_sent_bytes = Counter(f"{NS}_transfer_sent_bytes", "Segment bytes peers accepted",
                                           registry=registry)
        self.peers = Gauge(f"{NS}_peers", "Peers known, by health", ["health"], registry=registry,
                           multiprocess_mode="max")
        self.owned_tables = Gauge(f"{NS}_owned_tables", "Table prefixes with segments here that this node owns",
                                  registry=registry, multiprocess_mode="max")

    def exposition(self) -> CollectorRegistry:
        """The registry `/metrics` renders: this process's, or every receiver process's."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=path)
        return merged
