"""Requests in pieces (wire.pieces): converting the pieces in order gives the rows of the whole
request, for every kind of request and shape, whatever the piece size; what does not split is
said, so that the caller converts the request whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from node.cache import Generations
from node.gen.prometheus.remote_pb2 import WriteRequest
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConverter
from node.rows.wire import (
    OTLP_LOGS_LEVELS,
    OTLP_METRICS_LEVELS,
    OTLP_TRACES_LEVELS,
    REMOTE_WRITE_LEVELS,
    Level,
    Unsplittable,
    pieces,
    uvarint,
)
from tests.rows.build import T_MS, T_NS, kvs

SHAPE = st.lists(st.lists(st.integers(0, 6), max_size=4), min_size=1, max_size=3)
"""Resources, each a list of scopes, each the number of items (metrics, records, spans) in it."""


def metrics_request(shape: list[list[int]]) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for r, scopes in enumerate(shape):
        rm = req.resource_metrics.add()
        rm.resource.attributes.extend(kvs({"service.name": f"svc{r}", "host.name": f"h{r}"}))
        for s, n in enumerate(scopes):
            sm = rm.scope_metrics.add()
            sm.scope.name = f"scope{s}"
            for i in range(n):
                m = sm.metrics.add(name=f"m{i % 3}", unit="s")
                kind = i % 4
                if kind == 0:
                    for p in range(i + 1):
                        m.gauge.data_points.add(time_unix_nano=T_NS + p, as_double=p / 3,
                                                attributes=kvs({"p": str(p)}))
                elif kind == 1:
                    m.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                    m.sum.is_monotonic = True
                    for p in range(i + 2):
                        m.sum.data_points.add(time_unix_nano=T_NS + p, as_int=p, attributes=kvs({"q": p}))
                elif kind == 2:
                    for p in range(i):
                        m.histogram.data_points.add(time_unix_nano=T_NS + p, count=3, sum=1.5, bucket_counts=[1, 2],
                                                    explicit_bounds=[1.0], attributes=kvs({"h": str(p)}))
                else:
                    for p in range(i):
                        dp = m.summary.data_points.add(time_unix_nano=T_NS + p, count=2, sum=4.0)
                        dp.quantile_values.add(quantile=0.5, value=float(p))
    return req


def logs_request(shape: list[list[int]]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for r, scopes in enumerate(shape):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(kvs({"kusto.table": f"T{r}", "service.name": "api"}))
        for n in scopes:
            sl = rl.scope_logs.add()
            for i in range(n):
                rec = sl.log_records.add(time_unix_nano=T_NS + i, severity_text="INFO", attributes=kvs({"i": i}))
                rec.body.string_value = "x" * (i * 7)
    return req


def traces_request(shape: list[list[int]]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for r, scopes in enumerate(shape):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(kvs({"service.name": f"svc{r}"}))
        for n in scopes:
            ss = rs.scope_spans.add()
            for i in range(n):
                ss.spans.add(trace_id=bytes([i + 1]) * 16, span_id=bytes([i + 1]) * 8, name=f"op{i}",
                             start_time_unix_nano=T_NS, end_time_unix_nano=T_NS + i)
    return req


def remote_write(shape: list[list[int]]) -> WriteRequest:
    req = WriteRequest()
    for r, scopes in enumerate(shape):
        for s, n in enumerate(scopes):
            ts = req.timeseries.add()
            ts.labels.add(name="__name__", value=f"m{r}")
            ts.labels.add(name="s", value=str(s))
            for i in range(n):
                ts.samples.add(value=i / 7, timestamp=T_MS + i)
        req.metadata.add(metric_family_name=f"m{r}", help="h" * 40)
    return req


Kind = tuple[Callable[[list[list[int]]], Any], Any, tuple[Level, ...], Callable[[], Callable[..., ConvertResult]]]
KINDS: dict[str, Kind] = {
    "otlp metrics": (metrics_request, ExportMetricsServiceRequest, OTLP_METRICS_LEVELS,
                     lambda: MetricsConverter(MetricsConfig()).convert_otlp_pieces),
    "logs": (logs_request, ExportLogsServiceRequest, OTLP_LOGS_LEVELS,
             lambda: LogsConverter(LogsConfig(default_database="Logs")).convert_pieces),
    "traces": (traces_request, ExportTraceServiceRequest, OTLP_TRACES_LEVELS, lambda: TracesConverter().convert_pieces),
    "remote write": (remote_write, WriteRequest, REMOTE_WRITE_LEVELS,
                     lambda: MetricsConverter(MetricsConfig()).convert_remote_write_pieces),
}


def same(a: ConvertResult, b: ConvertResult) -> None:
    assert (a.accepted, a.rejected, a.reasons) == (b.accepted, b.rejected, b.reasons)
    assert {k: (bytes(v.data), v.count) for k, v in a.tables.items()} == \
        {k: (bytes(v.data), v.count) for k, v in b.tables.items()}


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), shape=SHAPE, size=st.sampled_from([1, 40, 120, 400, 1 << 20]))
def test_the_pieces_converted_in_order_give_the_rows_of_the_whole(kind: str, shape: list[list[int]],
                                                                   size: int) -> None:
    build, cls, levels, converter = KINDS[kind]
    raw = build(shape).SerializeToString()
    parts = list(pieces(raw, levels, size))
    assert parts
    if len(raw) <= size:
        assert parts == [raw]
    whole = converter()((cls.FromString(raw),))
    same(converter()(cls.FromString(p) for p in parts), whole)


def test_a_large_request_goes_in_pieces_of_about_the_size_asked() -> None:
    req = metrics_request([[40, 40], [40]])
    raw = req.SerializeToString()
    parts = list(pieces(raw, OTLP_METRICS_LEVELS, 1000))
    assert len(parts) > len(raw) // 1000
    assert max(map(len, parts)) < 1500  # a run of whole elements, with its resource, scope and metric
    total = sum(len(ExportMetricsServiceRequest.FromString(p).resource_metrics) for p in parts)
    assert total == len(parts)  # each piece is one resource's


def test_a_metric_that_sets_two_members_of_its_data_oneof_is_not_split() -> None:
    """On the wire, a gauge and then a sum: parsed, the metric is the sum alone; converted in pieces,
    both would make rows. Unsplittable says so and the caller parses the request whole."""
    gauge = Metric(name="both")
    for p in range(200):
        gauge.gauge.data_points.add(time_unix_nano=T_NS + p, as_double=1.0, attributes=kvs({"p": str(p)}))
    summed = Metric()
    summed.sum.data_points.add(time_unix_nano=T_NS, as_int=1)
    both = gauge.SerializeToString() + summed.SerializeToString()
    first = metrics_request([[3]]).SerializeToString()  # one resource
    raw = first + _field(0x0A, _field(0x12, _field(0x12, both)))  # resource_metrics{scope_metrics{metrics}}
    given = pieces(raw, OTLP_METRICS_LEVELS, 500)
    assert next(given)  # the first resource, before the one that does not split is reached
    with pytest.raises(Unsplittable):
        list(given)
    whole = ExportMetricsServiceRequest.FromString(raw)
    assert whole.resource_metrics[1].scope_metrics[0].metrics[0].WhichOneof("data") == "sum"


def test_what_the_splitter_cannot_read_is_given_whole_to_the_parser() -> None:
    garbage = b"\x0b" + b"\xff" * 5000  # a group start tag, then nonsense
    assert list(pieces(garbage, OTLP_METRICS_LEVELS, 100)) == [garbage]
    truncated = metrics_request([[5, 5]]).SerializeToString()[:-3] + b"\x00" * 2000
    assert list(pieces(truncated, OTLP_METRICS_LEVELS, 100)) == [truncated]


def _field(tag: int, value: bytes) -> bytes:
    """A length-delimited field as it is on the wire (protobuf would merge what it parses)."""
    return bytes([tag]) + uvarint(len(value)) + value


def test_generations_forget_what_was_not_used_for_two_turns() -> None:
    cache: Generations[str, int] = Generations(max_entries=4)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.turn_if_full()  # two is half of four: turned
    assert cache.get("a") == 1  # found in the old generation, back in the young one
    cache.turn()
    assert cache.get("a") == 1 and cache.get("b") is None  # b was not used for two turns
    cache.put("c", 3)  # young: a, c
    assert cache.turn_if_full() and len(cache) <= 4
