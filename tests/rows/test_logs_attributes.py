"""Log record attributes left as their bytes by the request's parse, each one's JSON text cached by
its bytes (node/rows/logs.py): the same text as the attributes read one by one, on a first and a
cached conversion, with repeated keys, routing keys, values of every type, and fields of the record
that no reader expects."""

from __future__ import annotations

import json

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from node.rows.logs import LogsConfig, LogsConverter
from tests.rows.build import T_NS, kvs, log_record, logs_request, parse, text


def _record(attributes: list[KeyValue], unknown: bytes = b"") -> LogRecord:
    rec = log_record(time_unix_nano=T_NS, trace_id=bytes(range(16)), span_id=bytes(8))
    rec.attributes.extend(attributes)
    if unknown:
        rec.MergeFromString(unknown)
    return rec


def _attributes_column(conv: LogsConverter, *records: LogRecord) -> list[str]:
    result = conv.convert(logs_request(*records, resource={"kusto.table": "T"}))
    return [row[8] for row in parse(text(result, "Logs", "T"))]


def test_repeated_keys_routing_keys_and_every_type_twice() -> None:
    attributes = [
        *kvs({"a": "1", "n": 200, "d": 0.5, "b": True, "bytes": b"\x00\x01"}),
        KeyValue(key="list", value=AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)]))),
        KeyValue(key="kusto.other", value=AnyValue(string_value="gone")),
        KeyValue(key="a", value=AnyValue(string_value='last "one", wins')),
        KeyValue(key="", value=AnyValue(string_value="empty key")),
        KeyValue(key="unset", value=AnyValue()),
        KeyValue(key="nan", value=AnyValue(double_value=float("nan"))),
        KeyValue(key="k" * 200, value=AnyValue(string_value="é" * 100)),  # a field longer than 127 bytes
    ]
    expected = {"a": 'last "one", wins', "n": 200, "d": 0.5, "b": True, "bytes": "AAE=", "list": [1], "": "empty key",
                "unset": None, "nan": "NaN", "k" * 200: "é" * 100}
    conv = LogsConverter(LogsConfig())
    for _ in range(2):  # then from the cache
        columns = _attributes_column(conv, _record(attributes), _record([]), _record(attributes[:1]))
        assert [json.loads(c) for c in columns] == [expected, {}, {"a": "1"}]
        assert list(json.loads(columns[0])) == list(expected)  # a repeated key keeps its first place


def test_record_routing_from_cached_attributes() -> None:
    conv = LogsConverter(LogsConfig())
    rec = _record(kvs({"kusto.table": "Other", "x": 1}))
    bad = _record(kvs({"kusto.database": "bad name"}))
    for _ in range(2):
        result = conv.convert(logs_request(rec, bad, resource={"kusto.table": "T"}))
        assert (result.accepted, result.rejected, list(result.tables)) == (1, 1, [("Logs", "Other")])
        assert [r.split(":")[0] for r in result.reasons] == ["invalid log record attribute kusto.database"]
        assert json.loads(parse(text(result, "Logs", "Other"))[0][8]) == {"x": 1}


def test_unexpected_fields_are_read_the_slow_way() -> None:
    conv = LogsConverter(LogsConfig())
    attributes = kvs({"a": "1", "b": 2})
    for unknown in (b"\x78\x01", b"\x22\x00", b"\xf8\x01\x01"):  # field 15, reserved field 4, field 31
        assert [json.loads(c) for c in _attributes_column(conv, _record(attributes, unknown))] == [{"a": "1", "b": 2}]


def test_long_attributes_are_not_cached() -> None:
    conv = LogsConverter(LogsConfig())
    rec = _record(kvs({"short": "x", "trace": "at line 1\n" * 100}))
    for _ in range(2):
        assert [json.loads(c) for c in _attributes_column(conv, rec)] == [{"short": "x", "trace": "at line 1\n" * 100}]
    short = KeyValue(key="short", value=AnyValue(string_value="x")).SerializeToString()
    assert list(conv._attributes) == [short]  # the short one's KeyValue
