'''OTLP logs requests as log rows (rows.md, "Logs"), routed by `kusto.database` / `kusto.table`.

    Timestamp:datetime, ObservedTimestamp:datetime, TraceId:string, SpanId:string,
    SeverityText:string, SeverityNumber:int, Body:dynamic, Resource:dynamic, Attributes:dynamic

    2026-11-24T04:00:00.000000001Z,2026-11-24T04:00:00.000000002Z,5b8efff798038103d269b633813fc60c,
    eee19b7ec3c1b174,INFO,9,"""hello""","{""service.name"":""api""}","{""k"":1}"\\n   (one line)

Timestamps have 9 fractional digits. A record without a timestamp gets its observed timestamp
(and the other way round), as the OTLP data model advises. Ids are lower-case hex, "" when absent
or all zero. Body, resource and attributes are JSON (anyvalue.py); `kusto.*` attributes are
removed. Routing and refusals: routing.py. A record that names no database or table goes to
`Logs`.`Logs` unless configured otherwise (an empty default refuses such records).
'''

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from node.cache import BoundedCache
from node.rows.anyvalue import encode_json, to_json
from node.rows.batch import KIND_LOG, ConvertResult, ResultBuilder, Schema
from node.rows.csvtext import Timestamps, field, quoted
from node.rows.routing import Router, split_attributes

LOGS_SCHEMA: Schema = (
    ("Timestamp", "datetime"),
    ("ObservedTimestamp", "datetime"),
    ("TraceId", "string"),
    ("SpanId", "string"),
    ("SeverityText", "string"),
    ("SeverityNumber", "int"),
    ("Body", "dynamic"),
    ("Resource", "dynamic"),
    ("Attributes", "dynamic"),
)


DEFAULT_DATABASE = "Logs"
DEFAULT_TABLE = "Logs"
"""Where a record that names neither goes, unless configured otherwise (--default-logs-database,
--default-logs-table): stored, as the OpenTelemetry Collector's and Vector's users expect, rather
than refused."""


@dataclass(frozen=True)
class LogsConfig:
    """Where log records go when they do not say."""

    default_database: str | None = DEFAULT_DATABASE
    """Database of a record with no `kusto.database` on it or its resource; None or "": refuse it."""
    default_table: str | None = DEFAULT_TABLE
    """Table of a record with no `kusto.table` on it or its resource; None or "": refuse it."""
    allowed_databases: frozenset[str] | None = None
    """Databases that have a sink; a record routed elsewhere is rejected. None: all are allowed."""


def hex_id(b: bytes) -> str:
    """A trace or span id as lower-case hex; "" when empty or all zero (an invalid id)."""
    return b.hex() if b.strip(b"\0") else ""


class LogsConverter:
    """Converts `ExportLogsServiceRequest`s to rows."""

    def __init__(self, cfg: LogsConfig | None = None) -> None:
        self.cfg = cfg = cfg or LogsConfig()
        self._router = Router(cfg.default_database or None, cfg.default_table or None, cfg.allowed_databases)
        self._ts = Timestamps(9)
        self._severity: BoundedCache[str, str] = BoundedCache(1024)

    def turn(self) -> None:
        """Forget the destinations not used since the previous turn (node/cache.py)."""
        self._router.turn()

    def convert(self, req: ExportLogsServiceRequest) -> ConvertResult:
        return self.convert_pieces((req,))

    def convert_pieces(self, reqs: Iterable[ExportLogsServiceRequest]) -> ConvertResult:
        """Rows of a request given in pieces (wire.pieces), parsed one at a time."""
        out = ResultBuilder(KIND_LOG, LOGS_SCHEMA)
        for req in reqs:
            self._convert(req, out)
            out.flush()
        return out.result()

    def _convert(self, req: ExportLogsServiceRequest, out: ResultBuilder) -> None:
        tget = self._ts.cache.get
        tformat = self._ts.format
        resolve = self._router.resolve
        severity = self._severity
        for rl in req.resource_logs:
            rattrs, rdb, rtable = split_attributes(rl.resource.attributes, "resource")
            resource = quoted(encode_json(rattrs))
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    attrs, db, table = split_attributes(rec.attributes, "log record")
                    dest = resolve(db, table, rdb, rtable)
                    if isinstance(dest, str):
                        out.reject(dest)
                        continue
                    t = rec.time_unix_nano
                    observed = rec.observed_time_unix_nano
                    try:
                        stamp = tget(t or observed) or tformat(t or observed)
                        observed_stamp = tget(observed or t) or tformat(observed or t)
                    except ValueError as err:
                        out.reject(str(err))
                        continue
                    text = rec.severity_text
                    sev = severity.get(text)
                    if sev is None:
                        sev = severity.put(text, field(text))
                    body = quoted(encode_json(to_json(rec.body)))
                    out.rows(dest).append(
                        f"{stamp},{observed_stamp},{hex_id(rec.trace_id)},{hex_id(rec.span_id)},{sev},"
                        f"{rec.severity_number},{body},{resource},{quoted(encode_json(attrs))}\n"
                    )
