"""Fuzzing the HTTP port's body decoders and the converters behind them.

Random bytes and mutations of real bodies (a remote-write snappy block, its protobuf before
compression, OTLP protobuf, OTLP/JSON text and values, gzip'd OTLP) go through
`decode_remote_write` / `decode_otlp`. The only exceptions allowed out are `InvalidInputError`s
(which the port answers 400/413/415); anything else would be a 500, which senders retry forever.
What decodes is converted by the real converters, which must return a well-formed
`ConvertResult`: valid table names, CSV rows with the schema's column count, JSON in JSON columns.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import math
from collections.abc import Callable
from typing import Any

import cramjam
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from node.errors import DecodeError, InvalidInputError
from node.gen.prometheus import remote_pb2, remote_raw_pb2
from node.names import is_valid_name
from node.receivers.decode import decode_otlp, decode_remote_write, snappy_block
from node.rows.batch import MAX_REASONS, ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.logs import Parsed as LogsParsed
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.otlpmetrics import Parsed
from node.rows.traces import TracesConfig, TracesConverter
from tests.rows import logs_before, otlpmetrics_before

MAX = 1 << 20
T_MS = 1_795_492_800_123
T_NS = 1_795_492_800_123_456_789
PB = "application/x-protobuf"
JSON_CT = "application/json"

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- real bodies to mutate -------------------------------------------------------------------


def _any(v: object) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    if isinstance(v, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[_any(x) for x in v]))
    if isinstance(v, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=_kvs(v)))
    assert isinstance(v, str)
    return common_pb2.AnyValue(string_value=v)


def _kvs(attrs: dict[str, object]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def _remote_write() -> bytes:
    req = remote_pb2.WriteRequest()
    for labels, values in [
        ({"__name__": "http_requests_total", "job": "api", "code": "200"}, [1.0, 2.5]),
        ({"__name__": "up", "adxmon_database": "Prod", "instance": "a:9090"}, [math.nan, math.inf, -math.inf]),
        ({"__name__": "node:cpu:rate5m", "cpu": "0", "mode": 'we"ird,\nvalue'}, [0.25]),
    ]:
        ts = req.timeseries.add()
        for name in sorted(labels):
            ts.labels.add(name=name, value=labels[name])
        for i, v in enumerate(values):
            ts.samples.add(value=v, timestamp=T_MS + i)
    ts.exemplars.add(value=1.0, timestamp=T_MS).labels.add(name="trace_id", value="abc")
    req.metadata.add(type=remote_pb2.MetricMetadata.COUNTER, metric_family_name="http_requests_total", help="h")
    return req.SerializeToString()


def _metrics() -> metrics_service_pb2.ExportMetricsServiceRequest:
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend(_kvs({"service.name": "api", "service.instance.id": "i1", "host.name": "h",
                                        "adxmon_database": "Otel"}))
    sm = rm.scope_metrics.add()
    sm.scope.name = "scope"
    g = sm.metrics.add(name="cpu.usage")
    g.gauge.data_points.add(time_unix_nano=T_NS, as_double=0.5).attributes.extend(_kvs({"core": 1, "ok": True}))
    g.gauge.data_points.add(time_unix_nano=T_NS + 1, as_int=-3).attributes.extend(_kvs({"core": 2.5}))
    s = sm.metrics.add(name="requests")
    s.sum.is_monotonic = True
    s.sum.data_points.add(time_unix_nano=T_NS, as_int=7).attributes.extend(_kvs({"path": "/x", "list": [1, "a"]}))
    h = sm.metrics.add(name="latency")
    h.histogram.data_points.add(time_unix_nano=T_NS, count=6, sum=1.5, bucket_counts=[1, 2, 3],
                                explicit_bounds=[0.1, 1.0])
    e = sm.metrics.add(name="exp")
    dp = e.exponential_histogram.data_points.add(time_unix_nano=T_NS, count=5, sum=2.0, scale=2, zero_count=1)
    dp.positive.offset = -1
    dp.positive.bucket_counts.extend([1, 2])
    dp.negative.bucket_counts.extend([1])
    q = sm.metrics.add(name="rpc")
    sq = q.summary.data_points.add(time_unix_nano=T_NS, count=3, sum=0.75)
    sq.quantile_values.add(quantile=0.5, value=0.2)
    sq.quantile_values.add(quantile=0.99, value=0.5)
    return req


def _logs() -> logs_service_pb2.ExportLogsServiceRequest:
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(_kvs({"service.name": "api", "kusto.database": "Logs"}))
    sl = rl.scope_logs.add()
    sl.log_records.add(time_unix_nano=T_NS, severity_text="INFO", severity_number=9, trace_id=b"\x01" * 16,
                       span_id=b"\x02" * 8, body=_any("hello, \"world\"\n"),
                       attributes=_kvs({"kusto.table": "App", "n": 1, "b": b"\x00\xff"}))
    sl.log_records.add(observed_time_unix_nano=T_NS, body=_any({"k": [1.5, {"x": None is None}]}),
                       attributes=_kvs({"kusto.table": "../x"}))
    return req


def _traces() -> trace_service_pb2.ExportTraceServiceRequest:
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(_kvs({"service.name": "api"}))
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    ss.scope.version = "1.0"
    span = ss.spans.add(trace_id=b"\x5b" * 16, span_id=b"\xee" * 8, parent_span_id=b"\x01" * 8, name="GET /x",
                        kind=trace_pb2.Span.SPAN_KIND_CLIENT, start_time_unix_nano=T_NS, end_time_unix_nano=T_NS + 9,
                        attributes=_kvs({"http.method": "GET", "n": 3}))
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = "boom"
    span.events.add(time_unix_nano=T_NS, name="ev", attributes=_kvs({"a": "b"}))
    span.links.add(trace_id=b"\x07" * 16, span_id=b"\x08" * 8, trace_state="k=v")
    return req


def _otlp_json(msg: Message) -> bytes:
    """OTLP/JSON: camelCase, 64-bit integers as strings, ids in hex."""
    def hexify(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else hexify(v)
                    for k, v in node.items()}
        if isinstance(node, list):
            return [hexify(x) for x in node]
        return node

    return json.dumps(hexify(json_format.MessageToDict(msg))).encode()


RW_RAW = _remote_write()
RW_BODY = bytes(cramjam.snappy.compress_raw(RW_RAW))
MESSAGES: dict[str, Message] = {"metrics": _metrics(), "logs": _logs(), "traces": _traces()}
CLASSES: dict[str, type[Message]] = {
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "traces": trace_service_pb2.ExportTraceServiceRequest,
}
PB_BODIES = {signal: msg.SerializeToString() for signal, msg in MESSAGES.items()}
JSON_BODIES = {signal: _otlp_json(msg) for signal, msg in MESSAGES.items()}
SIGNALS = sorted(CLASSES)

# -- checking what comes out -------------------------------------------------------------------


def _converters() -> dict[str, Callable[[Any], ConvertResult]]:
    """Fresh converters (their caches must not carry state from one example to the next)."""
    metrics = MetricsConverter(MetricsConfig())
    return {
        "remote_write": metrics.convert_remote_write,
        "metrics": metrics.convert_otlp,
        "logs": LogsConverter(LogsConfig(default_database="Logs", default_table="App")).convert,
        "traces": TracesConverter(TracesConfig()).convert,
    }


JSON_COLUMNS = {"remote_write": (2,), "metrics": (2,), "logs": (6, 7, 8), "traces": (8, 9, 10, 11)}


def check_result(kind: str, result: ConvertResult) -> None:
    """A ConvertResult the WAL and the sinks can take as it is."""
    assert isinstance(result, ConvertResult)
    assert result.rejected >= 0 and len(result.reasons) <= MAX_REASONS
    assert not result.rejected or result.reasons
    assert result.accepted == sum(batch.count for batch in result.tables.values())
    for (database, table), batch in result.tables.items():
        assert (batch.database, batch.table) == (database, table)
        assert is_valid_name(database) and is_valid_name(table), (database, table)
        assert batch.count > 0
        text = bytes(batch.data).decode("utf-8")
        assert text.endswith("\n")
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
        assert len(rows) == batch.count, (batch.count, text[:500])
        for row in rows:
            assert len(row) == len(batch.schema), (row, batch.schema)
            for column in JSON_COLUMNS[kind]:
                json.loads(row[column])


def _tables(result: ConvertResult) -> dict[tuple[str, str], bytes]:
    return {key: bytes(batch.data) for key, batch in result.tables.items()}


def check_remote_write(body: bytes, encoding: str | None = "snappy", content_type: str | None = PB) -> None:
    """`body` refused (the port's 400/413/415), or converted to well-formed rows. What the node does
    (a RawWriteRequest, each series read from its bytes: a series that does not parse is refused by
    the converter) is what a parsed WriteRequest gives: refused exactly when its parse refuses, else
    the same rows, counts and reasons."""
    try:
        req = decode_remote_write(body, encoding, content_type, MAX)
    except InvalidInputError:
        return
    assert isinstance(req, remote_raw_pb2.RawWriteRequest)
    raw = snappy_block(body, MAX)
    try:
        whole = remote_pb2.WriteRequest.FromString(raw)
    except ProtobufDecodeError:
        whole = None
    try:
        result = _converters()["remote_write"](req)
    except DecodeError as e:
        assert whole is None, f"refused by the converter ({e}), but it parses as a WriteRequest"
        assert "malformed prometheus." in str(e)
        return
    assert whole is not None, "accepted, but it does not parse as a WriteRequest"
    check_result("remote_write", result)
    reference = _converters()["remote_write"](whole)
    assert _tables(result) == _tables(reference)
    assert (result.accepted, result.rejected, result.reasons) == (reference.accepted, reference.rejected,
                                                                  reference.reasons)


def check_otlp(signal: str, body: bytes, content_type: str | None, encoding: str | None = None) -> None:
    try:
        msg = decode_otlp(body, content_type, encoding, CLASSES[signal], MAX)
    except InvalidInputError:
        return
    if isinstance(msg, Parsed):  # OTLP metrics in protobuf
        check_otlp_metrics(msg)
        return
    if isinstance(msg, LogsParsed):  # OTLP logs in protobuf
        check_otlp_logs(msg)
        return
    assert isinstance(msg, CLASSES[signal])
    check_result(signal, _converters()[signal](msg))


def check_otlp_metrics(parsed: Parsed) -> None:
    """What the node does with OTLP metrics in protobuf (read as ingestor.otlp_raw's, a point's
    attributes parsed by the converter for a new series, refused there when they do not parse) is
    what the whole parse and the converter as it was give (tests/rows/otlpmetrics_before.py)."""
    conv = MetricsConverter(MetricsConfig())
    conv._otlp = otlpmetrics_before.OtlpMetrics(conv._series, (), conv.cfg.max_cached_series)  # type: ignore[assignment]
    check_as_before("metrics", parsed.data, parsed,
                    metrics_service_pb2.ExportMetricsServiceRequest, conv.convert_otlp)


def check_otlp_logs(parsed: LogsParsed) -> None:
    """OTLP logs in protobuf, read as ingestor.otlp_raw_logs's (a record's attributes parsed by the
    converter when it does not know them), against the whole parse and the converter as it was
    (tests/rows/logs_before.py)."""
    old = logs_before.LogsConverter(logs_before.LogsConfig(default_database="Logs", default_table="App"))
    check_as_before("logs", parsed.data, parsed, logs_service_pb2.ExportLogsServiceRequest, old.convert)


def check_as_before(signal: str, data: bytes, parsed: Any, full: type[Message],
                    before: Callable[[Any], ConvertResult]) -> None:
    """`parsed` (the node's read of `data`) converted is refused exactly when the whole parse of
    `data` as `full` refuses it, with its error, else gives the same rows, counts and reasons as the
    converter as it was (`before`) given that whole parse."""
    try:
        whole = full.FromString(data)
    except ProtobufDecodeError as e:
        whole, error = None, f"malformed {full.DESCRIPTOR.full_name}: {e}"
    try:
        result = _converters()[signal](parsed)
    except DecodeError as e:
        assert whole is None, f"refused by the converter ({e}), but it parses as a {full.DESCRIPTOR.name}"
        assert str(e) == error
        return
    assert whole is not None, f"accepted, but it does not parse as a {full.DESCRIPTOR.name}"
    check_result(signal, result)
    reference = before(whole)
    assert _tables(result) == _tables(reference)
    assert (result.accepted, result.rejected, result.reasons) == (reference.accepted, reference.rejected,
                                                                  reference.reasons)


def test_seed_bodies_decode_and_convert() -> None:
    """The seeds themselves are accepted, with rows: mutations start from real, working bodies."""
    req = decode_remote_write(RW_BODY, "snappy", PB, MAX)
    assert isinstance(req, remote_raw_pb2.RawWriteRequest)
    assert [remote_pb2.TimeSeries.FromString(b) for b in req.timeseries] == list(
        remote_pb2.WriteRequest.FromString(RW_RAW).timeseries)
    result = _converters()["remote_write"](req)
    check_result("remote_write", result)
    assert result.accepted == 6
    check_remote_write(RW_BODY)
    for signal in SIGNALS:
        for body, ct in ((PB_BODIES[signal], PB), (JSON_BODIES[signal], JSON_CT)):
            msg = decode_otlp(body, ct, None, CLASSES[signal], MAX)
            if isinstance(msg, Parsed):  # OTLP metrics in protobuf, read as ingestor.otlp_raw's
                assert (signal, ct, msg.data) == ("metrics", PB, body)
                check_otlp_metrics(msg)
            elif isinstance(msg, LogsParsed):  # OTLP logs in protobuf, read as ingestor.otlp_raw_logs's
                assert (signal, ct, msg.data) == ("logs", PB, body)
                check_otlp_logs(msg)
            else:
                assert msg == MESSAGES[signal]
            result = _converters()[signal](msg)
            check_result(signal, result)
            assert result.accepted > 0
        msg = decode_otlp(gzip.compress(PB_BODIES[signal]), PB, "gzip", CLASSES[signal], MAX)
        want = PB_BODIES[signal] if signal in ("metrics", "logs") else MESSAGES[signal]
        assert (msg.data if isinstance(msg, Parsed | LogsParsed) else msg) == want


# -- mutations -------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_ops: int = 3) -> bytes:
    """`seed` with 1 to `max_ops` bytes flipped, overwritten, inserted or deleted (bit flips most
    often: a body with one flipped bit still decodes about two times in three, so the converters
    get exercised, not only the decoders' refusals)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "flip", "flip", "set", "insert", "delete")))
        i = draw(st.integers(0, len(data)))
        if op == "insert" or not data:
            data[i:i] = draw(st.binary(min_size=1, max_size=6))
            continue
        i = min(i, len(data) - 1)
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x22, ord('"'), ord("{"))))
        else:
            del data[i : i + draw(st.integers(1, 4))]
    return bytes(data)


