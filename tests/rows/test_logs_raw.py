"""OTLP logs read as ingestor.otlp_raw_logs (proto/opentelemetry_raw/logs_raw.proto: a record's
attributes left as their bytes) give what the whole parse gave, for every shape: the same rows, counts
and reasons, or the same refusal (DecodeError and its text). The reference is the converter as it was
(tests/rows/logs_before.py) given the request parsed whole; the converter under test is given it as
Ingest gives it (`_parse(OTLP_LOGS, ...)`), whole and in pieces, as a message (OTLP/JSON), cold and
warm."""

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
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from node.errors import DecodeError
from node.gen.opentelemetry_raw import logs_raw_pb2 as raw
from node.ingest import OTLP_LOGS, _parse
from node.receivers.decode import PROTOBUF, decode_otlp
from node.rows import logs
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.wire import OTLP_LOGS_LEVELS, Unsplittable, pieces, uvarint
from tests.rows import logs_before
from tests.rows.build import ld, nested

Full = logs_service_pb2.ExportLogsServiceRequest
T0 = 1_795_000_000_000_000_000


# -- the proto ---------------------------------------------------------------------------------

def _fields(d: Any) -> list[tuple[Any, ...]]:
    p = descriptor_pb2.DescriptorProto()
    d.CopyToProto(p)
    return sorted((f.name, f.number, f.label, f.type, f.type_name.rsplit(".", 1)[-1],
                   f.oneof_index if f.HasField("oneof_index") else None, f.proto3_optional, f.json_name)
                  for f in p.field)


def _reserved(d: Any) -> list[tuple[Any, ...]]:
    p = descriptor_pb2.DescriptorProto()
    d.CopyToProto(p)
    return [(r.start, r.end) for r in p.reserved_range] + [(n,) for n in p.reserved_name]


def test_raw_messages_are_the_originals_but_record_attributes() -> None:
    """Every message of the request, field for field (names, numbers, types, oneofs, reserved
    numbers), and its enums, as opentelemetry-proto declares them (an upgrade that adds a field fails
    here: copy it), but a LogRecord's attributes (bytes)."""
    originals = [
        *(common_pb2.DESCRIPTOR.message_types_by_name[n] for n in
          ("AnyValue", "ArrayValue", "KeyValueList", "KeyValue", "InstrumentationScope", "EntityRef")),
        resource_pb2.Resource.DESCRIPTOR,
        *(d for d in logs_pb2.DESCRIPTOR.message_types_by_name.values() if d.name != "LogsData"),
        Full.DESCRIPTOR,
    ]
    for d in originals:
        mine = raw.DESCRIPTOR.message_types_by_name[d.name]
        assert mine.full_name == "ingestor.otlp_raw_logs." + d.name
        want = _fields(d)
        if d.name == "LogRecord":
            want = [(*f[:3], 12, "", *f[5:]) if f[0] == "attributes" else f for f in want]  # 12: bytes
        assert _fields(mine) == want, d.full_name
        assert _reserved(mine) == _reserved(d), d.full_name
        assert not d.nested_types and not mine.nested_types
    assert len(raw.DESCRIPTOR.message_types_by_name) == len(originals)
    assert set(raw.DESCRIPTOR.enum_types_by_name) == set(logs_pb2.DESCRIPTOR.enum_types_by_name)
    for e in raw.DESCRIPTOR.enum_types_by_name:
        assert ([(v.name, v.number) for v in raw.DESCRIPTOR.enum_types_by_name[e].values]
                == [(v.name, v.number) for v in logs_pb2.DESCRIPTOR.enum_types_by_name[e].values])
    # the record's attributes are the one difference, and the wire is the same
    rec = logs_pb2.LogRecord(time_unix_nano=1, severity_text="x", body=common_pb2.AnyValue(int_value=3))
    rec.attributes.add(key="k", value=common_pb2.AnyValue(string_value="v"))
    assert raw.LogRecord.FromString(rec.SerializeToString()).attributes == [rec.attributes[0].SerializeToString()]
    assert raw.LogRecord.FromString(rec.SerializeToString()).SerializeToString() == rec.SerializeToString()


