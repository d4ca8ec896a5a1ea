"""Remote write read from each series' wire bytes (metrics._remote_write): whatever the series
looks like on the wire, the rows, refusals and reasons are those of the full TimeSeries parse that
converted every series before (`MetricsConverter._parsed_series`, forced for every series here),
from a cold and a warm cache, given as a RawWriteRequest or a WriteRequest."""

from __future__ import annotations

import math
import struct

import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError
from hypothesis import example, given, settings
from hypothesis import strategies as st

from node.errors import DecodeError
from node.gen.prometheus.remote_pb2 import Exemplar, Label, Sample, TimeSeries, WriteRequest
from node.gen.prometheus.remote_raw_pb2 import RawWriteRequest
from node.rows import metrics
from node.rows.batch import KIND_METRIC, ConvertResult, ResultBuilder
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.wire import REMOTE_WRITE_LEVELS, pieces, uvarint
from tests.rows.build import T_MS


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return uvarint(number << 3 | 2) + uvarint(len(payload)) + payload


def varint_field(number: int, value: int) -> bytes:
    return uvarint(number << 3) + uvarint(value & (1 << 64) - 1)


def label(name: str, value: str) -> bytes:
    return field(1, Label(name=name, value=value).SerializeToString())


def labels(**pairs: str) -> bytes:
    return b"".join(label(k, v) for k, v in sorted(pairs.items()))


def sample(value: float = 0.5, t: int = T_MS) -> bytes:
    return field(2, Sample(value=value, timestamp=t).SerializeToString())


def raw_sample(payload: bytes) -> bytes:
    return field(2, payload)


def series_body(*series: bytes) -> bytes:
    """A WriteRequest on the wire, of serialized TimeSeries."""
    return b"".join(field(1, s) for s in series)


def full_parse(conv: MetricsConverter, body: bytes) -> ConvertResult:
    """Every series through the full TimeSeries parse: the conversion before the raw path."""
    out = ResultBuilder(KIND_METRIC, conv.schema)
    for ts in WriteRequest.FromString(body).timeseries:
        conv._parsed_series(ts, out)
    return out.result()


def same(a: ConvertResult, b: ConvertResult) -> None:
    """The same rows, counts and refusals per table. The order of the tables is not compared: a
    request converted in pieces meets its tables in another order than a whole parse when the
    first point of a table is refused (its row list is made at the first point kept), and nothing
    reads that order (the WAL takes a request's tables in its own)."""
    assert (a.accepted, a.rejected, a.reasons) == (b.accepted, b.rejected, b.reasons)
    assert {k: (bytes(v.data), v.count) for k, v in a.tables.items()} == \
        {k: (bytes(v.data), v.count) for k, v in b.tables.items()}


CFG = MetricsConfig(allowed_databases=frozenset({"Metrics", "Other"}), drop_metrics=("^dropped_",),
                    lift_labels=("pod",))
POD = {"__name__": "up", "job": "api", "pod": "api-0", "namespace": "shop"}
LONG = {"__name__": "up", "job": "api", "pod": "p" * 300}  # a label longer than 127 bytes
UNKNOWN_INT = varint_field(99, 7)  # a field no TimeSeries, Label or Sample declares

