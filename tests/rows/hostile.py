"""Requests full of hostile strings, and what each row they make must hold once stored.

Every string column gets every value of `HOSTILE`: log body, SeverityText, record and resource
attributes (keys and values); span names, attributes, status messages, event names, link trace
states and resource attributes; metric label values (in `Labels` and in a lifted column), from
remote write and from OTLP. The requests are serialised and parsed again, as a receiver gets them.

`HOSTILE` starts with `'` and has `x'` five values later: on a ClickHouse before 22.7 reading
unquoted single quotes, the rows between them became one row (the reported bug).

A row is found by an identity column that holds no hostile value (`Case.key`); `check` compares
the stored rows, as {column: text}, with what was sent: string columns byte for byte, JSON columns
as the JSON values they hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from node.gen.prometheus.remote_pb2 import WriteRequest
from node.rows.batch import ConvertResult
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConverter
from tests.rows.build import T_MS, T_NS, kvs, log_record, metrics_request, remote_write

HOSTILE: tuple[str, ...] = (
    "'", "plain", "a", "b", "c", "x'",   # the reported sequence
    '"', '""', "'x'", "'a,b'", "it's",
    "\n", "a\nb", "\r\n", "a\r\nb", "\r", "a\rb",
    ",", "a,b", ",,", "a,\"b\",'c'",
    "\\", "a\\b", "\\\\N", "\\N", "\\n", "a\\", "\\\"",
    "\t", "\tx", "x\t", "a\tb",
    " lead", "trail ", " ", "  both  ",
    "", "NULL", "null", "\x00", "a\x00b",
    "ünïcödé ✓ 日本語 🚀", "\ufeffbom", "\u2028\u2029",
    "\"'\\,\r\n\t x",
)
assert len(set(HOSTILE)) == len(HOSTILE)

METRIC = "hostile_values"
METRIC_TABLE = "HostileValues"
LIFT = ("lifted",)
EVENT_TIME = "2026-11-24T04:00:00.123456789Z"  # T_NS as the traces converter writes it


@dataclass(frozen=True)
class Case:
    """Rows of one table, made by the node's converters from hostile requests."""

    name: str
    results: tuple[ConvertResult, ...]
    database: str
    table: str
    key: str
    """The identity column; `ident` makes its stored text a row number."""
    ident: Callable[[str], int]
    rows: dict[int, dict[str, Any]]
    """Row number -> {column: the str it must hold, or the JSON value of a dynamic column}."""
    dynamic: frozenset[str]


def _number(text: str) -> int:
    return int(float(text))


def _span_number(text: str) -> int:
    return int(text, 16)


def logs_case() -> Case:
    req = ExportLogsServiceRequest()
    rows: dict[int, dict[str, Any]] = {}
    for i, v in enumerate(HOSTILE):
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(kvs({"service.name": v}))
        attrs = {"value": v, "key " + v: i}
        rl.scope_logs.add().log_records.append(
            log_record(attrs, body=v, severity_text=v, severity_number=i, time_unix_nano=T_NS + i))
        rows[i] = {"SeverityText": v, "Body": v, "Attributes": attrs, "Resource": {"service.name": v}}
    parsed = ExportLogsServiceRequest.FromString(req.SerializeToString())
    result = LogsConverter(LogsConfig("Logs", "HostileLogs")).convert(parsed)
    return Case("logs", (result,), "Logs", "HostileLogs", "SeverityNumber", _number, rows,
                frozenset({"Body", "Attributes", "Resource"}))


def traces_case() -> Case:
    req = ExportTraceServiceRequest()
    rows: dict[int, dict[str, Any]] = {}
    for i, v in enumerate(HOSTILE, start=1):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(kvs({"service.name": v}))
        span = Span(trace_id=bytes([7] * 16), span_id=i.to_bytes(8, "big"), name=v, kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=T_NS + i, end_time_unix_nano=T_NS + 2 * i,
                    attributes=kvs({"value": v}), status=Status(code=Status.STATUS_CODE_ERROR, message=v),
                    events=[Span.Event(name=v, time_unix_nano=T_NS, attributes=kvs({"value": v}))],
                    links=[Span.Link(trace_id=bytes([8] * 16), span_id=bytes([9] * 8), trace_state=v)])
        rs.scope_spans.add().spans.append(span)
        attrs: dict[str, Any] = {"value": v}
        if v:
            attrs["otel.status_description"] = v
        rows[i] = {
            "SpanName": v, "ResourceAttributes": {"service.name": v}, "TraceAttributes": attrs,
            "Events": [{"EventName": v, "Timestamp": EVENT_TIME, "EventAttributes": {"value": v}}],
            "Links": [{"TraceID": "08" * 16, "SpanID": "09" * 8, "TraceState": v, "SpanLinkAttributes": {}}],
        }
    parsed = ExportTraceServiceRequest.FromString(req.SerializeToString())
    return Case("traces", (TracesConverter().convert(parsed),), "Traces", "Traces", "SpanID", _span_number, rows,
                frozenset({"ResourceAttributes", "TraceAttributes", "Events", "Links"}))