def json_values() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                       st.floats(allow_nan=False, allow_infinity=False),
                       st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1", "18446744073709551616",
                                        "00", "zz", "5b8efff798038103d269b633813fc60c", "", "../x", "\x00"]),
                       st.text(max_size=20))
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                        max_leaves=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(_paths(v, (*prefix, i)))
    return out


@st.composite
def mutated_json(draw: st.DrawFn, signal: str) -> bytes:
    """The OTLP/JSON seed of `signal` with a few of its values (or keys' values) replaced."""
    doc = json.loads(JSON_BODIES[signal])
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)[1:]
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.sampled_from(["traceId", "spanId", "parentSpanId", "timeUnixNano", "scale", "kind",
                                         "asDouble", "asInt", "bucketCounts", "explicitBounds", "intValue",
                                         "kvlistValue", "arrayValue", "count", "code", "unknownField"]))] = draw(
                json_values())
        else:
            parent[path[-1]] = draw(json_values())
    return json.dumps(doc).encode()


# -- remote write ------------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=512),
       encoding=st.sampled_from([None, "snappy", "SNAPPY", "gzip", "", "identity"]),
       content_type=st.sampled_from([None, PB, "application/x-protobuf;proto=prometheus.WriteRequest",
                                     "application/x-protobuf;proto=io.prometheus.write.v2.Request", "text/plain",
                                     ";;=;", "application/x-protobuf; proto"]))