# -- requests of every shape -------------------------------------------------------------------



def _too_deep() -> int:
    """The least depth of `_nested` whose attribute a request's parse refuses (it parses alone)."""
    for depth in range(20, 40):
        rec = ld(6, nested(depth))
        data = ld(1, ld(2, ld(2, rec)))
        try:
            Full.FromString(data)
        except ProtobufDecodeError:
            common_pb2.KeyValue.FromString(nested(depth))
            return depth
    raise AssertionError("no depth refused")


TOO_DEEP = _too_deep()


def _wire_fields(b: bytes) -> list[bytes]:
    """A message's bytes as its fields' (tag, then varint, 8 bytes, 4 bytes or length-delimited)."""
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


BAD_RECORDS: list[Callable[[bytes], bytes]] = [
    lambda b: b[:-1] if b else b"\x09",  # cut short
    lambda b: b[:12],  # cut in a field
    lambda b: b + b"\x0f",  # wire type 7
    lambda b: b + b"\x32\x05ab",  # an attribute longer than the record
    lambda b: b + ld(6, ld(1, b"\xff\xfe")),  # an attribute whose key is not UTF-8
    lambda b: b + ld(6, ld(1, b"k") + ld(2, ld(1, b"\xed\xa0\x80"))),  # a value not UTF-8 (a surrogate)
    lambda b: b + ld(6, ld(1, b"k") + ld(2, b"\x18")),  # an int value without its varint
    lambda b: b + ld(6, nested(TOO_DEEP)),  # an attribute nested deeper than a request takes
    lambda b: b + ld(6, b"\x0f"),  # an attribute with wire type 7
    lambda b: b + ld(3, b"\xc3"),  # severity text not UTF-8
    lambda b: b + ld(12, b"\xc0\x80"),  # event name not UTF-8 (overlong)
    lambda b: b + ld(5, ld(1, b"\xff")),  # a string body not UTF-8
    lambda b: b + ld(5, ld(6, ld(1, nested(TOO_DEEP)))),  # a body nested deeper than a request takes
    lambda b: b + b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
    lambda b: b + b"\x45\x01",  # flags cut short
]