OTLP_OFFSET = 1000
"""OTLP points of the metrics case have values from 1000 (remote write samples from 0)."""


def metrics_case() -> Case:
    series = [({"__name__": METRIC, "i": str(i), "value": v, "lifted": v}, [(float(i), T_MS + i)])
              for i, v in enumerate(HOSTILE)]
    wire = WriteRequest.FromString(remote_write(*series).SerializeToString())
    conv = MetricsConverter(MetricsConfig(lift_labels=LIFT))
    remote = conv.convert_remote_write(wire)
    points = [NumberDataPoint(time_unix_nano=T_NS + i, as_double=float(OTLP_OFFSET + i),
                              attributes=kvs({"i": str(i), "value": v, "lifted": v})) for i, v in enumerate(HOSTILE)]
    req = metrics_request(Metric(name=METRIC, gauge=Gauge(data_points=points)))
    otlp = conv.convert_otlp(ExportMetricsServiceRequest.FromString(req.SerializeToString()))
    rows: dict[int, dict[str, Any]] = {}
    for i, v in enumerate(HOSTILE):
        for n in (i, OTLP_OFFSET + i):
            rows[n] = {"Labels": {"i": str(i), "value": v}, "Lifted": v}
    return Case("metrics", (remote, otlp), "Metrics", METRIC_TABLE, "Value", _number, rows, frozenset({"Labels"}))


CASES: dict[str, Callable[[], Case]] = {"logs": logs_case, "traces": traces_case, "metrics": metrics_case}


def check(case: Case, stored: list[Mapping[str, str]]) -> None:
    """`stored` (every row of the case's table, {column: text}) holds exactly the case's rows."""
    for result in case.results:
        assert result.rejected == 0, result.reasons
        assert list(result.tables) == [(case.database, case.table)]
    assert len(stored) == len(case.rows), f"{len(case.rows)} rows sent, {len(stored)} stored"
    by_key = {case.ident(row[case.key]): row for row in stored}
    assert sorted(by_key) == sorted(case.rows), "rows changed identity"
    for n, want in case.rows.items():
        got = by_key[n]
        for column, value in want.items():
            text = got[column]
            if column in case.dynamic:
                assert json.loads(text) == value, (case.name, n, column, text)
            else:
                assert text == value, (case.name, n, column, text, value)


_FIELD = re.compile(r'"([^"]*(?:""[^"]*)*)"|([^",\r\n]*)')


def strict_csv(text: str) -> list[list[str]]:
    """Rows of RFC 4180 CSV, read strictly: a field is `"..."` with `""` for `"`, or has no `"`
    `,` CR or LF; rows end in LF. Stricter still, as the node promises (csvtext.field): an
    unquoted field holds no `'` or backslash and neither starts nor ends with a space or tab, so
    that no reader (ClickHouse with single quotes on, one that trims, one that takes `\\N`) reads
    it differently. Raises AssertionError where the text breaks a rule."""
    rows: list[list[str]] = []
    pos, end = 0, len(text)
    while pos < end:
        row: list[str] = []
        while True:
            m = _FIELD.match(text, pos)
            assert m is not None
            if m.group(1) is not None:
                row.append(m.group(1).replace('""', '"'))
            else:
                bare = m.group(2)
                assert "'" not in bare and "\\" not in bare, f"unquoted quote or backslash at {pos}: {bare!r}"
                assert bare == bare.strip(" \t"), f"unquoted space or tab at an end at {pos}: {bare!r}"
                row.append(bare)
            pos = m.end()
            if text.startswith(",", pos):
                pos += 1
                continue
            assert text.startswith("\n", pos), f"expected , or LF at {pos}: {text[pos:pos + 20]!r}"
            pos += 1
            break
        rows.append(row)
    return rows