UNUSUAL: dict[str, bytes] = {
    # what Prometheus sends: the fast shapes
    "value and timestamp": labels(**POD) + sample(0.5),
    "zero value": labels(**POD, le="0") + sample(0.0),
    "negative zero": labels(**POD, le="1") + sample(-0.0),
    "nan": labels(**POD, le="2") + sample(math.nan),
    "infinity": labels(**POD, le="3") + sample(-math.inf),
    "long label": labels(**LONG) + sample(2.5),
    "another database": labels(**POD, adxmon_database="Other") + sample(1.0),
    # refused or dropped, in the fast shapes
    "no name": labels(job="api") + sample(1.0),
    "no sink": labels(**POD, adxmon_database="Nowhere") + sample(1.0),
    "bad name": labels(__name__="___") + sample(1.0),
    "dropped": labels(__name__="dropped_total", job="api") + sample(1.0),
    "dropped, zero": labels(__name__="dropped_other", job="api") + sample(0.0),
    # several samples
    "several samples": labels(**POD, le="4") + sample(1.0) + sample(2.0, T_MS + 1000) + sample(0.0, T_MS + 2000),
    "several, refused": labels(job="x") + sample(1.0) + sample(2.0, T_MS + 1),
    # exemplars and native histograms (field 4, which remote.proto does not declare)
    "exemplar": labels(**POD, le="5") + sample(3.0)
    + field(3, Exemplar(labels=[Label(name="trace_id", value="abc")], value=9.0, timestamp=T_MS).SerializeToString()),
    "exemplar only": labels(**POD, le="6") + field(3, Exemplar(value=1.0).SerializeToString()),
    "histogram": labels(**POD, le="7") + sample(4.0) + field(4, varint_field(1, 5) + varint_field(4, 3)),
    "histogram only": labels(**POD, le="8") + field(4, varint_field(1, 5)),
    # fields out of their usual order, and unknown fields
    "sample first": sample(5.0) + labels(**POD, le="9"),
    "labels split": label("__name__", "up") + sample(6.0) + label("pod", "api-0"),
    "labels out of order": label("pod", "api-1") + label("__name__", "up") + sample(6.5),
    "unknown series field": labels(**POD, le="10") + sample(7.0) + UNKNOWN_INT,
    "unknown field first": UNKNOWN_INT + labels(**POD, le="11") + sample(7.5),
    "unknown label field": field(1, Label(name="__name__", value="up").SerializeToString() + UNKNOWN_INT)
    + label("pod", "api-2") + sample(8.0),
    "label value first": field(1, b"\x12\x02up\x0a\x08__name__") + label("pod", "api-3") + sample(8.5),
    "empty label": field(1, b"") + labels(**POD, le="12") + sample(9.0),
    # samples the fast path does not read
    "unknown sample field": labels(**POD, le="13") + raw_sample(Sample(value=1.0, timestamp=T_MS).SerializeToString()
                                                                + UNKNOWN_INT),
    "timestamp first": labels(**POD, le="14") + raw_sample(varint_field(2, T_MS) + b"\x09" + struct.pack("<d", 2.0)),
    "no timestamp": labels(**POD, le="15") + raw_sample(b"\x09" + struct.pack("<d", 2.0)),
    "empty sample": labels(**POD, le="16") + raw_sample(b""),
    "negative timestamp": labels(**POD, le="17") + sample(1.0, -1000),
    "1970": labels(**POD, le="18") + sample(1.0, 1000),
    "out of range": labels(**POD, le="19") + sample(1.0, 10**17),
    "out of range, zero": labels(**POD, le="20") + sample(0.0, 10**17),
    "overlong timestamp": labels(**POD, le="21") + raw_sample(b"\x09" + struct.pack("<d", 3.0)
                                                              + b"\x10\xe8\x87\x80\x80\x80\x00"),  # 1000 in 6 bytes
    "timestamp and more in 6 bytes": labels(**POD, le="22") + raw_sample(b"\x09" + struct.pack("<d", 3.0)
                                                                         + b"\x10\xe8\x07\x18\x01\x20\x02"),
    "unusual sample, usual one": labels(**POD, le="27") + raw_sample(b"\x09" + struct.pack("<d", 2.0)) + sample(3.0),
    "unusual sample between": labels(**POD, le="28") + sample(1.0) + sample(2.0, 1000) + sample(3.0),
    "value twice": labels(**POD, le="23") + raw_sample(b"\x09" + struct.pack("<d", 1.0) + b"\x09"
                                                       + struct.pack("<d", 4.0) + b"\x10\x01"),
    # no samples at all, and bytes that only look like a sample
    "empty series": b"",
    "label ending like a sample": labels(**POD, le="24")
    + field(1, Label(name="z", value="a\x12\x10\x09" + "\x01" * 8 + "\x10" + "é日\x01").SerializeToString()),
    "label ending like a zero sample": labels(**POD, le="25")
    + field(1, Label(name="z", value="a\x12\x07\x10" + "é日\x01").SerializeToString()),
    "labels only": labels(**POD, le="26"),
    "label ending like a sample, then one": labels(**POD, le="29")
    + field(1, Label(name="z", value="a\x12\x07\x10" + "é日\x01").SerializeToString()) + sample(2.0),
}


def converted(conv: MetricsConverter, body: bytes, as_raw: bool) -> ConvertResult:
    msg = RawWriteRequest if as_raw else WriteRequest
    return conv.convert_remote_write_pieces((msg.FromString(body),))


@pytest.mark.parametrize("as_raw", [True, False], ids=["RawWriteRequest", "WriteRequest"])
@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_each_shape_converts_as_the_full_parse_does(name: str, as_raw: bool) -> None:
    body = series_body(UNUSUAL[name], UNUSUAL["value and timestamp"], UNUSUAL[name])
    TimeSeries.FromString(UNUSUAL[name])  # each is a valid series
    conv, reference = MetricsConverter(CFG), MetricsConverter(CFG)
    for _ in range(3):  # cold, then warm
        same(converted(conv, body, as_raw), full_parse(reference, body))


@pytest.mark.parametrize("whole_series", [metrics.WHOLE_SERIES, 0], ids=["whole", "series by series"])
def test_a_request_of_every_shape_converts_as_the_full_parse_does(monkeypatch: pytest.MonkeyPatch,
                                                                   whole_series: int) -> None:
    monkeypatch.setattr(metrics, "WHOLE_SERIES", whole_series)
    body = series_body(*UNUSUAL.values(), *reversed(UNUSUAL.values()))
    for as_raw in (True, False):
        conv, reference = MetricsConverter(CFG), MetricsConverter(CFG)
        for _ in range(2):
            same(converted(conv, body, as_raw), full_parse(reference, body))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(sorted(UNUSUAL)), min_size=1, max_size=12), st.booleans(),
       st.sampled_from([40, 300, 1 << 20]))
