"""OTLP metrics read as ingestor.otlp_raw (proto/opentelemetry_raw/metrics_raw.proto: each metric left as
its bytes, a gauge or sum point too, and its attributes) give what the whole parse gave, for every shape:
the same rows, counts and reasons, or the same refusal (DecodeError and its text). The reference is the
converter as it was (tests/rows/otlpmetrics_before.py) given the request parsed whole; the converter
under test is given it as bytes (`parse_request`), whole and in pieces, as a message (OTLP/JSON), cold
and warm. The requests generated hold metrics and points laid out as senders write them and otherwise
(fields reordered, repeated, unknown, deep groups, exemplars, flags), and some that do not parse."""

from __future__ import annotations

import contextlib
import gzip
import math
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from node.errors import DecodeError
from node.gen.opentelemetry_raw import metrics_raw_pb2 as raw
from node.ingest import OTLP_METRICS, _parse
from node.receivers.decode import PROTOBUF, decode_otlp
from node.rows.batch import ConvertResult
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.otlpmetrics import Parsed
from node.rows.wire import OTLP_METRICS_LEVELS, Unsplittable, pieces, uvarint
from tests.rows import otlpmetrics_before
from tests.rows.build import ld, nested

Full = metrics_service_pb2.ExportMetricsServiceRequest
NAME = Full.DESCRIPTOR.full_name
T0 = 1_795_000_000_000_000_000


# -- the proto ---------------------------------------------------------------------------------

def _fields(d: Any) -> list[tuple[Any, ...]]:
    p = descriptor_pb2.DescriptorProto()
    d.CopyToProto(p)
    return sorted((f.name, f.number, f.label, f.type, f.type_name.rsplit(".", 1)[-1],
                   f.oneof_index if f.HasField("oneof_index") else None, f.proto3_optional) for f in p.field)


def _messages(d: Any) -> Iterator[Any]:
    yield d
    for n in d.nested_types:
        yield from _messages(n)


def test_raw_messages_are_the_originals_but_number_point_attributes() -> None:
    """Every message of the request, field for field (names, numbers, types, oneofs), as
    opentelemetry-proto declares it (an upgrade that adds a field fails here: copy it), but Gauge's
    and Sum's data points (bytes), a NumberDataPoint's attributes (bytes) and Metric's gauge and sum
    (outside its oneof); and the request again with its metrics as bytes (ExportMetricsServiceRequestOfBytes,
    ResourceMetricsOfBytes, ScopeMetricsOfBytes: otherwise the originals)."""
    originals = [
        *(common_pb2.DESCRIPTOR.message_types_by_name[n] for n in
          ("AnyValue", "ArrayValue", "KeyValueList", "KeyValue", "InstrumentationScope", "EntityRef")),
        resource_pb2.Resource.DESCRIPTOR,
        *(d for d in metrics_pb2.DESCRIPTOR.message_types_by_name.values() if d.name != "MetricsData"),
        Full.DESCRIPTOR,
    ]
    seen = 0
    for top in originals:
        for d in _messages(top):
            mine = raw.DESCRIPTOR.pool.FindMessageTypeByName("ingestor.otlp_raw." + d.full_name.split(".v1.", 1)[1])
            want = _fields(d)
            if d.name == "NumberDataPoint":
                want = [(*f[:3], 12, "", *f[5:]) if f[0] == "attributes" else f for f in want]  # 12: bytes
            if d.name in ("Gauge", "Sum"):
                want = [(*f[:3], 12, "", *f[5:]) if f[0] == "data_points" else f for f in want]
            if d.name == "Metric":  # gauge and sum outside the oneof
                want = [(*f[:5], None, f[6]) if f[0] in ("gauge", "sum") else f for f in want]
            assert _fields(mine) == want, d.full_name
            seen += 1
    of_bytes = {"ExportMetricsServiceRequest": ("resource_metrics", "ResourceMetricsOfBytes"),
                "ResourceMetrics": ("scope_metrics", "ScopeMetricsOfBytes"),
                "ScopeMetrics": ("metrics", None)}
    for name, (field, type_name) in of_bytes.items():
        d = Full.DESCRIPTOR if name == "ExportMetricsServiceRequest" else metrics_pb2.DESCRIPTOR.message_types_by_name[
            name]
        want = [(*f[:3], 12, "", *f[5:]) if f[0] == field and type_name is None
                else (*f[:4], type_name, *f[5:]) if f[0] == field else f for f in _fields(d)]
        assert _fields(raw.DESCRIPTOR.message_types_by_name[name + "OfBytes"]) == want, name
        seen += 1
    assert seen == len(raw.DESCRIPTOR.message_types_by_name) + 2  # and the nested Buckets, ValueAtQuantile
    for e in ("AggregationTemporality",):
        assert ([(v.name, v.number) for v in raw.DESCRIPTOR.enum_types_by_name[e].values]
                == [(v.name, v.number) for v in metrics_pb2.DESCRIPTOR.enum_types_by_name[e].values])