class Shapes:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def any_value(self, depth: int = 0) -> common_pb2.AnyValue:
        r = self.r
        k = r.randrange(12 if depth < 2 else 8)
        v = common_pb2.AnyValue()
        if k == 0:
            v.string_value = r.choice(["", "a", "v1", "ünï", "x" * 30, "with,comma \"quote\"\n", "\0\x1f\\", "y" * 300])
        elif k == 1:
            v.bool_value = r.random() < 0.5
        elif k == 2:
            v.int_value = r.choice([0, 1, -1, 200, 2**63 - 1, -(2**63)])
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
        if self.r.random() < 0.1:
            return self.r.choice(["kusto.table", "kusto.database", "kusto.other", "kusto."])
        return self.r.choice(["a", "b", "a.b", "", "service.name", "http.route", "ünï", "k" * 140, "\0kusto"])

    def kv(self, depth: int = 0) -> common_pb2.KeyValue:
        key = self.key()
        r = self.r
        if key in ("kusto.table", "kusto.database") and r.random() < 0.7:
            value = common_pb2.AnyValue(string_value=r.choice(["T1", "T2", "Db1", "Logs", "bad name", "", "x" * 300]))
        else:
            value = self.any_value(depth)
        kv = common_pb2.KeyValue(key=key, value=value)
        if r.random() < 0.05:
            kv.key_strindex = 2
        return kv

    def attribute(self) -> bytes:
        """A KeyValue's bytes: canonical mostly; fields reordered, repeated, unknown, empty at times."""
        r = self.r
        kv = self.kv()
        b = kv.SerializeToString()
        x = r.random()
        if x < 0.04:  # value before key
            b = (ld(2, kv.value.SerializeToString()) if kv.HasField("value") else b"") + ld(1, kv.key.encode())
        elif x < 0.07:  # key twice: the last wins
            b = ld(1, b"first") + b
        elif x < 0.09:  # an unknown field
            b = b + uvarint(99 << 3) + b"\x07"
        elif x < 0.10:
            b = b""
        elif x < 0.12:  # a nested one that parses where a request parses it
            b = nested(TOO_DEEP - 1)
        return b

    def attributes(self) -> list[bytes]:
        r = self.r
        pool = [self.attribute() for _ in range(r.randrange(0, 8))]
        if pool and r.random() < 0.2:
            pool.append(r.choice(pool))  # a repeated key
        return pool

    def record(self, attrs: list[list[bytes]]) -> bytes:
        """A LogRecord's bytes: as senders write them mostly; fields absent, reordered, repeated,
        unknown, padded at times."""
        r = self.r
        rec = logs_pb2.LogRecord()
        if r.random() < 0.85:
            rec.time_unix_nano = r.choice([T0, T0 + 1, T0 + r.randrange(10**12), 2**64 - 1, 1])
        if r.random() < 0.6:
            rec.observed_time_unix_nano = r.choice([T0 + 5, T0 + r.randrange(10**12), 2**63])
        if r.random() < 0.8:
            rec.severity_number = r.choice([9, 17, 1, 24, 0, 100, -1, 2**31 - 1])  # type: ignore[assignment]
        if r.random() < 0.8:
            rec.severity_text = r.choice(["INFO", "WARN, really", " x", "ünï", '"q"', "", "ERROR"])
        if r.random() < 0.9:
            if r.random() < 0.6:
                rec.body.string_value = r.choice(["hello", "", "GET /x 200 in 3 ms", "with \"quote\", comma\n",
                                                  "é" * 70, "z" * 200, "w" * 20000])
            else:
                rec.body.CopyFrom(self.any_value())
        if r.random() < 0.1:
            rec.dropped_attributes_count = r.choice([1, 300])
        if r.random() < 0.2:
            rec.flags = r.choice([1, 255, 2**32 - 1])
        if r.random() < 0.8:
            rec.trace_id = r.choice([bytes(16), bytes(range(16)), r.randbytes(16), b"\x00\x01", bytes(3), b"x" * 130])
        if r.random() < 0.8:
            rec.span_id = r.choice([bytes(8), bytes(range(1, 9)), r.randbytes(8), b"\x05"])
        if r.random() < 0.1:
            rec.event_name = r.choice(["ev", "ünï", ""])
        b = rec.SerializeToString()
        fields = _wire_fields(b)
        for a in r.choice(attrs):  # the attributes in their place (field 6: after 1, 2, 3, 5)
            fields.append(ld(6, a))
        fields.sort(key=lambda f: (f[0] >> 3 if f[0] < 0x80 else 99))
        x = r.random()
        if x < 0.04:  # fields in another order
            r.shuffle(fields)
        elif x < 0.07:  # a field twice (the body twice: merged)
            fields.append(r.choice(fields) if fields else b"\x09" + bytes(8))
            if r.random() < 0.5:
                fields.append(ld(5, self.any_value().SerializeToString()))
        elif x < 0.09:  # an unknown field, or the reserved one (4)
            fields.insert(r.randrange(len(fields) + 1), r.choice([b"\x78\x01", ld(4, b"x"), b"\xf8\x01\x01"]))
        elif x < 0.10:  # a wrong wire type for a known field (an unknown field then)
            fields.append(b"\x48\x01")  # trace_id (9) as a varint
        elif x < 0.11:  # a length padded to two bytes
            fields.append(b"\x1a\x84\x00INFO")
        elif x < 0.12:
            fields = []  # an empty record
        return b"".join(fields)

    def request(self, attrs: list[list[bytes]], bad: Callable[[bytes], bytes] | None) -> bytes:
        r = self.r
        resource_logs = []
        for _ in range(r.randrange(1, 4)):
            res = resource_pb2.Resource()
            for _ in range(r.randrange(0, 4)):
                res.attributes.add().CopyFrom(self.kv())
            if r.random() < 0.5:
                res.attributes.add(key="kusto.table", value=common_pb2.AnyValue(string_value="Res"))
            if r.random() < 0.4:
                res.attributes.add(key="kusto.database", value=common_pb2.AnyValue(string_value="Logs"))
            scopes = []
            for _ in range(r.randrange(0, 3)):
                scope = common_pb2.InstrumentationScope(name=r.choice(["", "lib"]), version="1")
                if r.random() < 0.2:
                    scope.attributes.add(key="s", value=common_pb2.AnyValue(int_value=1))
                records = [self.record(attrs) for _ in range(r.randrange(0, 8))]
                sl = ld(1, scope.SerializeToString()) + b"".join(ld(2, rec) for rec in records)
                if r.random() < 0.2:
                    sl += ld(3, b"https://schema")
                scopes.append(sl)
            rl = ld(1, res.SerializeToString()) + b"".join(ld(2, sl) for sl in scopes)
            resource_logs.append(rl)
        data = b"".join(ld(1, rl) for rl in resource_logs)
        if bad is not None:
            rec = bad(self.record(attrs))
            data += ld(1, ld(2, ld(2, rec)))
        return data


