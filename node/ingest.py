"""Decoded request in, rows in the WAL out: the one path every receiver (gRPC, HTTP) takes.

A request is answered only after every accepted row is appended to the WAL. Rows that a
converter refused are reported back (OTLP partial success), never dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.metrics import NodeMetrics
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConverter
from node.rows.metrics import MetricsConverter
from node.rows.traces import TracesConverter
from node.state import NodeState
from node.wal.repository import Block, Repository
from node.wal.segment import FsyncPolicy

MAX_CACHED_COUNTERS = 100_000


@dataclass(frozen=True)
class Converters:
    metrics: MetricsConverter
    logs: LogsConverter
    traces: TracesConverter


class Ingest:
    """Converts requests to rows and appends them to the WAL; shared by every receiver."""

    def __init__(self, wal: Repository, converters: Converters, state: NodeState, metrics: NodeMetrics) -> None:
        self._wal = wal
        self._conv = converters
        self._state = state
        self._metrics = metrics
        # Under `always` each block is fsynced: keep that off the event loop.
        self._offload = wal.config.fsync is FsyncPolicy.ALWAYS
        self._counters: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def remote_write(self, req: Any) -> ConvertResult:
        return await self._ingest("metrics", self._conv.metrics.convert_remote_write, req)

    async def otlp_metrics(self, req: Any) -> ConvertResult:
        return await self._ingest("metrics", self._conv.metrics.convert_otlp, req)

    async def otlp_logs(self, req: Any) -> ConvertResult:
        return await self._ingest("logs", self._conv.logs.convert, req)

    async def otlp_traces(self, req: Any) -> ConvertResult:
        return await self._ingest("traces", self._conv.traces.convert, req)

    async def _ingest(self, signal: str, convert: Callable[[Any], ConvertResult], req: Any) -> ConvertResult:
        self._state.check_accepting()
        result = convert(req)
        if result.tables:
            if self._offload:
                await asyncio.to_thread(self._write, signal, result)
            else:
                self._write(signal, result)
        if result.rejected:
            for reason in result.reasons[:1]:
                self._metrics.rejected.labels(signal, reason.split(":", 1)[0][:80]).inc(result.rejected)
        return result

    def _write(self, signal: str, result: ConvertResult) -> None:
        t0 = time.perf_counter()
        counters = self._counters
        batches = result.tables.values()
        self._wal.write_many([Block(b.database, b.table, b.kind, b.data, b.count, b.schema) for b in batches])
        for batch in batches:
            key = (signal, batch.database, batch.table)
            pair = counters.get(key)
            if pair is None:  # labels() costs a lock and a lookup: keep the children
                if len(counters) > MAX_CACHED_COUNTERS:
                    counters.clear()
                pair = counters[key] = (self._metrics.rows.labels(signal, batch.database),
                                        self._metrics.table_rows.labels(batch.database, batch.table))
            pair[0].inc(batch.count)
            pair[1].inc(batch.count)
        self._metrics.wal_write_seconds.observe(time.perf_counter() - t0)