# -- requests of every shape -------------------------------------------------------------------



class Shapes:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def any_value(self, depth: int = 0) -> common_pb2.AnyValue:
        r = self.r
        k = r.randrange(12 if depth < 2 else 8)
        v = common_pb2.AnyValue()
        if k == 0:
            v.string_value = r.choice(["", "a", "v1", "ünï", "x" * 30, "with,comma \"quote\"\n"])
        elif k == 1:
            v.bool_value = r.random() < 0.5
        elif k == 2:
            v.int_value = r.choice([0, 1, -1, 2**63 - 1, -(2**63)])
        elif k == 3:
            v.double_value = r.choice([0.0, -0.0, 1.5, 1e300, math.nan, math.inf, -math.inf, 0.1])
        elif k == 4:
            v.bytes_value = r.choice([b"", b"\x00\xff", b"abc"])
        elif k == 5:
            v.string_value_strindex = r.randrange(3)
        elif k in (6, 7):
            pass  # unset
        elif k in (8, 9):
            v.array_value.values.extend([self.any_value(depth + 1) for _ in range(r.randrange(3))])
        else:
            v.kvlist_value.values.extend([self.kv(depth + 1) for _ in range(r.randrange(3))])
        return v

    def key(self) -> str:
        return self.r.choice(["a", "b", "a.b", "a_b", "a-b", "", "service.name", "job", "instance", "le", "quantile",
                              "__name__", "adxmon_database", "adxmon.database", "host", "k8s.pod.name", "9x", "ünï"])

    def kv(self, depth: int = 0) -> common_pb2.KeyValue:
        kv = common_pb2.KeyValue(key=self.key(), value=self.any_value(depth))
        if self.r.random() < 0.05:
            kv.key_strindex = 2
        return kv

    def attribute(self) -> bytes:
        """A KeyValue's bytes: canonical mostly; fields reordered, repeated, unknown, empty at times."""
        r = self.r
        kv = self.kv()
        b = kv.SerializeToString()
        x = r.random()
        if x < 0.06:  # value before key
            b = (ld(2, kv.value.SerializeToString()) if kv.HasField("value") else b"") + ld(1, kv.key.encode())
        elif x < 0.1:  # key twice: the last wins
            b = ld(1, b"first") + b
        elif x < 0.13:  # an unknown field
            b = b + uvarint(99 << 3) + b"\x07"
        elif x < 0.15:
            b = b""
        return b

    def attributes(self) -> list[bytes]:
        r = self.r
        pool = [self.attribute() for _ in range(r.randrange(0, 6))]
        if pool and r.random() < 0.2:
            pool.append(r.choice(pool))  # a duplicate key
        return pool

    def number_point(self, attrs: list[list[bytes]]) -> raw.NumberDataPoint:
        r = self.r
        dp = raw.NumberDataPoint(attributes=r.choice(attrs))
        dp.time_unix_nano = r.choice([T0, T0 + 1, T0 + r.randrange(10**12), 0, 2**64 - 1])
        if r.random() < 0.7:
            dp.start_time_unix_nano = T0 - 10**9
        k = r.randrange(10)
        if k < 4:
            dp.as_double = r.choice([0.0, -0.0, 1.5, 1e-300, math.nan, math.inf, -math.inf, 12345.678])
        elif k < 8:
            dp.as_int = r.choice([0, 1, -1, 2**63 - 1, -(2**63)])
        if r.random() < 0.1:
            dp.flags = r.choice([1, 2, 3])
        if r.random() < 0.1:
            ex = dp.exemplars.add(time_unix_nano=T0, as_double=1.0, span_id=b"12345678", trace_id=b"1" * 16)
            ex.filtered_attributes.add(key="e", value=raw.AnyValue(string_value="x"))
            if r.random() < 0.2:
                ex.filtered_attributes.add().MergeFromString(nested(30))  # parses at a point's depth
        if r.random() < 0.05:
            dp.MergeFromString(uvarint(98 << 3) + b"\x05")  # an unknown field
        return dp

    def number_bytes(self, dp: raw.NumberDataPoint) -> bytes:
        """A point's bytes: as senders write them mostly; its fields reordered, repeated, padded, at times."""
        r = self.r
        b = dp.SerializeToString()
        x = r.random()
        if x < 0.03:  # fields in another order
            fields = _wire_fields(b)
            r.shuffle(fields)
            b = b"".join(fields)
        elif x < 0.06:  # fields in reverse order: attributes before the time and the value
            b = b"".join(reversed(_wire_fields(b)))
        elif x < 0.08:  # a time after the attributes: the last wins
            b += b"\x19" + struct.pack("<Q", r.choice([0, T0 + 5, 2**64 - 1]))
        elif x < 0.10:  # a value after the attributes: the last wins (as_int after as_double: the oneof's)
            b += r.choice([b"\x21" + struct.pack("<d", 2.5), b"\x31" + struct.pack("<q", -7)])
        elif x < 0.11:  # a start time after the attributes: ignored, but not where it is read
            b += b"\x11" + struct.pack("<Q", 5)
        elif x < 0.13:  # flags written twice, or long, or zero
            b += r.choice([b"\x40\x00", b"\x40\x01", b"\x40\x81\x00", b"\x40\x80\x80\x00"])
        elif x < 0.14:  # an unknown field before the attributes
            b = b"\xc0\x06\x01" + b
        elif x < 0.15:  # the time twice, first
            b = b"\x19" + struct.pack("<Q", 3) + b
        elif x < 0.16:  # empty
            b = b""
        elif x < 0.17:  # the start time alone
            b = b"\x11" + struct.pack("<Q", T0)
        elif x < 0.18:  # a varint where a fixed64 is declared: an unknown field, the time unset
            b = b"\x18\x05" + b
        return b

    def histogram_point(self, attrs: list[list[bytes]]) -> raw.HistogramDataPoint:
        r = self.r
        dp = raw.HistogramDataPoint(time_unix_nano=T0, count=r.randrange(100))
        for a in r.choice(attrs):
            dp.attributes.add().MergeFromString(a)
        bounds = sorted(r.sample([0.1, 1.0, 2.5, 10.0, 1e9], r.randrange(4)))
        dp.explicit_bounds.extend(bounds)
        if r.random() < 0.8:
            dp.bucket_counts.extend([r.randrange(10) for _ in range(len(bounds) + 1)])
        if r.random() < 0.7:
            dp.sum = r.choice([1.5, math.nan, 0.0])
        if r.random() < 0.1:
            dp.flags = 1
        return dp

    def exp_point(self, attrs: list[list[bytes]]) -> raw.ExponentialHistogramDataPoint:
        r = self.r
        dp = raw.ExponentialHistogramDataPoint(time_unix_nano=T0, count=r.randrange(100), scale=r.randrange(-2, 4))
        for a in r.choice(attrs):
            dp.attributes.add().MergeFromString(a)
        dp.positive.offset = r.randrange(-3, 3)
        dp.positive.bucket_counts.extend([r.randrange(5) for _ in range(r.randrange(4))])
        dp.negative.bucket_counts.extend([r.randrange(5) for _ in range(r.randrange(2))])
        dp.zero_count = r.randrange(2)
        if r.random() < 0.5:
            dp.sum = 2.5
        return dp

    def summary_point(self, attrs: list[list[bytes]]) -> raw.SummaryDataPoint:
        r = self.r
        dp = raw.SummaryDataPoint(time_unix_nano=T0, count=r.randrange(100), sum=r.choice([1.0, math.inf]))
        for a in r.choice(attrs):
            dp.attributes.add().MergeFromString(a)
        for q in r.sample([0.0, 0.5, 0.99, 1.0], r.randrange(3)):
            dp.quantile_values.add(quantile=q, value=q * 10)
        return dp

    def another_data_field(self, m: raw.Metric, attrs: list[list[bytes]]) -> None:
        r = self.r
        field = r.choice([5, 7, 9, 11])
        if field in (5, 7):
            dp = self.number_point(attrs)
            x = r.random()
            if x < 0.4:
                dp.attributes.extend(r.choice(BAD_ATTRIBUTES))
            b = self.number_bytes(dp)
            if x > 0.7:
                b = r.choice(BAD_POINTS)(b)
            body = raw.Gauge(data_points=[b]).SerializeToString()  # a Sum's data points are its field 1 too
        elif field == 9:
            body = raw.Histogram(data_points=[self.histogram_point(attrs)]).SerializeToString()
        else:
            body = raw.Summary(data_points=[self.summary_point(attrs)]).SerializeToString()
        m.MergeFromString(ld(field, body))

    def request(self, attrs: list[list[bytes]], bad: list[bytes] | None = None,
                bad_point: Callable[[bytes], bytes] | None = None) -> raw.ExportMetricsServiceRequest:
        """A request of every kind of data; `bad`: one gauge or sum point gets these attributes;
        `bad_point`: the bytes of one are changed by it (not to parse)."""
        r = self.r
        req = raw.ExportMetricsServiceRequest()
        points: list[tuple[Any, list[raw.NumberDataPoint]]] = []
        for _ in range(r.randrange(1, 4)):
            rm = req.resource_metrics.add()
            for _ in range(r.randrange(4)):
                rm.resource.attributes.add().MergeFromString(
                    r.choice([ld(1, b"service.name") + ld(2, ld(1, b"api")),
                              ld(1, b"service.namespace") + ld(2, ld(1, b"shop")),
                              ld(1, b"service.instance.id") + ld(2, ld(1, b"api-0")),
                              ld(1, b"adxmon_database") + ld(2, ld(1, b"Other")),
                              ld(1, b"region") + ld(2, ld(1, b"eu")),
                              ld(1, b"host") + ld(2, ld(1, b"h1")),
                              self.kv().SerializeToString()]))
            for _ in range(r.randrange(1, 3)):
                sm = rm.scope_metrics.add()
                sm.scope.name = "lib"
                for _ in range(r.randrange(1, 5)):
                    m = sm.metrics.add(name=r.choice(["cpu", "cpu.usage", "cpu_usage", "requests", "lat", "x-y", "",
                                                      "n" * 130, "ünï"]))
                    m.unit = r.choice(["s", "s", "", "ünï"])
                    m.description = r.choice(["", "", "", "d", "x" * 200])
                    k = r.randrange(10)
                    if k < 4:
                        points.append((m.gauge.data_points, [self.number_point(attrs) for _ in range(r.randrange(6))]))
                        m.gauge.SetInParent()
                    elif k < 7:
                        points.append((m.sum.data_points, [self.number_point(attrs) for _ in range(r.randrange(6))]))
                        m.sum.aggregation_temporality = r.choice([1, 2])
                        m.sum.is_monotonic = True
                        m.sum.SetInParent()
                    elif k == 7:
                        m.histogram.data_points.extend([self.histogram_point(attrs) for _ in range(r.randrange(3))])
                        m.histogram.SetInParent()
                    elif k == 8:
                        m.exponential_histogram.data_points.extend(
                            [self.exp_point(attrs) for _ in range(r.randrange(3))])
                        m.exponential_histogram.SetInParent()
                    else:
                        m.summary.data_points.extend([self.summary_point(attrs) for _ in range(r.randrange(3))])
                        m.summary.SetInParent()
                    if r.random() < 0.03:  # a second data field, after: the parse keeps the last
                        self.another_data_field(m, attrs)
                    if k < 7 and r.random() < 0.05:  # an unknown field in the gauge or sum (a group: nested
                        n = r.choice([1, 1, 97])      # 97 deep, it parses alone but not in a request)
                        (m.gauge if k < 4 else m.sum).MergeFromString(b"\x7b" * n + b"\x7c" * n)
        every = [(i, j) for i, (_, dps) in enumerate(points) for j in range(len(dps))]
        if bad is not None and every:
            i, j = r.choice(every)
            points[i][1][j].attributes.extend(bad)
        broken = r.choice(every) if bad_point is not None and every else None
        for i, (field, dps) in enumerate(points):
            for j, dp in enumerate(dps):
                b = self.number_bytes(dp)
                if broken == (i, j):
                    assert bad_point is not None
                    b = bad_point(b)
                field.append(b)
        return req