# -- converting both ways ----------------------------------------------------------------------

Outcome = tuple[Any, ...]


def _outcome(result: ConvertResult) -> Outcome:
    tables = {k: (b.database, b.table, b.kind, b.schema, bytes(b.data), b.count) for k, b in result.tables.items()}
    return tables, result.accepted, result.rejected, result.reasons


def _refused(e: Exception) -> Outcome:
    return ("refused", type(e).__name__, str(e))


class _FullKind:
    """The kind as it was: the whole parse."""

    message = Full
    sent = ""


def _run(conv: Any, data: bytes, piece_bytes: int, kind: Any) -> Outcome:
    try:
        if piece_bytes:
            try:
                parts = list(pieces(data, OTLP_LOGS_LEVELS, piece_bytes))
            except Unsplittable:
                parts = [data]
            return _outcome(conv.convert_pieces(_parse(kind, p) for p in parts))
        return _outcome(conv.convert(_parse(kind, data)))
    except DecodeError as e:
        return _refused(e)


def reference(conv: logs_before.LogsConverter, data: bytes, piece_bytes: int = 0) -> Outcome:
    """The converter as it was, given the request (or its pieces) parsed whole, as Ingest did."""
    return _run(conv, data, piece_bytes, _FullKind)


def new(conv: LogsConverter, data: bytes, piece_bytes: int = 0) -> Outcome:
    """`conv` given `data` as Ingest gives it (or its pieces of about `piece_bytes`)."""
    return _run(conv, data, piece_bytes, OTLP_LOGS)


CONFIGS = [
    LogsConfig(),
    LogsConfig(None, None),
    LogsConfig("Db1", "Default", allowed_databases=frozenset({"Db1", "Logs"})),
]


