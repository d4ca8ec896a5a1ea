# node/rows/logs.py as it was before OTLP logs were read from the request's bytes (issue 17), every
# message parsed whole: the reference tests/rows/test_logs_raw.py compares the converter against.
# ruff: noqa
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
from json.encoder import encode_basestring

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from node.cache import BoundedCache
from node.rows.anyvalue import encode_json, to_json
from node.rows.batch import KIND_LOG, ConvertResult, ResultBuilder, Schema
from node.rows.csvtext import Timestamps, field, quoted
from node.rows.routing import DATABASE_KEY, ROUTING_PREFIX, TABLE_KEY, Choice, Router, routing_value, split_attributes
from node.rows.wire import skip_length_delimited

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


MAX_CACHED_ATTRIBUTES = 16384
"""Attributes (key and value) whose JSON text a converter keeps, at most."""
MAX_CACHED_ATTRIBUTE_BYTES = 256
"""A longer attribute (a stack trace, say: seldom the same twice) is not kept, so that the cache
holds a few megabytes at most."""

_BEFORE_ATTRIBUTES = b"\x09\x10\x1a\x2a"
"""LogRecord fields 1 (time, fixed64), 2 (severity number, varint), 3 (severity text) and 5 (body)
come before its attributes (6) on the wire."""
_ATTRIBUTE_TAG = 0x32
_ZERO = b"\0"
"""What `hex_id` strips, inlined in the loop."""
_AFTER_ATTRIBUTES = b"\x38\x45\x4a\x52\x59\x62"
"""LogRecord fields 7-12: after the attributes."""

Attribute = tuple[str, str | None, Choice]
"""One serialized attribute (a KeyValue) of a log record: its key, its `"key":value` JSON text
with `"` doubled (as inside a quoted CSV field), or None for a `kusto.*` key, and the routing
choice of `kusto.database` / `kusto.table` (None for the others)."""


def _attributes_start(b: bytes) -> int:
    """Where the attributes of a serialized LogRecord start, or would (a serialized message has its
    fields in field-number order, so they are one run of fields); -1 when its bytes hold a field
    not expected here."""
    i = 0
    n = len(b)
    while i < n:
        tag = b[i]
        if tag == 0x09:
            i += 9
        elif tag in _BEFORE_ATTRIBUTES:
            if tag == 0x10:  # a varint
                i += 1
                while b[i] >= 0x80:
                    i += 1
                i += 1
            elif b[i + 1] < 0x80:
                i += 2 + b[i + 1]
            else:
                i = skip_length_delimited(b, i)
        elif tag == _ATTRIBUTE_TAG or tag in _AFTER_ATTRIBUTES:
            return i
        else:
            return -1
    return n


def _attribute(b: bytes) -> Attribute:
    """The `Attribute` of one serialized LogRecord attribute field (its tag and length included)."""
    i = 1
    while b[i] >= 0x80:
        i += 1
    i += 1
    n = len(b)
    # the common one, read here: KeyValue{key (1): "k", value (2): AnyValue{string_value (1): "v"}},
    # each length under 128 (0x0a k-length k 0x12 v-length+2 0x0a v-length v)
    if i + 2 < n and b[i] == 0x0A and b[i + 1] < 0x80:
        k = i + 2 + b[i + 1]
        if k + 4 <= n and b[k] == 0x12 and b[k + 1] == n - k - 2 and b[k + 2] == 0x0A and b[k + 3] == n - k - 4:
            key = b[i + 2 : k].decode()
            if not key.startswith(ROUTING_PREFIX):
                text = encode_basestring(key) + ":" + encode_basestring(b[k + 4 :].decode())
                return key, text.replace('"', '""'), None
    kv = KeyValue.FromString(b[i:])
    key = kv.key
    if key.startswith(ROUTING_PREFIX):
        if key in (DATABASE_KEY, TABLE_KEY):
            return key, None, routing_value(key, kv.value, "log record")
        return key, None, None
    return key, encode_json({key: to_json(kv.value)})[1:-1].replace('"', '""'), None


class LogsConverter:
    """Converts `ExportLogsServiceRequest`s to rows."""

    def __init__(self, cfg: LogsConfig | None = None) -> None:
        self.cfg = cfg = cfg or LogsConfig()
        self._router = Router(cfg.default_database or None, cfg.default_table or None, cfg.allowed_databases)
        self._ts = Timestamps(9)
        self._severity: BoundedCache[str, str] = BoundedCache(1024)
        self._attributes: BoundedCache[bytes, Attribute] = BoundedCache(MAX_CACHED_ATTRIBUTES)

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
        """The rows of `req`. A record's attributes are read from its serialized bytes: each one's
        JSON text is cached by its bytes (most attributes of a stream of records repeat: methods,
        routes, codes, pods), so a known attribute costs one lookup; a record whose bytes hold a
        field not expected here is read the slow way (`split_attributes`)."""
        tget = self._ts.cache.get
        tformat = self._ts.format
        resolve = self._router.resolve
        severity = self._severity
        cache = self._attributes
        known = cache.get
        last_dest: tuple[str, str] | None = None
        rows: list[str] = []
        for rl in req.resource_logs:
            rattrs, rdb, rtable = split_attributes(rl.resource.attributes, "resource")
            resource = quoted(encode_json(rattrs))
            resource_dest = resolve(None, None, rdb, rtable)
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    b = rec.SerializeToString()
                    i = _attributes_start(b)
                    if i < 0:
                        attrs, db, table = split_attributes(rec.attributes, "log record")
                        attributes = quoted(encode_json(attrs))
                        dest = resolve(db, table, rdb, rtable)
                    else:
                        parts: dict[str, str] = {}  # a repeated key: its first place, its last value
                        db = table = None
                        n = len(b)
                        while i < n and b[i] == _ATTRIBUTE_TAG:
                            j = i + 2 + b[i + 1] if b[i + 1] < 0x80 else skip_length_delimited(b, i)
                            kb = b[i:j]
                            i = j
                            entry = known(kb)
                            if entry is None:
                                entry = _attribute(kb)
                                if len(kb) <= MAX_CACHED_ATTRIBUTE_BYTES:
                                    cache.put(kb, entry)
                            key, text, choice = entry
                            if text is not None:
                                parts[key] = text
                            elif key == DATABASE_KEY:
                                db = choice
                            elif key == TABLE_KEY:
                                table = choice
                        attributes = '"{' + ",".join(parts.values()) + '}"'
                        dest = resource_dest if db is None and table is None else resolve(db, table, rdb, rtable)
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
                    value = rec.body
                    if value.WhichOneof("value") == "string_value":
                        body = '"' + encode_basestring(value.string_value).replace('"', '""') + '"'
                    else:
                        body = quoted(encode_json(to_json(value)))
                    trace_id = rec.trace_id
                    span_id = rec.span_id
                    if dest is not last_dest:
                        rows = out.rows(dest)
                        last_dest = dest
                    rows.append(
                        f"{stamp},{observed_stamp},{trace_id.hex() if trace_id.strip(_ZERO) else ''},"
                        f"{span_id.hex() if span_id.strip(_ZERO) else ''},{sev},"
                        f"{rec.severity_number},{body},{resource},{attributes}\n"
                    )