def _wire_fields(b: bytes) -> list[bytes]:
    """A message's bytes as its fields' (tag, then varint, 8 or 4 bytes or length-delimited; a
    group's start and end tags each alone)."""
    fields = []
    i = 0
    while i < len(b):
        start = i
        while b[i] >= 0x80:
            i += 1
        wire = b[start] & 7
        i += 1
        if wire == 0:
            while b[i] >= 0x80:
                i += 1
            i += 1
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire in (3, 4):  # a group's start or end: a field of its own here
            pass
        else:
            assert wire == 2
            n = shift = 0
            while True:
                byte = b[i]
                i += 1
                n |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            i += n
        fields.append(b[start:i])
    return fields


BAD_POINTS: list[Callable[[bytes], bytes]] = [
    lambda b: b[:-1] if b else b"\x19",  # cut short (the last field, or a time without its 8 bytes)
    lambda b: b[:10],  # cut in its value or attributes
    lambda b: b + b"\x0f",  # wire type 7
    lambda b: b + b"\x3a\x05ab",  # an attribute longer than the point
    lambda b: b"\x19\x01\x02" + b,  # a time cut short, at its start
    lambda b: b + ld(7, ld(1, b"\xff\xfe")),  # an attribute whose key is not UTF-8
    lambda b: b + ld(5, ld(7, ld(1, b"\xc3"))),  # an exemplar's attribute whose key is not UTF-8
    lambda b: b + ld(5, ld(7, nested(31))),  # an exemplar's attribute nested deeper than a request takes
    lambda b: b + b"\x40",  # flags without their varint
    lambda b: b + b"\x40\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
]


