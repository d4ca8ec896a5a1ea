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

A request that comes as bytes is read as ingestor.otlp_raw_logs (proto/opentelemetry_raw/logs_raw.proto,
`parse_request`): the wire of an ExportLogsServiceRequest, parsed as it parses, except that a record's
attributes are left as the bytes each KeyValue came as. Each attribute's JSON text is cached by those
bytes; an attribute not in the cache is read from them when it is a key and a string, int, double or
bool, and otherwise parsed where the request's parse parses it (in a record of a scope of a resource:
the same nesting limit, `_record`); a request whose attribute does not parse is refused with the error
of the request's parse (DecodeError, its bytes parsed again for its text). Given a message (OTLP/JSON,
or OTLP/HTTP protobuf as node/receivers/decode.py parses it), the converter reads it from its bytes.
'''

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring
from operator import attrgetter
from struct import Struct
from typing import NamedTuple, cast

from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from node.cache import BoundedCache
from node.errors import DecodeError
from node.gen.opentelemetry_raw import logs_raw_pb2
from node.rows.anyvalue import encode_json, to_json
from node.rows.batch import KIND_LOG, ConvertResult, ResultBuilder, Schema
from node.rows.csvtext import Timestamps, field, quoted, real
from node.rows.routing import DATABASE_KEY, ROUTING_PREFIX, TABLE_KEY, Choice, Router, routing_value, split_attributes
from node.rows.wire import uvarint

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

_ZERO = b"\0"
"""What `hex_id` strips, inlined in the loop: only for an id whose last byte is zero (any other is
not all zero)."""
_MALFORMED = f"malformed {ExportLogsServiceRequest.DESCRIPTOR.full_name}"

RawRequest = logs_raw_pb2.ExportLogsServiceRequest
"""An ExportLogsServiceRequest's wire, each record's attributes left as their bytes."""

_FIELDS = attrgetter("attributes", "time_unix_nano", "observed_time_unix_nano", "severity_text", "body", "trace_id",
                     "span_id", "severity_number")
"""What a row takes of a record, read at once."""

_ROUTING = "\0kusto"
"""The key, in the attributes' cache, of every `kusto.*` attribute: a record with one is read
attribute by attribute (`_attributes_of`), as is one with an attribute of that very key (rare, and
right either way)."""

Attribute = tuple[str, str] | tuple[str, tuple[str, Choice]]
"""One serialized attribute (a KeyValue) of a log record, as cached: its key and its `"key":value`
JSON text with `"` doubled (as inside a quoted CSV field); for a `kusto.*` key, _ROUTING and the key
with the routing choice of `kusto.database` / `kusto.table` (None for the others)."""


_DOUBLE = Struct("<d").unpack_from


class Parsed(NamedTuple):
    """A serialized ExportLogsServiceRequest read as a RawRequest (`parse_request`), with its bytes:
    when a record's attribute does not parse, the request is refused with the error of its whole
    parse (whose text depends on the bytes around it)."""

    request: RawRequest
    data: bytes


def parse_request(data: bytes) -> Parsed:
    """`data`, a serialized ExportLogsServiceRequest, read as a RawRequest. Raises the DecodeError of
    protobuf that the parse of an ExportLogsServiceRequest raises when this parse fails (an attribute
    that does not parse is found by the converter)."""
    try:
        return Parsed(RawRequest.FromString(data), data)
    except ProtobufDecodeError:
        ExportLogsServiceRequest.FromString(data)  # raises the error the senders' message gives
        raise


class _Malformed(Exception):
    """A record's attribute that the parse of its request would refuse."""


def _record(b: bytes) -> LogRecord:
    """The LogRecord of serialized record `b`, parsed where an ExportLogsServiceRequest parses it (a
    record of a scope of a resource: the same nesting limit). Raises _Malformed when that parse fails."""
    sl = b"\x12" + uvarint(len(b)) + b
    rl = b"\x12" + uvarint(len(sl)) + sl
    try:
        req = ExportLogsServiceRequest.FromString(b"\x0a" + uvarint(len(rl)) + rl)
    except ProtobufDecodeError as e:
        raise _Malformed(str(e)) from e
    return req.resource_logs[0].scope_logs[0].log_records[0]


def _attribute(b: bytes, strict: bool) -> tuple[Attribute, bool]:
    """The `Attribute` of one serialized KeyValue of a log record, and whether it was checked as its
    request's parse checks it. A KeyValue not read here is parsed where that parse parses it
    (`_record`), raising _Malformed when that fails; unless not `strict` (it came in a message, which
    may nest deeper than a parse takes): then it is parsed alone, unchecked (not to be cached)."""
    n = len(b)
    # the common ones, read here, their text as json writes it (as below): KeyValue{key (1): "k",
    # value (2): AnyValue{one scalar}}, each length under 128: 0x0a k-length k 0x12 v-length, then
    # 0x0a s-length s (a string), 0x18 varint (an int), 0x21 8 bytes (a double) or 0x10 0|1 (a bool)
    if (n > 4 and b[0] == 0x0A and b[1] < 0x80 and b[1] < n - 4 and b[2 + b[1]] == 0x12
            and b[3 + b[1]] == n - 4 - b[1] < 0x80):
        k = 4 + b[1]  # the value's field
        kind = b[k]
        text = None
        try:
            if kind == 0x0A:
                if n - k >= 2 and b[k + 1] == n - k - 2:
                    text = encode_basestring(b[k + 2 :].decode())
            elif kind == 0x18:
                if 2 <= n - k <= 11 and b[n - 1] < 0x80 and all(c >= 0x80 for c in b[k + 1 : n - 1]):
                    v = sum((c & 0x7F) << (7 * i) for i, c in enumerate(b[k + 1 :]))
                    if v < 1 << 63:
                        text = str(v)
                    elif v < 1 << 64:  # a negative int64 (ten bytes, the last 0x01)
                        text = str(v - (1 << 64))
            elif kind == 0x21:
                if n == k + 9:
                    d: float = _DOUBLE(b, k + 1)[0]
                    text = repr(d) if d - d == 0.0 else encode_basestring(real(d))  # as to_json and json do
            elif kind == 0x10 and n == k + 2 and b[k + 1] < 2:
                text = "true" if b[k + 1] else "false"
            if text is not None:
                key = b[2 : k - 2].decode()
                if not key.startswith(ROUTING_PREFIX):
                    return (key, (encode_basestring(key) + ":" + text).replace('"', '""')), True
        except UnicodeDecodeError:  # not UTF-8: the parse below refuses it
            pass
    try:
        kv = _record(b"\x32" + uvarint(n) + b).attributes[0]
        checked = True
    except _Malformed:
        if strict:
            raise
        kv = KeyValue.FromString(b)
        checked = False
    key = kv.key
    if key.startswith(ROUTING_PREFIX):
        if key in (DATABASE_KEY, TABLE_KEY):
            return (_ROUTING, (key, routing_value(key, kv.value, "log record"))), checked
        return (_ROUTING, (key, None)), checked
    return (key, encode_json({key: to_json(kv.value)})[1:-1].replace('"', '""')), checked


class _Attributes(BoundedCache[bytes, Attribute]):
    """The attributes' cache: `cache[kb]` is the `Attribute` of serialized KeyValue `kb`, read on a
    miss (`_attribute`, as `strict` says) and kept when it was checked and is short. A record's
    attributes are looked up at once (`dict(map(cache.__getitem__, ...))`): a miss costs its read,
    not a second pass over the record's other attributes (a record with one attribute new in
    every record, a request id, say, took twice the time of one without)."""

    __slots__ = ("strict",)

    def __init__(self, max_entries: int) -> None:
        super().__init__(max_entries)
        self.strict = True
        """Set by the converter for each request: as `_attribute`'s `strict`."""

    def __missing__(self, kb: bytes) -> Attribute:
        entry, checked = _attribute(kb, self.strict)
        if checked and len(kb) <= MAX_CACHED_ATTRIBUTE_BYTES:
            self.put(kb, entry)
        return entry


class LogsConverter:
    """Converts `ExportLogsServiceRequest`s to rows."""

    def __init__(self, cfg: LogsConfig | None = None) -> None:
        self.cfg = cfg = cfg or LogsConfig()
        self._router = Router(cfg.default_database or None, cfg.default_table or None, cfg.allowed_databases)
        self._ts = Timestamps(9)
        self._severity: BoundedCache[str, str] = BoundedCache(1024)
        self._attributes = _Attributes(MAX_CACHED_ATTRIBUTES)

    def turn(self) -> None:
        """Forget the destinations not used since the previous turn (node/cache.py)."""
        self._router.turn()

    def convert(self, req: ExportLogsServiceRequest | Parsed) -> ConvertResult:
        return self.convert_pieces((req,))

    def convert_pieces(self, reqs: Iterable[ExportLogsServiceRequest | Parsed]) -> ConvertResult:
        """Rows of a request given in pieces (wire.pieces), parsed one at a time: each a Parsed (it
        came as bytes, `parse_request`), refused with DecodeError as the parse of an
        ExportLogsServiceRequest refuses it when an attribute does not parse; or a message
        (OTLP/JSON), read from its bytes."""
        out = ResultBuilder(KIND_LOG, LOGS_SCHEMA)
        for req in reqs:
            if isinstance(req, Parsed):
                try:
                    self._convert(req.request, out, True)
                except _Malformed as m:
                    try:
                        ExportLogsServiceRequest.FromString(req.data)
                    except ProtobufDecodeError as e:
                        raise DecodeError(f"{_MALFORMED}: {e}") from e
                    raise DecodeError(f"{_MALFORMED}: {m}") from m  # not reached: the request's parse refuses it
            else:
                try:
                    raw = RawRequest.FromString(req.SerializeToString())
                except ProtobufDecodeError as e:  # nested deeper than a parse takes (OTLP/JSON refuses those)
                    raise DecodeError(f"{_MALFORMED}: {e}") from e
                self._convert(raw, out, False)
            out.flush()
        return out.result()

    def _convert(self, req: RawRequest, out: ResultBuilder, strict: bool) -> None:
        """The rows of `req`. A record's attributes are looked up by their bytes at once (most
        attributes of a stream of records repeat: methods, routes, codes, pods), so a known
        attribute costs one lookup and a new one its read (`_Attributes`); a record with a
        `kusto.*` attribute is read attribute by attribute (`_attributes_of`)."""
        pget = self._ts.prefixes.get  # a record's times are nearly all new, their seconds not (Timestamps.text);
        ttext = self._ts.text  # a time the same as the record before's (a batch stamped at once) is not formatted again
        last_t = last_observed = -1
        stamp = observed_stamp = ""
        resolve = self._router.resolve
        severity = self._severity
        self._attributes.strict = strict
        known = self._attributes.__getitem__
        last_dest: tuple[str, str] | None = None
        rows: list[str] = []
        for rl in req.resource_logs:
            rattrs, rdb, rtable = split_attributes(cast("Iterable[KeyValue]", rl.resource.attributes), "resource")
            resource = quoted(encode_json(rattrs))
            resource_dest = resolve(None, None, rdb, rtable)
            for sl in rl.scope_logs:
                for attrs, t, observed, text, value, trace_id, span_id, number in map(_FIELDS, sl.log_records):
                    parts: dict[str, str] = dict(map(known, attrs[:]))  # type: ignore[arg-type]  # [:]: faster than iter
                    if _ROUTING in parts:
                        parts, db, table = self._attributes_of(attrs)
                        dest = resource_dest if db is None and table is None else resolve(db, table, rdb, rtable)
                    else:
                        dest = resource_dest
                    if isinstance(dest, str):
                        out.reject(dest)
                        continue
                    if not t:
                        t = observed
                    elif not observed:
                        observed = t
                    try:  # Timestamps.text, inlined: the date text of its second, then its last 9 digits
                        if t != last_t:
                            s = str(t)
                            prefix = pget(s[:-9])  # never "" (t under 10**9: ttext)
                            stamp = f"{prefix}.{s[-9:]}Z" if prefix is not None else ttext(t)
                            last_t = t
                        if observed != last_observed:
                            s = str(observed)
                            prefix = pget(s[:-9])
                            observed_stamp = f"{prefix}.{s[-9:]}Z" if prefix is not None else ttext(observed)
                            last_observed = observed
                    except ValueError as err:
                        out.reject(str(err))
                        continue
                    sev = severity.get(text)
                    if sev is None:
                        sev = severity.put(text, field(text))
                    body = value.string_value
                    if body or value.WhichOneof("value") == "string_value":
                        escaped = encode_basestring(body)
                        if len(escaped) == len(body) + 2:  # nothing escaped: no `"` inside to double
                            quote = '""'
                        else:
                            body = escaped.replace('"', '""')
                            quote = ""
                    else:
                        body = encode_json(to_json(cast("AnyValue", value))).replace('"', '""')
                        quote = ""
                    if dest is not last_dest:
                        rows = out.rows(dest)
                        last_dest = dest
                    rows.append(
                        f"{stamp},{observed_stamp},"
                        f"{trace_id.hex() if trace_id[-1:] != _ZERO or trace_id.strip(_ZERO) else ''},"
                        f"{span_id.hex() if span_id[-1:] != _ZERO or span_id.strip(_ZERO) else ''},{sev},{number},"
                        f'"{quote}{body}{quote}",{resource},"{{{",".join(parts.values())}}}"\n'
                    )

    def _attributes_of(self, attrs: Iterable[bytes]) -> tuple[dict[str, str], Choice, Choice]:
        """The `"key":value` texts of a record's attributes by key (a repeated key: its first place,
        its last value) without `kusto.*`, and the database and table they choose."""
        cache = self._attributes
        parts: dict[str, str] = {}
        db: Choice = None
        table: Choice = None
        for kb in attrs:
            key, text = cache[kb]
            if isinstance(text, str):
                parts[key] = text
            elif text[0] == DATABASE_KEY:
                db = text[1]
            elif text[0] == TABLE_KEY:
                table = text[1]
        return parts, db, table
