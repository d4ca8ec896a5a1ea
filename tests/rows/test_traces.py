from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from node.rows.batch import KIND_TRACE
from node.rows.traces import TRACES_SCHEMA, TracesConfig, TracesConverter
from tests.rows.build import T_NS, kvs, parse, text

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")
PARENT = bytes.fromhex("0102030405060708")


def request(
    *spans: Span, resource: Mapping[str, object] | None = None, scope: tuple[str, str] = ("", "")
) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs(resource or {}))
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = scope
    ss.spans.extend(spans)
    return req


def test_columns_match_the_collector_adx_exporter() -> None:
    assert TRACES_SCHEMA == (
        ("TraceID", "string"),
        ("SpanID", "string"),
        ("ParentID", "string"),
        ("SpanName", "string"),
        ("SpanStatus", "string"),
        ("SpanKind", "string"),
        ("StartTime", "datetime"),
        ("EndTime", "datetime"),
        ("ResourceAttributes", "dynamic"),
        ("TraceAttributes", "dynamic"),
        ("Events", "dynamic"),
        ("Links", "dynamic"),
    )


def test_exact_row_text() -> None:
    span = Span(
        trace_id=TRACE,
        span_id=SPAN,
        parent_span_id=PARENT,
        name="GET /items, v2",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=T_NS,
        end_time_unix_nano=T_NS + 1_000,
        attributes=kvs({"http.status_code": 500}),
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        events=[Span.Event(name="exception", time_unix_nano=T_NS + 10, attributes=kvs({"exception.type": "E"}))],
        links=[Span.Link(trace_id=TRACE, span_id=PARENT, trace_state="a=b", attributes=kvs({"l": True}))],
    )
    req = request(span, resource={"service.name": "api", "kusto.table": "Spans"}, scope=("lib", "1.0"))
    result = TracesConverter().convert(req)
    batch = result.tables[("Traces", "Spans")]
    assert (batch.kind, batch.schema, batch.count) == (KIND_TRACE, TRACES_SCHEMA, 1)
    assert batch.data.decode() == (
        "5b8efff798038103d269b633813fc60c,eee19b7ec3c1b174,0102030405060708,"
        '"GET /items, v2",STATUS_CODE_ERROR,SPAN_KIND_SERVER,'
        "2026-11-24T04:00:00.123456789Z,2026-11-24T04:00:00.123457789Z,"
        '"{""service.name"":""api""}",'
        '"{""http.status_code"":500,""scope.name"":""lib"",""scope.version"":""1.0"",'
        '""otel.status_description"":""boom""}",'
        '"[{""EventName"":""exception"",""Timestamp"":""2026-11-24T04:00:00.123456799Z"",'
        '""EventAttributes"":{""exception.type"":""E""}}]",'
        '"[{""TraceID"":""5b8efff798038103d269b633813fc60c"",""SpanID"":""0102030405060708"",'
        '""TraceState"":""a=b"",""SpanLinkAttributes"":{""l"":true}}]"\n'
    )


def test_empty_span_matches_exporter_defaults() -> None:
    result = TracesConverter().convert(request(Span()))
    assert parse(text(result, "Traces", "Traces")) == [
        [
            "",
            "",
            "",
            "",
            "STATUS_CODE_UNSET",
            "SPAN_KIND_UNSPECIFIED",
            "1970-01-01T00:00:00.000000000Z",
            "1970-01-01T00:00:00.000000000Z",
            "{}",
            "{}",
            "[]",
            "[]",
        ]
    ]


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (Span.SPAN_KIND_INTERNAL, "SPAN_KIND_INTERNAL"),
        (Span.SPAN_KIND_CLIENT, "SPAN_KIND_CLIENT"),
        (Span.SPAN_KIND_PRODUCER, "SPAN_KIND_PRODUCER"),
        (Span.SPAN_KIND_CONSUMER, "SPAN_KIND_CONSUMER"),
        (9, ""),
    ],
)
def test_span_kinds(kind: Any, name: str) -> None:
    result = TracesConverter().convert(request(Span(kind=kind, status=Status(code=Status.STATUS_CODE_OK))))
    row = parse(text(result, "Traces", "Traces"))[0]
    assert (row[4], row[5]) == ("STATUS_CODE_OK", name)


def test_routing_by_resource_and_hostile_names() -> None:
    conv = TracesConverter(TracesConfig(default_database="Traces", allowed_databases=frozenset({"Traces", "Other"})))
    req = ExportTraceServiceRequest()
    for resource in ({"kusto.database": "Other"}, {"kusto.table": "../x"}, {"kusto.database": "Nope"}, {}):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(kvs(resource))
        rs.scope_spans.add().spans.extend([Span(name="a"), Span(name="b")])
    result = conv.convert(req)
    assert sorted(result.tables) == [("Other", "Traces"), ("Traces", "Traces")]
    assert (result.accepted, result.rejected) == (4, 4)
    assert result.reasons == [
        "invalid resource attribute kusto.table: '../x' does not match [A-Za-z0-9]+(_[A-Za-z0-9]+)* of 1-150 "
        "characters",
        "database has no configured sink: 'Nope'",
    ]
    other = parse(text(result, "Other", "Traces"))
    assert [r[3] for r in other] == ["a", "b"]
    assert json.loads(other[0][8]) == {}  # kusto.* left out of ResourceAttributes


def test_no_default_database_rejects() -> None:
    result = TracesConverter(TracesConfig(default_database=None)).convert(request(Span(), Span()))
    assert (result.accepted, result.rejected) == (0, 2)
    assert result.reasons == ["no kusto.database attribute and no default configured"]