BAD_ATTRIBUTES = [
    [b"\x0a\x05ab"],  # truncated key
    [ld(1, b"\xff\xfe")],  # key not UTF-8
    [ld(1, b"k") + ld(2, ld(1, b"\xc3"))],  # string value not UTF-8
    [ld(1, b"k") + ld(2, b"\x08")],  # a varint cut short
    [b"\x0f"],  # wire type 7
    [nested(32)],  # parses alone, not at a point's depth
    [nested(31)],  # parses at a point's depth
    [ld(1, b"ok"), b"\xff"],
]


# -- converting both ways ----------------------------------------------------------------------

Outcome = tuple[Any, ...]


def _outcome(result: ConvertResult) -> Outcome:
    tables = {k: (b.database, b.table, bytes(b.data), b.count) for k, b in result.tables.items()}
    return tables, result.accepted, result.rejected, result.reasons


def _refused(e: Exception) -> Outcome:
    return ("refused", type(e).__name__, str(e))


def reference(conv: MetricsConverter, data: bytes, piece_bytes: int = 0) -> Outcome:
    """The converter as it was, given the request (or its pieces) parsed whole, as Ingest did."""
    return new(conv, data, piece_bytes, _FullKind)


class _FullKind:
    """The kind as it was: the whole parse."""
    message = Full
    sent = ""