def test_remote_write_random_bytes(body: bytes, encoding: str | None, content_type: str | None) -> None:
    check_remote_write(body, encoding, content_type)


@FUZZ
@given(body=st.binary(max_size=512))
def test_remote_write_snappy_of_random_bytes(body: bytes) -> None:
    check_remote_write(bytes(cramjam.snappy.compress_raw(body)))


@FUZZ
@given(body=mutated(RW_BODY))
def test_remote_write_mutated_snappy_body(body: bytes) -> None:
    check_remote_write(body)


@FUZZ
@given(raw=mutated(RW_RAW))
def test_remote_write_mutated_protobuf(raw: bytes) -> None:
    """Mutations under the snappy layer, so they reach protobuf parsing and the converter."""
    check_remote_write(bytes(cramjam.snappy.compress_raw(raw)))


# -- OTLP ----------------------------------------------------------------------------------


@FUZZ
@given(signal=st.sampled_from(SIGNALS), body=st.binary(max_size=512),
       content_type=st.sampled_from([PB, JSON_CT, None, "text/plain", "application/json; charset=utf-8"]),
       gzipped=st.booleans())
def test_otlp_random_bytes(signal: str, body: bytes, content_type: str | None, gzipped: bool) -> None:
    check_otlp(signal, body, content_type)
    check_otlp(signal, body, content_type, "gzip")  # mostly "not valid gzip"
    if gzipped:
        check_otlp(signal, gzip.compress(body), content_type, "gzip")


