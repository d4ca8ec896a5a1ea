"""Batches of real rows for the sink tests, and a way to read them back out of a sink.

Rows come from the node's converters (so the CSV is exactly what the node writes: NaN and
infinities, quoted JSON, 3- and 9-digit fractions), go through a real WAL, and reach the sink as
`Batch`es. `read_back` selects a table's rows in a canonical text form that `expected` also gives
for the batch's CSV, so the two compare exactly.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import CollectorRegistry

from node.metrics import NodeMetrics
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConverter
from node.sinks.base import Batch, Sink
from node.sinks.chschema import Conn, base_type, table_columns
from node.sinks.clickhouse import EpochNanos
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.wal import format as fmt
from node.wal.names import Schema
from node.wal.repository import Repository, WalConfig
from tests.rows.build import T_MS, T_NS, kvs, log_record, logs_request, metrics_request, remote_write
from tests.wal.helpers import write_block

INF, NAN = float("inf"), float("nan")


async def upload_all(wal: Repository, sink: Sink) -> CollectorRegistry:
    """Every closed segment of `wal` delivered (or quarantined) by a real uploader into `sink`, at
    once (no batch waits to grow), then the uploader stopped; its metrics."""
    registry = CollectorRegistry()
    up = Uploader(wal, sink, UploadConfig(interval=0.05, policy=BatchPolicy(min_batch_bytes=0, max_wait=0),
                                          backoff_initial=0.05, backoff_max=0.1), NodeMetrics(registry))
    await up.start()
    try:
        assert await up.drain(time.monotonic() + 60)
    finally:
        await up.stop()
    return registry


def write_batch(wal_dir: Path, *results: ConvertResult, database: str | None = None) -> Batch:
    """The rows of `results` (all of one table and schema) through a WAL, as one Batch (moved to
    `database` if given)."""
    wal = Repository(WalConfig(wal_dir))
    wal.start()
    for result in results:
        (tb,) = result.tables.values()
        write_block(wal, database or tb.database, tb.table, tb.kind, tb.data, tb.count, tb.schema)
    (info,) = wal.rotate_all()
    return Batch(info.database, info.name.table, (info,))


def raw_batch(wal_dir: Path, database: str, table: str, schema: Schema, rows: str) -> Batch:
    """A batch of hand-written CSV rows."""
    wal = Repository(WalConfig(wal_dir))
    wal.start()
    write_block(wal, database, table, fmt.KIND_METRIC, rows.encode(), rows.count("\n"), schema)
    return Batch(database, table, tuple(wal.rotate_all()))


def metrics(lift: tuple[str, ...] = (), n: int = 3) -> ConvertResult:
    """Remote-write rows of one metric: NaN, +/-Inf, odd label text, `n` series."""
    conv = MetricsConverter(MetricsConfig(lift_labels=lift))
    series = []
    values = [NAN, INF, -INF, 0.1, 1e300, -0.0, 42.0]
    for i in range(n):
        labels = {"__name__": "http_requests_total", "pod": f"web-{i}", "path": 'a,b "quoted"\nnext'}
        series.append((labels, [(values[(i + k) % len(values)], T_MS + k) for k in range(3)]))
    return conv.convert_remote_write(remote_write(*series))


def otlp_metrics(lift: tuple[str, ...] = ()) -> ConvertResult:
    """OTLP gauge rows (9-digit timestamps) of the same metric as `metrics`."""
    conv = MetricsConverter(MetricsConfig(lift_labels=lift))
    points = [NumberDataPoint(time_unix_nano=T_NS + i, as_double=v, attributes=kvs({"pod": f"otel-{i}"}))
              for i, v in enumerate([NAN, -INF, 3.5])]
    return conv.convert_otlp(metrics_request(Metric(name="http_requests_total", gauge=Gauge(data_points=points))))


def logs() -> ConvertResult:
    records: list[LogRecord] = [
        log_record({"k": "v", "n": 1}, body="hello, \"world\"\n", time_unix_nano=T_NS, observed_time_unix_nano=T_NS + 5,
                   severity_text="INFO", severity_number=9, trace_id=bytes(range(16)), span_id=bytes(range(8))),
        log_record({}, body="\\N", time_unix_nano=T_NS + 1, severity_number=17),
        log_record({"nested": 1.5}, body=" padded ", time_unix_nano=0),
    ]
    return LogsConverter(LogsConfig("Logs", "App")).convert(logs_request(*records, resource={"service.name": "api"}))


def traces() -> ConvertResult:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs({"service.name": "api"}))
    spans = [
        Span(trace_id=bytes(range(16)), span_id=bytes(range(8)), name="GET /items, v2", kind=Span.SPAN_KIND_SERVER,
             start_time_unix_nano=T_NS, end_time_unix_nano=T_NS + 1_000, attributes=kvs({"http.status_code": 500}),
             status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
             events=[Span.Event(name="exception", time_unix_nano=T_NS + 10)]),
        Span(name="child", start_time_unix_nano=T_NS + 7, end_time_unix_nano=T_NS + 9),
    ]
    rs.scope_spans.add().spans.extend(spans)
    return TracesConverter().convert(req)


def _canonical(adx_type: str, text: str, seconds_only: bool) -> str:
    if adx_type == "datetime":
        ns = EpochNanos()(text)
        return str(ns // 1_000_000_000 if seconds_only else ns)
    if adx_type in ("real", "decimal"):
        return repr(float(text))
    if adx_type in ("long", "int"):
        return str(int(text))
    return text


def expected(batch: Batch, seconds_only: bool = False) -> list[tuple[str, ...]]:
    """The batch's rows in canonical form (sorted); `seconds_only` for DateTime (pre-20.1) servers."""
    schema = batch.read_schema()
    assert schema is not None
    rows = csv.reader(io.StringIO(b"".join(batch.iter_csv()).decode(), newline=""))
    return sorted(tuple(_canonical(t, v, seconds_only) for (_, t), v in zip(schema, row, strict=True)) for row in rows)