def new(conv: MetricsConverter, data: bytes, piece_bytes: int = 0, kind: Any = OTLP_METRICS) -> Outcome:
    """`conv` given `data` as Ingest gives it (or its pieces of about `piece_bytes`), parsed as `kind`."""
    try:
        if piece_bytes:
            try:
                parts = list(pieces(data, OTLP_METRICS_LEVELS, piece_bytes))
            except Unsplittable:
                parts = [data]
            return _outcome(conv.convert_otlp_pieces(_parse(kind, p) for p in parts))
        return _outcome(conv.convert_otlp(_parse(kind, data)))
    except DecodeError as e:
        return _refused(e)


def converters(cfg: MetricsConfig, max_series: int = 100_000) -> tuple[MetricsConverter, MetricsConverter]:
    cfg = MetricsConfig(**{**cfg.__dict__, "max_cached_series": max_series})
    old = MetricsConverter(cfg)
    old._otlp = otlpmetrics_before.OtlpMetrics(old._series, cfg.promote_resource_attributes,  # type: ignore[assignment]
                                               cfg.max_cached_series)
    return old, MetricsConverter(cfg)


CONFIGS = [
    MetricsConfig(),
    MetricsConfig(promote_resource_attributes=("region", "host"), lift_labels=("host", "a"),
                  allowed_databases=frozenset({"Metrics"})),
    MetricsConfig(drop_metrics=("^lat",), drop_labels=("^requests$=a_b",), add_labels=("dc=x",)),
]