@FUZZ
@given(data=st.data(), signal=st.sampled_from(SIGNALS))
def test_otlp_mutated_protobuf(data: st.DataObject, signal: str) -> None:
    check_otlp(signal, data.draw(mutated(PB_BODIES[signal])), PB)


@FUZZ
@given(data=st.data(), signal=st.sampled_from(SIGNALS))
def test_otlp_mutated_json_text(data: st.DataObject, signal: str) -> None:
    check_otlp(signal, data.draw(mutated(JSON_BODIES[signal])), JSON_CT)


@FUZZ
@given(data=st.data(), signal=st.sampled_from(SIGNALS))
def test_otlp_mutated_json_values(data: st.DataObject, signal: str) -> None:
    check_otlp(signal, data.draw(mutated_json(signal)), JSON_CT)


@FUZZ
@given(data=st.data(), signal=st.sampled_from(SIGNALS))
def test_otlp_mutated_values_as_protobuf(data: st.DataObject, signal: str) -> None:
    """Odd values (extreme numbers, odd-length ids, unknown enum values, deep attributes) that
    protobuf's own JSON parser accepts, sent as protobuf."""
    try:
        msg = json_format.Parse(data.draw(mutated_json(signal)), CLASSES[signal]())
    except (json_format.ParseError, ValueError, TypeError, RecursionError):
        return
    check_otlp(signal, msg.SerializeToString(), PB)


@FUZZ
@given(data=st.data(), signal=st.sampled_from(SIGNALS), content_type=st.sampled_from([PB, JSON_CT]),
       layer=st.sampled_from(["gzip", "inside"]))
def test_otlp_mutated_gzip(data: st.DataObject, signal: str, content_type: str, layer: str) -> None:
    plain = PB_BODIES[signal] if content_type == PB else JSON_BODIES[signal]
    # "gzip": damage the compressed bytes (header, deflate stream, CRC, length); "inside": damage
    # the message, then compress it
    body = data.draw(mutated(gzip.compress(plain))) if layer == "gzip" else gzip.compress(data.draw(mutated(plain)))
    check_otlp(signal, body, content_type, "gzip")
