"""OTLP traces requests as span rows, in the columns of the OpenTelemetry Collector's Azure Data
Explorer exporter (`OTELTraces`), so queries written for that exporter work unchanged.

    TraceID:string, SpanID:string, ParentID:string, SpanName:string, SpanStatus:string,
    SpanKind:string, StartTime:datetime, EndTime:datetime, ResourceAttributes:dynamic,
    TraceAttributes:dynamic, Events:dynamic, Links:dynamic

As that exporter writes them: ids lower-case hex ("" when absent or all zero); SpanStatus
`STATUS_CODE_UNSET|OK|ERROR`; SpanKind `SPAN_KIND_UNSPECIFIED|INTERNAL|SERVER|CLIENT|PRODUCER|
CONSUMER`; TraceAttributes = span attributes plus `scope.name` / `scope.version` when set;
Events = [{"EventName", "Timestamp", "EventAttributes"}]; Links = [{"TraceID", "SpanID",
"TraceState", "SpanLinkAttributes"}]. Two differences: a non-empty status message, which has no
column there, is kept in TraceAttributes as `otel.status_description` (OpenTelemetry's name for
it outside OTLP); times have nine fractional digits always. One table per database, `Traces` by
default, overridable by the `kusto.database` / `kusto.table` resource attributes (routing.py),
which are left out of ResourceAttributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from node.rows.anyvalue import JsonValue, attributes_json, encode_json
from node.rows.batch import KIND_TRACE, ConvertResult, ResultBuilder, Schema
from node.rows.csvtext import Timestamps, field, quoted
from node.rows.logs import hex_id
from node.rows.routing import Router, split_attributes

TRACES_SCHEMA: Schema = (
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

SPAN_KINDS = (
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
)
STATUS_CODES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")
STATUS_DESCRIPTION = "otel.status_description"


@dataclass(frozen=True)
class TracesConfig:
    """Where spans go when their resource does not say."""

    default_database: str | None = "Traces"
    """Database of spans whose resource has no `kusto.database`; None: refuse them."""
    default_table: str | None = "Traces"
    """Table of spans whose resource has no `kusto.table`; None: refuse them."""
    allowed_databases: frozenset[str] | None = None
    """Databases that have a sink; spans routed elsewhere are rejected. None: all are allowed."""


class TracesConverter:
    """Converts `ExportTraceServiceRequest`s to rows."""

    def __init__(self, cfg: TracesConfig | None = None) -> None:
        self.cfg = cfg = cfg or TracesConfig()
        self._router = Router(cfg.default_database, cfg.default_table, cfg.allowed_databases)
        self._ts = Timestamps(9)

    def _stamp(self, t: int) -> str:
        """A span's or event's time: nearly every one is new (Timestamps.text)."""
        return self._ts.text(t)

    def turn(self) -> None:
        """Forget the destinations not used since the previous turn (node/cache.py)."""
        self._router.turn()

    def convert(self, req: ExportTraceServiceRequest) -> ConvertResult:
        return self.convert_pieces((req,))

    def convert_pieces(self, reqs: Iterable[ExportTraceServiceRequest]) -> ConvertResult:
        """Rows of a request given in pieces (wire.pieces), parsed one at a time."""
        out = ResultBuilder(KIND_TRACE, TRACES_SCHEMA)
        for req in reqs:
            self._convert(req, out)
            out.flush()
        return out.result()

    def _convert(self, req: ExportTraceServiceRequest, out: ResultBuilder) -> None:
        for rs in req.resource_spans:
            rattrs, rdb, rtable = split_attributes(rs.resource.attributes, "resource")
            dest = self._router.resolve(None, None, rdb, rtable)
            if isinstance(dest, str):
                out.reject(dest, sum(len(ss.spans) for ss in rs.scope_spans))
                continue
            rows = out.rows(dest)
            resource = quoted(encode_json(rattrs))
            for ss in rs.scope_spans:
                scope: dict[str, JsonValue] = {}
                if ss.scope.name:
                    scope["scope.name"] = ss.scope.name
                if ss.scope.version:
                    scope["scope.version"] = ss.scope.version
                for span in ss.spans:
                    try:
                        rows.append(self._row(span, scope, resource))
                    except ValueError as err:
                        out.reject(str(err))

    def _row(self, span: Span, scope: dict[str, JsonValue], resource: str) -> str:
        attrs = attributes_json(span.attributes)
        attrs.update(scope)
        status = span.status
        if status.message:
            attrs[STATUS_DESCRIPTION] = status.message
        events = [
            {
                "EventName": e.name,
                "Timestamp": self._stamp(e.time_unix_nano),
                "EventAttributes": attributes_json(e.attributes),
            }
            for e in span.events
        ]
        links = [
            {
                "TraceID": hex_id(link.trace_id),
                "SpanID": hex_id(link.span_id),
                "TraceState": link.trace_state,
                "SpanLinkAttributes": attributes_json(link.attributes),
            }
            for link in span.links
        ]
        kind = SPAN_KINDS[span.kind] if 0 <= span.kind < len(SPAN_KINDS) else ""
        code = STATUS_CODES[status.code] if 0 <= status.code < len(STATUS_CODES) else ""
        return (
            f"{hex_id(span.trace_id)},{hex_id(span.span_id)},{hex_id(span.parent_span_id)},"
            f"{field(span.name)},{code},{kind},"
            f"{self._stamp(span.start_time_unix_nano)},{self._stamp(span.end_time_unix_nano)},{resource},"
            f"{quoted(encode_json(attrs))},{quoted(encode_json(events))},{quoted(encode_json(links))}\n"
        )