def read_back(conn: Conn, database: str, table: str, schema: Schema) -> list[tuple[str, ...]]:
    """The table's rows, in `expected`'s canonical form, selected through a sink's connection."""
    types = table_columns(conn, database, table)
    exprs = []
    for name, _ in schema:
        b = base_type(types[name])
        if b.startswith("DateTime64"):
            exprs.append(f"toString(toUnixTimestamp64Nano(`{name}`))")
        elif b.startswith("DateTime"):
            exprs.append(f"toString(toUnixTimestamp(`{name}`))")
        else:
            exprs.append(f"`{name}`")
    rows = conn.query(f"SELECT {', '.join(exprs)} FROM `{database}`.`{table}`")
    return sorted(tuple(_canonical(t, v, False) if t in ("real", "long", "int") else v
                        for (_, t), v in zip(schema, row, strict=True)) for row in rows)


def hold_store_child() -> None:
    """A second process (run with `python -c`): argv[1] is a storage dir, argv[2] a WAL dir.

    It starts a LocalSink like a node, uploads a batch of metrics, then obeys lines on stdin:
    `hold` opens the store and keeps it (as during a long upload) until `release`; `quit` ends.
    It answers every command with one line on stdout."""
    from node.sinks.local import LocalSink, open_store, store_dir

    storage, wal = Path(sys.argv[1]), Path(sys.argv[2])
    sink = LocalSink(store_dir(storage))
    sink.start()
    batch = write_batch(wal, metrics())
    sink.upload(batch)
    print(f"uploaded {batch.rows}", flush=True)
    held = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "hold":
            held = open_store(store_dir(storage), 10.0)
            held.__enter__()
            print("holding", flush=True)
        elif cmd == "release" and held is not None:
            held.__exit__(None, None, None)
            held = None
            print("released", flush=True)
        elif cmd == "quit":
            break
    sink.stop()