def stream(seed: int, n: int) -> Iterator[bytes]:
    """`n` requests over a few dozen attribute sets (so that attributes repeat), some malformed."""
    s = Shapes(seed)
    attrs = [s.attributes() for _ in range(30)]
    for i in range(n):
        bad = s.r.choice(BAD_RECORDS) if i % 7 == 3 else None
        data = s.request(attrs, bad)
        if i % 23 == 11:  # a truncated request
            data = data[: len(data) * 2 // 3]
        yield data


@pytest.mark.parametrize("cfg", CONFIGS, ids=["default", "refuse-unrouted", "allowed"])
@pytest.mark.parametrize("seed", range(4))
def test_same_outcome_whole_and_in_pieces_cold_and_warm(cfg: LogsConfig, seed: int) -> None:
    old = logs_before.LogsConverter(cfg)
    whole, in_pieces = LogsConverter(cfg), LogsConverter(cfg)
    refused = rejected = accepted = 0
    for i, data in enumerate(stream(seed, 150)):
        want = reference(old, data)
        refused += want[0] == "refused"
        if want[0] != "refused":
            accepted += want[1]
            rejected += want[2]
        size = 200 + 97 * (i % 5)
        want_pieces = reference(old, data, size)
        assert want_pieces[0] == "refused" if want[0] == "refused" else want_pieces == want
        for _ in range(2):  # cold, then warm
            assert new(whole, data) == want, i
            assert new(in_pieces, data, size) == want_pieces, i
        if i % 40 == 39:
            old.turn()
            whole.turn()
    assert 10 < refused < 75
    assert accepted > 30 and rejected > 20


def test_every_bad_record_is_refused_as_before() -> None:
    s = Shapes(7)
    attrs = [s.attributes() for _ in range(5)]
    old, conv = logs_before.LogsConverter(), LogsConverter()
    for k, bad in enumerate(BAD_RECORDS):
        for _ in range(3):
            data = s.request(attrs, bad)
            want = reference(old, data)
            assert want[0] == "refused", k
            for _ in range(2):
                assert new(conv, data) == want, k
                assert new(conv, data, 150) == reference(old, data, 150), k


def test_an_attribute_a_message_held_that_bytes_cannot_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached attribute stands for bytes that parse where a request's parse parses them. A message
    given whole may hold one nested deeper than that parse takes: it is converted as before, and
    not cached, so that the same bytes sent are still refused."""
    monkeypatch.setattr(logs, "MAX_CACHED_ATTRIBUTE_BYTES", 1 << 20)  # the deep one is long: cached if at all
    old, conv = logs_before.LogsConverter(), LogsConverter()
    msg = Full()
    rec = msg.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=T0)
    rec.attributes.add(key="a", value=common_pb2.AnyValue(string_value="b"))
    rec.attributes.add().MergeFromString(nested(TOO_DEEP))
    data = msg.SerializeToString()
    want = reference(old, data)
    assert want[0] == "refused" and "MaxDepth" in want[2]
    rows = _outcome(old.convert(msg))
    assert rows[1] == 1
    for _ in range(2):
        assert _outcome(conv.convert(msg)) == rows
        assert new(conv, data) == want
        assert new(conv, data, piece_bytes=10) == reference(old, data, piece_bytes=10)
    assert len(conv._attributes) == 1  # "a" only


@pytest.mark.parametrize("seed", range(3))
def test_messages_given_whole_as_the_json_path_does(seed: int) -> None:
    """OTLP/JSON (and OTLP/HTTP protobuf) give the converter messages: the rows of the old converter
    given them."""
    old, conv = logs_before.LogsConverter(), LogsConverter()
    for i, data in enumerate(stream(100 + seed, 60)):
        try:
            msg = Full.FromString(data)
        except ProtobufDecodeError:
            continue
        given = [msg]
        with contextlib.suppress(json_format.ParseError):  # nested deeper than OTLP/JSON takes
            given.append(json_format.ParseDict(json_format.MessageToDict(msg), Full()))
        for m in given:
            for _ in range(2):
                assert _outcome(conv.convert(m)) == _outcome(old.convert(m)), i


def test_http_protobuf_decode_and_convert_as_before() -> None:
    """The HTTP port's decode and then the converter (as Ingest runs them) against the whole parse."""
    old, conv = logs_before.LogsConverter(), LogsConverter()
    for i, data in enumerate(stream(5, 80)):
        want = reference(old, data)
        try:
            got = _outcome(conv.convert(decode_otlp(gzip.compress(data), PROTOBUF, "gzip", Full, 1 << 30)))
        except DecodeError as e:
            got = _refused(e)
        assert got == want, i


def test_bench_request_warm_and_cold() -> None:
    from tests.bench.bench_kinds import logs_request
    data = logs_request()
    old, conv = logs_before.LogsConverter(), LogsConverter()
    want = reference(old, data)
    assert want[1] == 1000
    for _ in range(2):
        assert new(conv, data) == want
        assert new(LogsConverter(), data) == want
        assert new(conv, data, 20_000) == reference(old, data, 20_000)


SCALARS = [
    b"\x18\x00", b"\x18\x01", b"\x18\x7f", b"\x18\x80\x01", b"\x18\x80\x00",  # ints, one padded
    b"\x18" + b"\xff" * 9 + b"\x01",  # -1
    b"\x18" + b"\x80" * 9 + b"\x01",  # -2**63
    b"\x18" + b"\xff" * 8 + b"\x7f",  # 2**63 - 1
    b"\x18" + b"\xff" * 9 + b"\x7f",  # ten bytes, beyond 64 bits
    b"\x18" + b"\xff" * 10 + b"\x01",  # eleven bytes
    b"\x18" + b"\x80" * 9 + b"\x00", b"\x18" + b"\x80" * 10 + b"\x00",  # 0 in ten bytes, in eleven
    b"\x18\x80", b"\x18",  # cut short
    b"\x21" + struct.pack("<d", 0.5), b"\x21" + struct.pack("<d", -0.0), b"\x21" + struct.pack("<d", math.nan),
    b"\x21" + struct.pack("<d", math.inf), b"\x21" + struct.pack("<d", -math.inf), b"\x21\x00",
    b"\x10\x00", b"\x10\x01", b"\x10\x02", b"\x10\x80\x00", b"\x10", b"\x10\x80", b"\xff",
    b"\x0a\x00", b"\x0a\x01a", b"\x0a\x02a", b"\x0a\x01\xff", b"\x0a", b"\x0a\x80\x01" + b"x" * 128,
    b"\x3a\x03abc", b"\x40\x02", b"", b"\x0f",
]


@pytest.mark.parametrize("key", [b"k", b"", b"\xc3", b"kusto.table", b"x" * 130])
def test_scalar_attributes_of_every_spelling(key: bytes) -> None:
    """A KeyValue{key, AnyValue{one scalar}} is read from its bytes: as its parse reads it, or refused."""
    old, conv = logs_before.LogsConverter(), LogsConverter()
    for value in SCALARS:
        for kv in (ld(1, key) + ld(2, value), ld(2, value) + ld(1, key), ld(1, key) + ld(2, value) + b"\x18\x01"):
            rec = b"\x09" + struct.pack("<Q", T0) + ld(6, kv) + ld(6, ld(1, b"other") + ld(2, value))
            data = ld(1, ld(2, ld(2, rec)))
            want = reference(old, data)
            for _ in range(2):
                assert new(conv, data) == want, (key, value, kv)



ODD_KEYVALUES = [
    b"\x0a\x01k\x12\x85\x0a\x83" + b"s" * 131,  # a value's length of two bytes read as one: its string fits
    b"\x0a\x01k\x12\x85\x01\x0a\x83\x01" + b"s" * 131,  # the same, well formed
    b"\x0a\x85\x00k\x12\x02\x0a\x00",  # a key's length padded
    b"\x0a\x01k\x12\x02\x0a\x00\x12\x02\x18\x01",  # the value twice (merged: the int)
]


def test_odd_keyvalues() -> None:
    old, conv = logs_before.LogsConverter(), LogsConverter()
    for kv in ODD_KEYVALUES:
        data = ld(1, ld(2, ld(2, b"\x09" + struct.pack("<Q", T0) + ld(6, kv))))
        want = reference(old, data)
        for _ in range(2):
            assert new(conv, data) == want, kv