def _ld_payload(field: bytes) -> tuple[bytes, bytes]:
    """A length-delimited field's (tag and length, payload)."""
    i = 0
    while field[i] >= 0x80:
        i += 1
    i += 1
    while field[i] >= 0x80:
        i += 1
    i += 1
    return field[:i], field[i:]


def _odd_metric(r: random.Random, mb: bytes) -> bytes:
    """A metric's bytes (as Shapes.request made them) laid out otherwise at times, or malformed."""
    x = r.random()
    fields = _wire_fields(mb)
    if x < 0.02:  # an unknown field, after its data
        return mb + b"\xf8\x07\x01"
    if x < 0.04:  # metadata, after its data
        return mb + ld(12, ld(1, b"m") + ld(2, ld(1, b"v")))
    if x < 0.06:  # its fields in reverse order (the name last)
        return b"".join(reversed(fields))
    if x < 0.08:  # a gauge's or sum's points and fields in reverse order (a sum's temporality first)
        out = []
        for f in fields:
            if f[0] in (0x2A, 0x3A):
                _, body = _ld_payload(f)
                f = ld(f[0] >> 3, b"".join(reversed(_wire_fields(body))))
            out.append(f)
        return b"".join(out)
    if x < 0.09:  # the name twice: the last wins
        return ld(1, b"first") + mb
    if x < 0.095:  # a name that is not UTF-8: refused
        return ld(1, b"\xff\xfe") + b"".join(f for f in fields if f[0] != 0x0A)
    if x < 0.1:  # a description that is not UTF-8: refused
        return b"".join(f for f in fields if f[0] == 0x0A) + ld(2, b"\xc3") + b"".join(
            f for f in fields if f[0] not in (0x0A, 0x12))
    if x < 0.105:  # a gauge's or sum's length longer than the metric: refused
        return mb[:-1] if any(f[0] in (0x2A, 0x3A) for f in fields) else mb
    if x < 0.11:  # a gauge's or sum's point length written in 3 bytes (not as senders write it)
        out = []
        for f in fields:
            if f[0] in (0x2A, 0x3A):
                _, body = _ld_payload(f)
                inner = []
                for g in _wire_fields(body):
                    if g[0] == 0x0A:
                        _, p = _ld_payload(g)
                        n = len(p)
                        g = b"\x0a" + bytes([n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14]) + p
                    inner.append(g)
                f = ld(f[0] >> 3, b"".join(inner))
            out.append(f)
        return b"".join(out)
    return mb


def _odd_metrics(r: random.Random, data: bytes) -> bytes:
    req = raw.ExportMetricsServiceRequestOfBytes.FromString(data)
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for i, mb in enumerate(sm.metrics):
                sm.metrics[i] = _odd_metric(r, mb)
    return req.SerializeToString()


def stream(seed: int, n: int) -> Iterator[bytes]:
    """`n` requests over a few dozen attribute sets (so that series repeat), some malformed."""
    s = Shapes(seed)
    attrs = [s.attributes() for _ in range(30)]
    for i in range(n):
        bad = s.r.choice(BAD_ATTRIBUTES) if i % 7 == 3 else None
        bad_point = s.r.choice(BAD_POINTS) if i % 11 == 5 else None
        data = _odd_metrics(s.r, s.request(attrs, bad, bad_point).SerializeToString())
        if i % 23 == 11:  # a truncated request
            data = data[: len(data) * 2 // 3]
        yield data


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "promote-lift-allowed", "drop"])
@pytest.mark.parametrize("seed", range(4))
def test_same_outcome_whole_and_in_pieces_cold_and_warm(cfg: MetricsConfig, seed: int) -> None:
    old, whole = converters(cfg)
    _, in_pieces = converters(cfg)
    _, small = converters(cfg, max_series=40)  # turns often: series cold again
    refused = 0
    for i, data in enumerate(stream(seed, 150)):
        want = reference(old, data)
        refused += want[0] == "refused"
        size = 300 + 97 * (i % 5)
        want_pieces = reference(old, data, size)
        assert want_pieces[0] == "refused" if want[0] == "refused" else want_pieces == want
        for _ in range(2):  # cold, then warm
            assert new(whole, data) == want, i
            assert new(in_pieces, data, size) == want_pieces, i
            assert new(small, data) == want, i
        if i % 40 == 39:
            old.turn()
            whole.turn()
    assert 10 < refused < 75


