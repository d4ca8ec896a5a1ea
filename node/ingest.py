"""Requests in, rows in the WAL out: the one path every receiver (gRPC, HTTP) takes.

A request is answered only after every accepted row is appended to the WAL. Rows that a
converter refused are reported back (OTLP partial success), counted
(`ingestor_rejected_rows_total`) and logged (one WARNING a minute per kind of request and of
refusal, with the count and the reasons), never dropped silently.

Where the work runs, so that the event loop stays free to answer probes and take other requests:

* A request larger than `INLINE_BYTES` is parsed and converted in the process's one converter
  thread. Requests go through it one at a time, in the order they came (the converters' caches
  are not thread-safe); those queued for it together are written to the WAL together, one block
  per table for all of them (node/groupcommit.py). A smaller request runs on the loop when that
  thread is idle (and is written by the thread when its rows are for `GROUP_TABLES` tables or
  more, to be grouped with what queues behind it), and queues behind it otherwise: it takes
  milliseconds (1,000 points with 8 attributes, 213 KiB: 2.8 ms, 23 ms when every series is new;
  the worst seen, 256 KiB of tiny points of new series, ~60 ms), and the hop to a thread and
  back, with the GIL passed between the loop and the thread, cost 15-25% of the node's throughput
  at 1,000-point requests (bench).
* A request given as its serialized protobuf (gRPC) is parsed in pieces of about a megabyte
  (`node.rows.wire.pieces`), each converted before the next is parsed: no single step holds the
  GIL for long, and only one piece's messages are alive at a time. A request given as a function
  that decodes it (the HTTP port: decompression, JSON) is decoded in the converter thread; what
  it returns is parsed in pieces when it is serialized protobuf, and taken whole when a message
  (node/receivers/decode.py returns messages: their parse holds the GIL, ~0.5 s for a million
  series).
* Memory: the receiver says what the request may hold while it is decoded and converted
  (`reserve`, bytes taken from the process's `MemoryBudget` for the whole call, waiting then
  refusing with OverMemoryError); 0 when the receiver has reserved it itself (the HTTP port does,
  as it reads the body: node/receivers/body.py).
* The converters' caches forget what was not used for one to two `--max-segment-age`s
  (node/cache.py), and the freed memory is handed back to the system then.
* A request with rows for more tables than `--max-segment-count` allows segments can never be
  written: it is refused at once with RequestTooLargeError (RESOURCE_EXHAUSTED without a retry
  hint, 413), which senders do not retry, and which says nothing about the node's readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from node import libc
from node.budget import MemoryBudget
from node.cache import BoundedCache, Generations
from node.errors import DecodeError, RequestTooLargeError
from node.gen.prometheus.remote_raw_pb2 import RawWriteRequest
from node.groupcommit import GroupCommit
from node.metrics import NodeMetrics
from node.ratelog import RateLimitedLog
from node.rows.batch import KIND_LOG, KIND_METRIC, KIND_TRACE, ConvertResult, TableBatch, merged
from node.rows.logs import LogsConverter
from node.rows.logs import parse_request as parse_logs_request
from node.rows.metrics import MetricsConverter
from node.rows.otlpmetrics import parse_request
from node.rows.traces import TracesConverter
from node.rows.wire import (
    OTLP_LOGS_LEVELS,
    OTLP_METRICS_LEVELS,
    OTLP_TRACES_LEVELS,
    REMOTE_WRITE_LEVELS,
    Level,
    Unsplittable,
    pieces,
)
from node.state import NodeState
from node.wal.repository import Repository
from node.wal.segment import FsyncPolicy

log = logging.getLogger(__name__)

INLINE_BYTES = 256 << 10
"""Requests of at most this many bytes run on the event loop when the converter thread is idle."""
GROUP_TABLES = 100
"""A request converted on the event loop with rows for this many tables or more is written by the
converter thread, in a group with the requests that queue behind it (node/groupcommit.py): its
write costs a millisecond or more (~10 µs a table), the hop ~0.1 ms, and requests sent together
share most of their tables (1,000 metric names in every request: 2.2-2.5 times the points a CPU
second, in process, with 8 requests in flight)."""
TRIM_AFTER_BYTES = 16 << 20
"""After a request with this many bytes of rows, the memory it freed goes back to the system at
once (a few milliseconds, against seconds for the request)."""
MAX_CACHED_COUNTERS = 100_000
"""Per-table row counters (children of `ingestor_table_rows`) kept at most; cold ones are removed."""

Source = bytes | Callable[[], Any]
"""A request: its serialized protobuf, or a function that decodes it (raising DecodeError & co),
to the message or to its serialized protobuf (which is then parsed in pieces, as bytes given here)."""


@dataclass(frozen=True)
class Converters:
    metrics: MetricsConverter
    logs: LogsConverter
    traces: TracesConverter

    def turn(self) -> None:
        """Let every cache forget what was not used since the previous turn."""
        self.metrics.turn()
        self.logs.turn()
        self.traces.turn()


@dataclass(frozen=True)
class Kind:
    """One kind of request: its signal, message, how it splits, and its converter."""

    signal: str
    message: Any
    levels: tuple[Level, ...]
    convert: Callable[[Converters, Iterable[Any]], ConvertResult]
    name: str
    """The kind of request, as the log says it ("OTLP logs")."""
    items: str
    """What its refused items are ("log records")."""
    sent: str = ""
    """The message senders send, as a refusal names it, when `message` reads it under another name
    (a `prometheus.WriteRequest` read as a RawWriteRequest, an OTLP metrics request as
    ingestor.otlp_raw's); "": `message`'s name."""


REMOTE_WRITE = Kind("metrics", RawWriteRequest, REMOTE_WRITE_LEVELS,
                    lambda c, reqs: c.metrics.convert_remote_write_pieces(reqs), "remote write", "samples",
                    "prometheus.WriteRequest")
"""Read as RawWriteRequest (proto/prometheus/remote_raw.proto): the wire of a WriteRequest, each series
left as its bytes for the converter, which parses those it cannot read from their bytes, refusing one
that does not parse (DecodeError, as the parse of a WriteRequest did). Its pieces split at field 1, the
same on both messages' wire."""


class _OtlpMetricsRequest:
    """An ExportMetricsServiceRequest read as ingestor.otlp_raw's (`parse_request`: the same wire,
    a gauge or sum point's attributes left as their bytes)."""

    FromString = staticmethod(parse_request)


OTLP_METRICS = Kind("metrics", _OtlpMetricsRequest, OTLP_METRICS_LEVELS,
                    lambda c, reqs: c.metrics.convert_otlp_pieces(reqs), "OTLP metrics", "data points",
                    ExportMetricsServiceRequest.DESCRIPTOR.full_name)
"""Read as ingestor.otlp_raw.ExportMetricsServiceRequest (proto/opentelemetry_raw/metrics_raw.proto);
the converter parses a point's attributes only for a series it does not know, refusing the request
(DecodeError, as the parse of the whole request did) when they do not parse. Pieces split as before:
the wire is the same."""


class _OtlpLogsRequest:
    """An ExportLogsServiceRequest read as ingestor.otlp_raw_logs's (node.rows.logs.parse_request: the
    same wire, a record's attributes left as their bytes)."""

    FromString = staticmethod(parse_logs_request)


OTLP_LOGS = Kind("logs", _OtlpLogsRequest, OTLP_LOGS_LEVELS, lambda c, reqs: c.logs.convert_pieces(reqs),
                 "OTLP logs", "log records", ExportLogsServiceRequest.DESCRIPTOR.full_name)
"""Read as ingestor.otlp_raw_logs.ExportLogsServiceRequest (proto/opentelemetry_raw/logs_raw.proto); the
converter parses a record's attribute only when it does not know its bytes, refusing the request
(DecodeError, as the parse of the whole request did) when it does not parse. Pieces split as before: the
wire is the same."""
OTLP_TRACES = Kind("traces", ExportTraceServiceRequest, OTLP_TRACES_LEVELS,
                   lambda c, reqs: c.traces.convert_pieces(reqs), "OTLP traces", "spans")

REFUSALS_LOG_SECONDS = 60.0
"""Refusals are logged at most once per kind of request, kind of refusal and this many seconds
(`RateLimitedLog`: the next line says how many were left out); the counter counts every one."""


def _parse(kind: Kind, data: bytes) -> Any:
    try:
        return kind.message.FromString(data)
    except ProtobufDecodeError as e:
        raise DecodeError(f"malformed {kind.sent or kind.message.DESCRIPTOR.full_name}: {e}") from e


SIGNALS = {KIND_METRIC: "metrics", KIND_LOG: "logs", KIND_TRACE: "traces"}
"""The signal of a batch's kind of rows, as the rows counter labels it."""


def _rows_bytes(item: tuple[str, ConvertResult]) -> int:
    return sum(len(b.data) for b in item[1].tables.values())


_MALLOC_TRIM: Callable[[int], int] | None = libc.function("malloc_trim")


def trim_memory() -> None:
    """Hand freed memory back to the system: glibc's malloc_trim(0) (node/runtime.py's tune_malloc
    has glibc keep up to 256 MiB of it otherwise); nothing elsewhere. It runs without the GIL."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Ingest:
    """Converts requests to rows and appends them to the WAL; shared by every receiver."""

    def __init__(self, wal: Repository, converters: Converters, state: NodeState, metrics: NodeMetrics,
                 budget: MemoryBudget | None = None, *, inline_bytes: int = INLINE_BYTES) -> None:
        self._wal = wal
        self._conv = converters
        self._state = state
        self._metrics = metrics
        self.budget = budget
        """The process's memory budget, for `reserve` (None: nothing is reserved)."""
        self._inline_bytes = inline_bytes
        # Under `always` each block is fsynced: keep that off the event loop.
        self._offload = wal.config.fsync is FsyncPolicy.ALWAYS
        self._commit: GroupCommit[tuple[str, ConvertResult]] = GroupCommit(self._write_group, _rows_bytes)
        self._turn_every = max(1.0, wal.config.max_segment_age)
        self._turned = time.monotonic()
        self._counters_lock = threading.Lock()  # _write runs in several threads under `always`
        self._db_counters: BoundedCache[tuple[str, str], Any] = BoundedCache(MAX_CACHED_COUNTERS)
        self._table_counters: Generations[tuple[str, str], Any] = Generations(MAX_CACHED_COUNTERS)
        self._refusals = RateLimitedLog(log, REFUSALS_LOG_SECONDS)

    async def remote_write(self, request: Source, reserve: int = 0) -> ConvertResult:
        return await self.take(REMOTE_WRITE, request, reserve)

    async def otlp_metrics(self, request: Source, reserve: int = 0) -> ConvertResult:
        return await self.take(OTLP_METRICS, request, reserve)

    async def otlp_logs(self, request: Source, reserve: int = 0) -> ConvertResult:
        return await self.take(OTLP_LOGS, request, reserve)

    async def otlp_traces(self, request: Source, reserve: int = 0) -> ConvertResult:
        return await self.take(OTLP_TRACES, request, reserve)

    async def take(self, kind: Kind, request: Source, reserve: int = 0) -> ConvertResult:
        """Decode, convert and write one request, holding `reserve` bytes of the budget meanwhile."""
        self._state.check_accepting()
        if reserve and self.budget is not None:
            async with self.budget.reserve(reserve, f"{kind.signal} export"):
                result = await self._take(kind, request)
        else:
            result = await self._take(kind, request)
        if result.rejected:
            for reason in result.reasons[:1]:
                self._metrics.rejected.labels(kind.signal, reason.split(":", 1)[0][:80]).inc(result.rejected)
            self._said_refused(kind, result)
        return result

    def _said_refused(self, kind: Kind, result: ConvertResult) -> None:
        """One WARNING for refused rows (rate-limited per kind of request and kind of refusal: the
        part of the first reason before ":", which holds no request data): how many, of how many,
        and why, each reason naming the database, table or value it is about."""
        first = result.reasons[0].split(":", 1)[0][:80] if result.reasons else "?"
        total = result.rejected + result.accepted
        reasons = "; ".join(result.reasons) or "no reason given"
        self._refusals.log(logging.WARNING, f"{kind.name}:{first}", "%s: %d of %d %s refused, not stored: %s",
                           kind.name, result.rejected, total, kind.items, reasons)

    async def _take(self, kind: Kind, request: Source) -> ConvertResult:
        inline = (isinstance(request, bytes) and len(request) <= self._inline_bytes and not self._commit.busy
                  and time.monotonic() - self._turned < self._turn_every)
        if not inline:
            _, result = await self._commit.in_thread(lambda: self._converted(kind, request))
        else:
            result = self._convert(kind, request)
            if len(result.tables) >= GROUP_TABLES:  # the write costs milliseconds: group it
                item = (kind.signal, result)
                await self._commit.in_thread(lambda: item)
            elif result.tables:
                if self._offload:
                    await asyncio.to_thread(self._write_one, result)
                else:
                    self._write_one(result)
        return ConvertResult({}, result.accepted, result.rejected, result.reasons)

    def _converted(self, kind: Kind, request: Source) -> tuple[str, ConvertResult]:
        """In the converter thread: the caches turned when it is time, then the request converted."""
        if time.monotonic() - self._turned >= self._turn_every:
            self._turn()
        return kind.signal, self._convert(kind, request)

    def _convert(self, kind: Kind, request: Source) -> ConvertResult:
        if not isinstance(request, bytes):
            request = request()
            if not isinstance(request, bytes):
                return kind.convert(self._conv, (request,))
        try:
            return kind.convert(self._conv, (_parse(kind, piece) for piece in pieces(request, kind.levels)))
        except Unsplittable:
            return kind.convert(self._conv, (_parse(kind, request),))

    def _turn(self) -> None:
        """The caches forget what went cold; the memory it held goes back to the system."""
        t0 = time.perf_counter()
        self._turned = time.monotonic()
        self._conv.turn()
        with self._counters_lock:
            self._turn_counters()
        trim_memory()
        log.debug("caches turned in %.3fs", time.perf_counter() - t0)

    def _turn_counters(self) -> None:
        """Turn the per-table counters; those that go are taken out of the registry too, so that
        /metrics does not keep every table ever written (lock held)."""
        dropped = self._table_counters.old
        self._table_counters.turn()
        for key in dropped.keys() - self._table_counters.old.keys():
            with contextlib.suppress(KeyError):
                self._metrics.table_rows.remove(*key)

    def _write_group(self, items: Sequence[tuple[str, ConvertResult]]) -> list[BaseException | None]:
        """The rows of converted requests appended to the WAL at once (node/groupcommit.py); what came
        of each. A write of several that fails is made again request by request, so that each request
        has the outcome it would have had alone. The rows are let go of once written (the answers
        only need the counts): after a large group, the memory they held goes back to the system."""
        large = sum(len(b.data) for _, r in items for b in r.tables.values()) >= TRIM_AFTER_BYTES
        outcomes = self._written(items)
        for _, result in items:
            result.tables.clear()
        if large:
            trim_memory()
        return outcomes

    def _written(self, items: Sequence[tuple[str, ConvertResult]]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(items)
        todo = [i for i, (_, result) in enumerate(items) if result.tables]
        if len(todo) > 1:
            batches = merged([items[i][1] for i in todo])
            limit = self._wal.config.max_segment_count
            try:
                if limit and len(batches) > limit:
                    raise RequestTooLargeError("more tables than segments allowed: written request by request")
                self._write(batches)
                todo = []
            except Exception:  # each request is written alone below, and says its own
                pass
        for i in todo:
            try:
                self._write_one(items[i][1])
            except Exception as e:  # the request's own outcome, raised to its sender
                outcomes[i] = e
        return outcomes

    def _write_one(self, result: ConvertResult) -> None:
        limit = self._wal.config.max_segment_count
        if limit and len(result.tables) > limit:
            raise RequestTooLargeError(
                f"the request has rows for {len(result.tables)} tables, and a node holds at most {limit} segments, "
                f"one per table at least (--max-segment-count): split it, or raise --max-segment-count")
        self._write(result.tables.values())

    def _write(self, batches: Collection[TableBatch]) -> None:
        t0 = time.perf_counter()
        self._wal.write_many(batches)
        per_db: dict[tuple[str, str], int] = {}
        with self._counters_lock:
            dbs, tables = self._db_counters, self._table_counters
            for batch in batches:  # labels() costs a lock and a lookup: keep the children
                key = (SIGNALS[batch.kind], batch.database)
                per_db[key] = per_db.get(key, 0) + batch.count
                key = (batch.database, batch.table)
                table = tables.get(key)
                if table is None:
                    if len(tables.young) >= MAX_CACHED_COUNTERS // 2:
                        self._turn_counters()
                        tables = self._table_counters
                    table = tables.put(key, self._metrics.table_rows.labels(*key))
                table.inc(batch.count)
            for key, count in per_db.items():
                db = dbs.get(key)
                if db is None:
                    db = dbs.put(key, self._metrics.rows.labels(*key))
                db.inc(count)
        self._metrics.wal_write_seconds.observe(time.perf_counter() - t0)
