"""Small builders of OTLP and remote-write requests for the row tests."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import xxhash
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics

from node.gen.prometheus.remote_pb2 import WriteRequest
from node.rows.batch import ConvertResult
from node.rows.wire import uvarint

T_MS = 1_795_492_800_123  # 2026-11-24T04:00:00.123Z
T_NS = 1_795_492_800_123_456_789  # 2026-11-24T04:00:00.123456789Z


def any_value(v: object) -> AnyValue:
    if isinstance(v, AnyValue):
        return v
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    assert isinstance(v, str), v
    return AnyValue(string_value=v)


def kvs(attrs: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def remote_write(*series: tuple[dict[str, str], list[tuple[float, int]]]) -> WriteRequest:
    req = WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for name, value in labels.items():
            ts.labels.add(name=name, value=value)
        for sample, t in samples:
            ts.samples.add(value=sample, timestamp=t)
    return req


def metrics_request(*metrics: Metric, resource: Mapping[str, object] | None = None) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    rm: ResourceMetrics = req.resource_metrics.add()
    rm.resource.attributes.extend(kvs(resource or {}))
    rm.scope_metrics.add().metrics.extend(metrics)
    return req


def logs_request(*records: LogRecord, resource: Mapping[str, object] | None = None) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(kvs(resource or {}))
    rl.scope_logs.add().log_records.extend(records)
    return req


def log_record(attrs: Mapping[str, object] | None = None, body: object = "hello", **fields: object) -> LogRecord:
    rec = LogRecord(attributes=kvs(attrs or {}), **fields)  # type: ignore[arg-type]
    if body is not None:
        rec.body.CopyFrom(body if isinstance(body, AnyValue) else AnyValue(string_value=str(body)))
    return rec


def sid(labels: dict[str, str]) -> int:
    """Series id computed independently of node.rows: big-endian digest read as signed."""
    text = "".join(name + labels[name] for name in sorted(labels))
    return int.from_bytes(xxhash.xxh64(text.encode()).digest(), "big", signed=True)


def text(result: ConvertResult, database: str, table: str) -> str:
    return result.tables[(database, table)].data.decode()


def parse(data: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data, newline=""), strict=True))


def ld(field: int, data: bytes) -> bytes:
    """Protobuf field `field` holding `data` (wire type 2), written by hand."""
    return uvarint(field << 3 | 2) + uvarint(len(data)) + data


def nested(depth: int) -> bytes:
    """A serialized KeyValue whose value nests `depth` kvlists (three messages each)."""
    kv = KeyValue(key="deep", value=AnyValue(string_value="x")).SerializeToString()
    for _ in range(depth):  # KeyValue{value: AnyValue{kvlist_value: KeyValueList{values: [kv]}}}
        kv = ld(1, b"deep") + ld(2, ld(6, ld(1, kv)))
    return kv