def test_attributes_a_message_held_that_bytes_cannot_are_not_cached() -> None:
    """A cached series stands for attribute bytes that parse where a request's parse parses them. A
    message given whole (OTLP/JSON) may hold attributes nested deeper than that parse takes: it is
    converted as before, and its series is not cached, so the same bytes sent are still refused."""
    old, conv = converters(MetricsConfig())
    deep = nested(32)
    common_pb2.KeyValue.FromString(deep)  # parses alone
    msg = Full()
    m = msg.resource_metrics.add().scope_metrics.add().metrics.add(name="deep")
    dp = m.gauge.data_points.add(time_unix_nano=T0, as_double=1.0)
    dp.attributes.add(key="a", value=common_pb2.AnyValue(string_value="b"))
    dp.attributes.add().MergeFromString(deep)
    data = msg.SerializeToString()
    want = reference(old, data)
    assert want[0] == "refused" and "MaxDepth" in want[2]
    rows = _outcome(old.convert_otlp(msg))
    assert rows[1] == 1
    for _ in range(2):
        assert _outcome(conv.convert_otlp(msg)) == rows
        assert new(conv, data) == want
        assert new(conv, data, piece_bytes=10) == reference(old, data, piece_bytes=10)


@pytest.mark.parametrize("seed", range(3))
def test_messages_given_whole_as_the_json_path_does(seed: int) -> None:
    """OTLP/JSON gives the converter messages: the rows of the old converter given them."""
    old, conv = converters(MetricsConfig())
    for i, data in enumerate(stream(100 + seed, 60)):
        try:
            msg = Full.FromString(data)
        except ProtobufDecodeError:
            continue
        given = [msg]
        with contextlib.suppress(json_format.ParseError):  # nested deeper than OTLP/JSON takes
            given.append(json_format.ParseDict(json_format.MessageToDict(msg), Full()))
        for m in given:
            assert _outcome(conv.convert_otlp(m)) == _outcome(old.convert_otlp(m)), i


def test_http_protobuf_decode_reads_raw_and_refuses_as_before() -> None:
    """The HTTP port's decode and then the converter (as Ingest runs them) against the whole parse."""
    old, conv = converters(MetricsConfig())
    for i, data in enumerate(stream(5, 80)):
        want = reference(old, data)
        try:
            msg = decode_otlp(gzip.compress(data), PROTOBUF, "gzip", Full, 1 << 30)
            assert isinstance(msg, Parsed) and msg.data == data
            got = _outcome(conv.convert_otlp(msg))
        except DecodeError as e:
            got = _refused(e)
        assert got == want, i


def _bench_shape() -> Callable[[], bytes]:
    from tests.bench.bench_node import metrics_request
    return metrics_request


def test_bench_request_warm_and_every_series_new() -> None:
    """bench_node's request (1,000 gauge points, 8 attributes), then its points all new, then warm."""
    old, conv = converters(MetricsConfig())
    make = _bench_shape()
    for seed in (0, 1, 1, 2):
        data = make(seed)
        assert new(conv, data) == reference(old, data)
    req = Full.FromString(make(0))
    for dp in req.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points:
        dp.attributes[0].value.string_value += "-new"
    data = req.SerializeToString()
    for _ in range(2):
        assert new(conv, data) == reference(old, data)


def test_a_double_in_a_point_is_read_as_before() -> None:
    """Sanity of the fixture: a point's value bytes, as struct packs them."""
    dp = raw.NumberDataPoint(as_double=1.5)
    assert dp.SerializeToString() == b"\x21" + struct.pack("<d", 1.5)


def test_a_metric_with_several_data_fields_is_read_from_the_whole_parse() -> None:
    """The parse of a Metric keeps the last of its data fields, and parses (checks) the others: a
    gauge's point with attributes that do not parse refuses the request even when a sum follows it."""
    old, conv = converters(MetricsConfig())
    s = Shapes(3)
    for bad in (None, [ld(1, b"\xff\xfe")]):
        for first, then in ((5, 7), (7, 5), (5, 9), (7, 11), (5, 5)):
            req = raw.ExportMetricsServiceRequest()
            m = req.resource_metrics.add().scope_metrics.add().metrics.add(name="m")
            for field in (first, then):
                dp = raw.NumberDataPoint(time_unix_nano=T0, as_int=field)
                dp.attributes.append(common_pb2.KeyValue(key="f", value=common_pb2.AnyValue(int_value=field))
                                     .SerializeToString())
                if field == first and bad:
                    dp.attributes.extend(bad)
                if field in (5, 7):
                    body = raw.Gauge(data_points=[dp.SerializeToString()]).SerializeToString()
                elif field == 9:
                    body = raw.Histogram(data_points=[s.histogram_point([[]])]).SerializeToString()
                else:
                    body = raw.Summary(data_points=[s.summary_point([[]])]).SerializeToString()
                m.MergeFromString(ld(field, body))
            data = req.SerializeToString()  # both fields, in field-number order (5, 5: one, merged)
            want = reference(old, data)
            assert (want[0] == "refused") == (bad is not None), (first, then)
            for _ in range(2):
                assert new(conv, data) == want
                assert new(conv, data, piece_bytes=20) == reference(old, data, piece_bytes=20)


