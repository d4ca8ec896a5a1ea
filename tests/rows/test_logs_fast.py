"""The shortcuts of the logs converter's row text against the converter as it was
(tests/rows/logs_before.py): a string body that JSON escapes nothing is written between `""` as it
is (otherwise escaped and its quotes doubled), and an id whose last byte is not zero is written as
hex without looking at the rest (otherwise checked for all zero). Bodies and ids on either side of
each shortcut, the same rows as before."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from node.rows.logs import LogsConverter, parse_request
from tests.rows import logs_before

T0 = 1_795_000_000_000_000_000

BODIES = ["", "hello", "GET /x 200 in 3 ms", 'say "hi"', "back\\slash", "tab\there", "line\nbreak", "\x00\x1f\x7f",
          "é", "日本語", "emoji 😀", "\u2028 \u2029", "a,b", " lead", "trail ", '"', '""', "/", "\ud7ff"]
IDS = [b"", bytes(1), bytes(3), bytes(8), bytes(16), bytes(15) + b"\x01", b"\x01" + bytes(15), b"\x01" + bytes(7),
       bytes(range(16)), b"\xff" * 16, b"\x00\x01", b"x" * 130, bytes(130), b"\x10\x00"]


def _request(records: list[LogRecord]) -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="api")))
    rl.scope_logs.add().log_records.extend(records)
    return req.SerializeToString()


def _rows(data: bytes) -> tuple[object, ...]:
    want = logs_before.LogsConverter().convert(ExportLogsServiceRequest.FromString(data))
    got = LogsConverter().convert(parse_request(data))
    tables = {k: (bytes(b.data), b.count) for k, b in got.tables.items()}
    assert tables == {k: (bytes(b.data), b.count) for k, b in want.tables.items()}
    assert (got.accepted, got.rejected, got.reasons) == (want.accepted, want.rejected, want.reasons)
    return tuple(tables.values())


@pytest.mark.parametrize("body", BODIES)
def test_string_bodies_as_before(body: str) -> None:
    rec = LogRecord(time_unix_nano=T0, severity_text="INFO", body=AnyValue(string_value=body))
    rec.attributes.append(KeyValue(key="k", value=AnyValue(string_value=body)))
    _rows(_request([rec]))


def test_bodies_of_other_kinds_and_none_as_before() -> None:
    records = [LogRecord(time_unix_nano=T0, body=AnyValue(int_value=3)),
               LogRecord(time_unix_nano=T0, body=AnyValue(bytes_value=b'"\x00')),
               LogRecord(time_unix_nano=T0, body=AnyValue(double_value=float("nan"))),
               LogRecord(time_unix_nano=T0),
               LogRecord(time_unix_nano=T0, body=AnyValue(string_value=""))]
    records.append(LogRecord(time_unix_nano=T0))
    records[-1].body.kvlist_value.values.append(KeyValue(key='q"', value=AnyValue(string_value='"v"')))
    _rows(_request(records))


def test_ids_as_before() -> None:
    records = [LogRecord(time_unix_nano=T0, trace_id=t, span_id=s, body=AnyValue(string_value="x"))
               for t in IDS for s in IDS[::-1]]
    (rows,) = _rows(_request(records))
    assert rows[1] == len(records)