@example(["out of range", "another database", "1970"], False, 40)  # tables met in another order
def test_any_mix_in_any_pieces_converts_as_the_full_parse_does(names: list[str], as_raw: bool, size: int) -> None:
    body = series_body(*(UNUSUAL[n] for n in names))
    msg = RawWriteRequest if as_raw else WriteRequest
    conv, reference = MetricsConverter(CFG), MetricsConverter(CFG)
    for _ in range(2):
        got = conv.convert_remote_write_pieces(msg.FromString(p) for p in pieces(body, REMOTE_WRITE_LEVELS, size))
        same(got, full_parse(reference, body))


def test_the_cache_key_is_the_label_bytes_as_they_came() -> None:
    """A series seen in the fast shape, then with an exemplar (parsed), then in the fast shape
    again, is encoded once: both paths key it by its label bytes."""
    conv = MetricsConverter()
    plain = series_body(labels(**POD) + sample(1.0))
    with_exemplar = series_body(labels(**POD) + sample(1.0) + field(3, Exemplar(value=1.0).SerializeToString()))
    for body in (plain, with_exemplar, plain):
        assert conv.convert_remote_write(RawWriteRequest.FromString(body)).accepted == 1
    assert len(conv._remote.young) == 1


@pytest.mark.parametrize("series", [
    label("__name__", "up") + field(1, b"\x0a\x02\xff\xfe") + sample(1.0),  # bad UTF-8, fast shape
    field(1, b"\x0a\x02\xff\xfe") + sample(1.0) + sample(2.0),  # bad UTF-8, parsed
    label("__name__", "up") + b"\x0a\x05ab" + sample(1.0),  # a label that runs into the sample
    label("__name__", "up") + raw_sample(b"\x09" + b"\x00" * 8 + b"\x10" + b"\xff" * 6),  # a varint cut short
])
def test_a_series_that_does_not_parse_is_a_decode_error(series: bytes) -> None:
    """As the full parse of the request refuses it; so also for a cached label set."""
    body = series_body(series)
    with pytest.raises(ProtobufDecodeError):
        WriteRequest.FromString(body)
    conv = MetricsConverter()
    conv.convert_remote_write(RawWriteRequest.FromString(series_body(label("__name__", "up") + sample(1.0))))
    with pytest.raises(DecodeError, match=r"malformed prometheus\.WriteRequest"):
        conv.convert_remote_write(RawWriteRequest.FromString(body))


def test_the_cache_stays_bounded() -> None:
    conv = MetricsConverter(MetricsConfig(max_cached_series=10))
    for i in range(5):
        body = series_body(*[labels(__name__="up", i=f"{i}-{j}") + sample(1.0) for j in range(8)])
        assert conv.convert_remote_write(RawWriteRequest.FromString(body)).accepted == 8
        assert len(conv._remote) <= 16  # turned before a request once over the bound


FAST = ("value and timestamp", "zero value", "negative zero", "nan", "infinity", "long label", "another database",
        "no name", "no sink", "bad name", "dropped", "dropped, zero", "several samples", "several, refused")


@pytest.mark.parametrize("as_raw", [True, False], ids=["RawWriteRequest", "WriteRequest"])
def test_what_prometheus_sends_is_read_without_the_full_parse(monkeypatch: pytest.MonkeyPatch, as_raw: bool) -> None:
    body = series_body(*(UNUSUAL[n] for n in FAST))
    expected = full_parse(MetricsConverter(CFG), body)

    def parsed(*_: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(MetricsConverter, "_parsed_series", parsed)
    conv = MetricsConverter(CFG)
    for _ in range(2):
        same(converted(conv, body, as_raw), expected)


def test_a_key_cached_from_a_parsed_series_never_vouches_for_other_bytes() -> None:
    """Every key is of bytes that parse as a series without samples. Cutting a parsed series'
    samples off its end (the key before) left here the labels, the start of the sample and no
    exemplar: bytes that another, malformed, series begins with, followed by what looks like a
    sample."""
    first = labels(**POD) + sample(struct.unpack("<d", b"\x00\x12\x00\x00\x00\x00\xf0\x3f")[0]) \
        + field(3, varint_field(3, 1))
    assert TimeSeries.FromString(first).SerializeToString()[:-18] == labels(**POD) + first[len(labels(**POD)):][:4]
    crafted = first[:len(labels(**POD)) + 4] + sample(struct.unpack("<d", b"\x00\x00\x00\x00\x10\x01\x18\x01")[0])
    with pytest.raises(ProtobufDecodeError):
        TimeSeries.FromString(crafted)
    conv = MetricsConverter()
    assert conv.convert_remote_write(RawWriteRequest.FromString(series_body(first))).accepted == 1
    with pytest.raises(DecodeError):
        conv.convert_remote_write(RawWriteRequest.FromString(series_body(crafted)))