def _point_cases() -> list[bytes]:
    """A NumberDataPoint's bytes in each layout the converter reads from the bytes or parses."""
    kv = common_pb2.KeyValue(key="k", value=common_pb2.AnyValue(string_value="v")).SerializeToString()
    attrs = ld(7, kv)
    start, time = b"\x11" + struct.pack("<Q", T0 - 1), b"\x19" + struct.pack("<Q", T0)
    values = [b"\x21" + struct.pack("<d", v) for v in (1.5, -0.0, math.nan, math.inf, -math.inf, 1e-300)]
    values += [b"\x31" + struct.pack("<q", v) for v in (0, -1, 2**63 - 1, -(2**63))]
    exemplar = ld(5, raw.Exemplar(time_unix_nano=T0, as_double=2.0).SerializeToString())
    cases = [start + time + v + attrs for v in values]
    cases += [
        time + values[0] + attrs,  # no start time
        values[0] + attrs,  # no time
        start + values[0] + attrs,  # a start time, no time
        start + time + attrs,  # no value
        time,  # the time alone
        b"",  # empty
        attrs,  # attributes alone
        start + time + values[0],  # no attributes
        start + time + values[0] + attrs + b"\x40\x01",  # no recorded value
        start + time + values[0] + attrs + b"\x40\x02",  # other flags
        start + time + values[0] + attrs + b"\x40\x81\x00",  # flags in a longer varint
        start + time + values[0] + exemplar + attrs,  # an exemplar
        start + time + values[0] + exemplar + values[6] + attrs,  # as_double, then as_int: the oneof's last
        attrs + start + time + values[0],  # attributes first
        values[0] + time + attrs,  # the value before the time
        start + time + values[0] + attrs + b"\x19" + struct.pack("<Q", T0 + 7),  # the time again, after
        start + time + values[0] + attrs + values[7],  # a value again, after
        time + time + values[0] + attrs,  # the time twice
        start + time + values[0] + values[1] + attrs,  # the value twice
        start + time + values[0] + attrs + b"\xc0\x06\x01",  # an unknown field
        b"\x18\x05" + start + time + values[0] + attrs,  # field 3 as a varint: an unknown field
    ]
    bad = [
        start + time + values[0][:5],  # the value cut short
        time[:4],  # the time cut short
        start + time + values[0] + attrs[:-1],  # an attribute cut short
        start + time + values[0] + attrs + b"\x40",  # flags without their varint
        start + time + values[0] + ld(7, ld(1, b"\xff")),  # a key that is not UTF-8
        start + time + values[0] + ld(5, b"\x0f"),  # an exemplar that does not parse
        start + time + values[0] + attrs + b"\x0f",  # wire type 7
    ]
    return cases + bad


@pytest.mark.parametrize("kind", [5, 7])
def test_each_layout_of_a_point_reads_as_the_whole_parse(kind: int) -> None:
    """Every layout of a point, alone in a gauge or sum and with a point that is read from its bytes,
    cold and warm, gives what the whole parse gave (rows, counts, reasons, or the refusal)."""
    old, conv = converters(MetricsConfig())
    plain = _point_cases()[0]
    for i, point in enumerate(_point_cases()):
        for points in ([point], [plain, point], [point, plain, point]):
            body = b"".join(ld(1, p) for p in points) + (b"\x10\x02\x18\x01" if kind == 7 else b"")
            metric = ld(1, b"m") + ld(kind, body)
            data = ld(1, ld(2, ld(2, metric)))
            want = reference(old, data)
            for _ in range(2):
                assert new(conv, data) == want, (i, points)
