"""adx-mon segment files, built byte by byte the way adx-mon's Go code writes them.

Written from shared/design/wal-format.md and adx-mon's sources (pkg/wal/segment.go `blockWrite`,
pkg/wal/segment_merger.go, pkg/wal/filename.go, storage/store.go `SegmentKey`,
transform/metrics_csv.go, schema/schema.go, go-flake), sharing no code with `node/`: what the
node reads from these is what adx-mon sends, not merely what the node itself writes.

API (everything returns `bytes` or `str`; nothing touches the disk)::

    samples = [Sample({"__name__": "cpu", "host": "a"}, ts_ms, 1.5), ...]
    value   = metrics_csv(samples)                  # header line + one CSV row per sample
    blk     = block(value)                          # len | crc | S2 payload (compression="snappy" too)
    seg     = segment(blk, block(more))             # magic, then the blocks: one segment file
    body    = merge(seg1, seg2)                     # what a collector sends for a batch (magic once)
    name    = metrics_filename("Metrics", "Cpu")    # Metrics_Cpu_<schema hash>_<flake id>.wal
    name    = filename("Logs", "App", None, flake_id())   # no schema part

- `block(value, compression="s2")` compresses with an S2 encoder that writes S2's *repeat*
  elements (which a Snappy decoder refuses), as adx-mon's `s2.EncodeBetter` may;
  `compression="snappy"` writes a plain Snappy block with cramjam. Every block gets adx-mon's
  8-byte sample header (AA AA, version 1, type, count) unless `sample_header=False` (older
  writers). adx-mon's metrics path writes type 0 (unknown) and count 0: the defaults here.
- `merge(*segments)` is `wal.NewSegmentMerger`: the 8-byte magic once, then each file without
  its own magic, back to back.
- `flake_id()` is go-flake's id as adx-mon names segments: `strconv.FormatUint(id, 16)`,
  id = ms since 2014-01-01 << 23 | host << 13 | sequence (16 hex digits for any date since 2018).
- `metrics_filename` names a segment as a collector's metrics path does: the normalised database
  and metric, then the schema hash of the default metrics columns in base 36.
"""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import cramjam
import xxhash

from tests.wal.s2_writer import encode as s2_encode

__all__ = [
    "LOG",
    "MAGIC",
    "METRIC",
    "METRICS_SCHEMA",
    "TRACE",
    "UNKNOWN",
    "FlakeIds",
    "Sample",
    "block",
    "filename",
    "flake_id",
    "merge",
    "metrics_csv",
    "metrics_filename",
    "metrics_segment",
    "schema_hash",
    "schema_line",
    "segment",
    "series_id",
]

MAGIC = b"ADXWAL\x00\x00"
"""`segmentMagic`: "ADXWAL" and two reserved zero bytes, once at the start of a file."""
UNKNOWN, METRIC, TRACE, LOG = 0, 1, 2, 3
"""Sample types of the block header (`wal.UnknownSampleType`, ...)."""
BLOCK_MAGIC = b"\xaa\xaa"
BLOCK_VERSION = 1
METRICS_SCHEMA: tuple[tuple[str, str], ...] = (("Timestamp", "datetime"), ("SeriesId", "long"),
                                                 ("Labels", "dynamic"), ("Value", "real"))
"""`schema.NewMetricsSchema()`, without lifted labels."""
FLAKE_EPOCH_MS = 1388534400000
"""go-flake's epoch, 2014-01-01T00:00:00Z, in Unix ms."""
HOST_BITS, SEQUENCE_BITS = 10, 13


# -- names -----------------------------------------------------------------------------------

def flake_id(ms: int | None = None, host: int = 0, seq: int = 0) -> str:
    """A go-flake id in lowercase hex without padding, as `flakeId.String()` writes it."""
    ms = int(time.time() * 1000) if ms is None else ms
    value = ((ms - FLAKE_EPOCH_MS) << (HOST_BITS + SEQUENCE_BITS)) | (host << SEQUENCE_BITS) | seq
    return format(value, "x")


class FlakeIds:
    """Increasing ids of one host, as a collector's `idgen.NextId()` makes them."""

    def __init__(self, host: int = 1) -> None:
        self.host = host
        self._last = 0
        self._seq = 0

    def next(self) -> str:
        ms = int(time.time() * 1000)
        if ms <= self._last:
            ms, self._seq = self._last, self._seq + 1
        else:
            self._seq = 0
        self._last = ms
        return flake_id(ms, self.host, self._seq)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def schema_hash(schema: Sequence[tuple[str, str]] = METRICS_SCHEMA) -> str:
    """`schema.SchemaHash`: xxhash64 of every Column then DataType, in base 36 (`AppendUint(.., 36)`)."""
    h = xxhash.xxh64()
    for column, data_type in schema:
        h.update(column.encode())
        h.update(data_type.encode())
    return _base36(h.intdigest())


def schema_line(schema: Sequence[tuple[str, str]] = METRICS_SCHEMA) -> bytes:
    """`schema.AppendCSVHeader`: `Column:type,...` and a newline, at the start of each block's value."""
    return (",".join(f"{c}:{t}" for c, t in schema) + "\n").encode()


def filename(database: str, table: str, schema: str | None = None, segment_id: str | None = None) -> str:
    """`wal.Filename`: `<db>_<table>[_<schema>]_<id>.wal`."""
    sid = segment_id or flake_id()
    return f"{database}_{table}_{schema}_{sid}.wal" if schema else f"{database}_{table}_{sid}.wal"


def metrics_filename(database: str, table: str, segment_id: str | None = None) -> str:
    """The name a collector gives a metrics segment: the default metrics columns' schema hash."""
    return filename(database, table, schema_hash(METRICS_SCHEMA), segment_id)


# -- rows ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """One remote-write sample: its series' labels (`__name__` among them), in the order sent
    (Prometheus sorts them by name), a timestamp in Unix ms and a value."""

    labels: Mapping[str, str]
    timestamp_ms: int
    value: float


def series_id(labels: Mapping[str, str]) -> int:
    """xxhash64 of every label's name then value, as a signed 64-bit integer (`AppendInt(int64(..))`)."""
    h = xxhash.xxh64()
    for name, value in labels.items():
        h.update(name.encode())
        h.update(value.encode())
    return int(struct.unpack(">q", h.digest())[0])


def _rfc3339nano(ms: int) -> str:
    """Go's `time.RFC3339Nano` of a UTC time: the fraction without trailing zeros, none if zero."""
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    frac = f"{ms % 1000:03d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _float(v: float) -> str:
    """`strconv.AppendFloat(v, 'f', 9, 64)`."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.9f}"


def metrics_csv(samples: Iterable[Sample], header: bool = True) -> bytes:
    """`MetricsCSVWriter.MarshalCSV` over `samples` (no lifted labels): the schema header line
    once, then `Timestamp,SeriesId,"Labels",Value` per sample; labels as a JSON object without
    `__name__` and `adxmon_*`, CSV-quoted with `"` doubled."""
    out = bytearray(schema_line(METRICS_SCHEMA) if header else b"")
    for s in samples:
        shown = {k: v for k, v in s.labels.items() if k != "__name__" and not k.startswith("adxmon_")}
        labels = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in shown.items()) + "}"
        quoted = '"' + labels.replace('"', '""') + '"'
        out += f"{_rfc3339nano(s.timestamp_ms)},{series_id(s.labels)},{quoted},{_float(s.value)}\n".encode()
    return bytes(out)


# -- blocks and files ------------------------------------------------------------------------

def compress(data: bytes, compression: str = "s2") -> bytes:
    """One compressed block payload: "s2" (with repeat elements where the data allows) or "snappy"."""
    if compression == "snappy":
        return bytes(cramjam.snappy.compress_raw(data))
    if compression == "s2":
        return s2_encode(data, repeats=True).block
    raise ValueError(f"unknown compression {compression!r}")


def block(value: bytes, *, compression: str = "s2", kind: int = UNKNOWN, count: int = 0,
          sample_header: bool = True) -> bytes:
    """`blockWrite`: `len u32 | crc32 u32 | payload`, big-endian; the payload is the compressed
    `AA AA | version | type | count u32 | value` (just `value` without `sample_header`)."""
    raw = (BLOCK_MAGIC + bytes([BLOCK_VERSION, kind]) + struct.pack(">I", count) if sample_header else b"") + value
    payload = compress(raw, compression)
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def segment(*blocks: bytes) -> bytes:
    """A segment file: the magic, then the blocks."""
    return MAGIC + b"".join(blocks)


def merge(*segments: bytes) -> bytes:
    """`wal.NewSegmentMerger(paths...)`: the magic once, then every file's bytes after its own
    8-byte magic (whatever those 8 bytes are: the merger skips them unread)."""
    return MAGIC + b"".join(s[len(MAGIC):] for s in segments)


def metrics_segment(samples_per_block: Sequence[Sequence[Sample]], compression: str = "s2") -> bytes:
    """A metrics segment as a collector writes it: one block per write, each with the header line."""
    return segment(*(block(metrics_csv(samples), compression=compression) for samples in samples_per_block))


# -- logs (added for the sinks' tests of adx-mon's logs segments) ----------------------------------
#
# Written from adx-mon's transform/otlp_logs_csv.go (`CSVWriter.MarshalLog`, the OTLP logs path of
# collectors until February 2025: `storage.LocalStore.WriteOTLPLogs`, key `<db>_<table>`, no schema
# part, no header line, `WithSampleMetadata(LogSampleType, len(logs))`), transform/native_logs_csv.go
# (`NativeLogsCSVWriter`, every logs path since: header line, key `<db>_<table>_<hash>`, type 0,
# count 0), schema/schema.go `NewLogsSchema`, Go's encoding/csv `Writer` and ffjson's `WriteJson`.
#
#     rec   = LogRecord(time_unix_nano=..., trace_id=b"...", severity_number=9, body="text", ...)
#     value = otlp_logs_csv([rec, ...], resource={"service.name": "api"})   # no header line
#     blk   = otlp_logs_block([rec, ...], resource)      # type log, count = records: as WriteOTLPLogs
#     name  = logs_filename("Logs", "App")               # Logs_App_<id>.wal: no schema part
#     value = native_logs_csv([NativeLog(...), ...])     # header line (`header=False`: before Oct 2024)
#     name  = native_logs_filename("Logs", "App")        # Logs_App_<logs schema hash>_<id>.wal

LOGS_SCHEMA: tuple[tuple[str, str], ...] = (
    ("Timestamp", "datetime"), ("ObservedTimestamp", "datetime"), ("TraceId", "string"), ("SpanId", "string"),
    ("SeverityText", "string"), ("SeverityNumber", "int"), ("Body", "dynamic"), ("Resource", "dynamic"),
    ("Attributes", "dynamic"))
"""`schema.NewLogsSchema()`: adx-mon's `DefaultLogsMapping`, its ingestor's logs databases' default."""

SEVERITY_NAMES = ["SEVERITY_NUMBER_UNSPECIFIED"] + [
    f"SEVERITY_NUMBER_{level}{'' if i == 0 else i + 1}"
    for level in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL") for i in range(4)]
"""`logsv1.SeverityNumber` names by number (0-24): what its Go `String()` gives."""

_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0")


@dataclass(frozen=True)
class LogRecord:
    """An OTLP log record as adx-mon's OTLP logs path had it. `body`: str, int, float, bool, bytes,
    a dict (kvlist), a list (array) or None (no value); attributes: string values (adx-mon writes
    `GetStringValue()` of each)."""

    time_unix_nano: int
    observed_time_unix_nano: int = 0
    trace_id: bytes = b""
    span_id: bytes = b""
    severity_text: str = ""
    severity_number: int = 0
    body: object = None
    attributes: Mapping[str, str] | None = None


@dataclass(frozen=True)
class NativeLog:
    """A log of adx-mon's native logs path (`types.Log`): body, resource and attributes as values
    that `ffjson.Marshal` writes (str, int, float, bool, None, lists and dicts of them)."""

    timestamp_ns: int
    observed_ns: int = 0
    body: Mapping[str, object] | None = None
    resource: Mapping[str, object] | None = None
    attributes: Mapping[str, object] | None = None


def go_json_string(s: str | bytes) -> bytes:
    """ffjson's `WriteJson`: `"`, `\\`, `\\n`, `\\r` escaped with a backslash; other bytes below 0x20
    and `&`, `<`, `>` as `\\u00XX`; invalid UTF-8 as `\\ufffd`; U+2028 and U+2029 as `\\u202X`."""
    raw = s.encode() if isinstance(s, str) else s
    out = bytearray(b'"')
    for ch in raw.decode("utf-8", "surrogateescape"):  # an invalid byte: a lone surrogate
        if ch in '"\\':
            out += b"\\" + ch.encode()
        elif ch == "\n":
            out += b"\\n"
        elif ch == "\r":
            out += b"\\r"
        elif ch < " " or ch in "&<>":
            out += f"\\u00{ord(ch):02x}".encode()
        elif "\udc80" <= ch <= "\udcff":
            out += b"\\ufffd"
        elif ch in "\u2028\u2029":
            out += f"\\u{ord(ch):04x}".encode()
        else:
            out += ch.encode()
    return bytes(out + b'"')


def go_csv_row(fields: Sequence[bytes]) -> bytes:
    """Go's `csv.Writer.Write` (comma `,`, `UseCRLF` false): a field is quoted when it holds `,` `"`
    CR or LF, is `\\.`, or starts with a space (`unicode.IsSpace` of its first rune); inside, `"` is
    doubled and CR and LF are written as they are. The row ends with LF."""
    out = []
    for f in fields:
        first = f[:4].decode("utf-8", "replace")[:1] if f else ""
        needs = f == b"\\." or any(c in f for c in (b",", b'"', b"\r", b"\n")) or (
            bool(first) and (first in _GO_SPACE or (ord(first) > 0xFF and first.isspace())))
        out.append(b'"' + f.replace(b'"', b'""') + b'"' if needs else f)
    return b",".join(out) + b"\n"


def otlp_ts(ts: int) -> str:
    """`otlpTSToUTC`: a value that fits in 53 bits is taken for milliseconds, else nanoseconds;
    Go's `time.RFC3339Nano` in UTC (the fraction without trailing zeros, none when zero)."""
    if ts & 0x1FFFFFFFFFFFFF == ts:
        seconds, nanos = ts // 1000, (ts % 1000) * 1_000_000
    else:
        seconds, nanos = ts // 1_000_000_000, ts % 1_000_000_000
    dt = datetime.fromtimestamp(seconds, UTC)
    frac = f"{nanos:09d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _go_float(v: float) -> str:
    """`strconv.FormatFloat(v, 'f', -1, 64)`."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    from decimal import Decimal

    text = format(Decimal(repr(v)), "f")
    return text[:-2] if text.endswith(".0") else text


def any_value(v: object, depth: int = 0) -> bytes:
    """`serializeAnyValue`: a string at the top is written as it is, deeper as a JSON string; bool,
    int and double as JSON strings of their text; kvlists and arrays as JSON; no value as `""`."""
    if isinstance(v, str):
        return v.encode() if depth == 0 else go_json_string(v)
    if isinstance(v, bool):
        return go_json_string("true" if v else "false")
    if isinstance(v, int):
        return go_json_string(str(v))
    if isinstance(v, float):
        return go_json_string(_go_float(v))
    if isinstance(v, dict):
        return b"{" + b",".join(go_json_string(k) + b":" + any_value(x, depth + 1) for k, x in v.items()) + b"}"
    if isinstance(v, list):
        return b"[" + b",".join(any_value(x, depth + 1) for x in v) + b"]"
    return go_json_string("")  # no value, or bytes: `GetStringValue()` is ""


def _string_map(values: Mapping[str, str]) -> bytes:
    return b"{" + b",".join(go_json_string(k) + b":" + go_json_string(v) for k, v in values.items()) + b"}"


def otlp_logs_csv(records: Iterable[LogRecord], resource: Mapping[str, str] | None = None,
                  now_ns: int | None = None) -> bytes:
    """`CSVWriter.MarshalLog`: one row per record, no header line. Trace and span ids are their raw
    bytes (`string(l.GetTraceId())`), the severity number its enum name, the body `any_value`,
    resource and attributes JSON objects of string values; an observed time of 0 is `now_ns`."""
    out = bytearray()
    now = time.time_ns() if now_ns is None else now_ns
    for r in records:
        observed = r.observed_time_unix_nano or now
        severity = SEVERITY_NAMES[r.severity_number] if 0 <= r.severity_number < len(SEVERITY_NAMES) \
            else str(r.severity_number)
        out += go_csv_row([otlp_ts(r.time_unix_nano).encode(), otlp_ts(observed).encode(), r.trace_id, r.span_id,
                           r.severity_text.encode(), severity.encode(), any_value(r.body),
                           _string_map(resource or {}), _string_map(r.attributes or {})])
    return bytes(out)


def otlp_logs_block(records: Sequence[LogRecord], resource: Mapping[str, str] | None = None, *,
                    compression: str = "s2", now_ns: int | None = None) -> bytes:
    """One `WriteOTLPLogs` block: the rows, sample type log, count the number of records."""
    return block(otlp_logs_csv(records, resource, now_ns), compression=compression, kind=LOG, count=len(records))


def logs_filename(database: str, table: str, segment_id: str | None = None) -> str:
    """The name of an OTLP logs segment (`<db>_<table>` key): no schema part."""
    return filename(database, table, None, segment_id)


def _go_marshal(v: object) -> bytes:
    """`ffjson.Marshal` of a plain value (encoding/json: `<`, `>`, `&`, U+2028/9 escaped, keys sorted)."""
    text = json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode()


def _native_map(values: Mapping[str, object] | None, skip: tuple[str, ...]) -> bytes:
    return b"{" + b",".join(go_json_string(k) + b":" + _go_marshal(v) for k, v in (values or {}).items()
                            if not k.startswith(skip)) + b"}"


def normalize_metric_name(name: str) -> str:
    """`schema.NormalizeMetricName`: characters other than `[A-Za-z0-9]` dropped, a lower-case letter
    after one upper-cased, the first letter upper-cased (`k8s.pod_name` -> `K8sPodName`)."""
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if not (c.isascii() and c.isalnum()):
            if i + 1 < len(name) and "a" <= name[i + 1] <= "z":
                out.append(name[i + 1].upper())
                i += 2
                continue
            i += 1
            continue
        out.append(c.upper() if i == 0 else c)
        i += 1
    return "".join(out)


def logs_mapping(lifted: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """The collector's logs mapping: `NewLogsSchema()` and, for each `lift-resources` entry sorted by
    name, `AddStringMapping(name)` (cmd/collector/main.go sets `schema.DefaultLogsMapping` to it, so
    the header line and the schema hash of every native logs segment name the lifted columns)."""
    return LOGS_SCHEMA + tuple((normalize_metric_name(n), "string") for n in sorted(lifted))


def native_logs_csv(logs: Iterable[NativeLog], header: bool = True, now_ns: int | None = None,
                    lifted: Sequence[str] = ()) -> bytes:
    """`NativeLogsCSVWriter.MarshalNativeLog`: the header line (`logs_mapping(lifted)`; each block
    has one since October 2024, `header=False` before), then per log its times, four empty fields
    (no ids or severity), body, resource (without `adxmon_`, `label.`, `annotation.` and lifted keys)
    and attributes (without `adxmon_` keys) as JSON, then one field per `lifted` resource (sorted
    lower-cased: the value when a string, else empty)."""
    out = bytearray(schema_line(logs_mapping(lifted)) if header else b"")
    now = time.time_ns() if now_ns is None else now_ns
    columns = sorted(k.lower() for k in lifted)
    for lg in logs:
        resource = {k: v for k, v in (lg.resource or {}).items() if k not in columns}
        extra = [v.encode() if isinstance(v := (lg.resource or {}).get(c), str) else b"" for c in columns]
        out += go_csv_row([otlp_ts(lg.timestamp_ns).encode(), otlp_ts(lg.observed_ns or now).encode(), b"", b"",
                           b"", b"", _native_map(lg.body, ()),
                           _native_map(resource, ("adxmon_", "label.", "annotation.")),
                           _native_map(lg.attributes, ("adxmon_",)), *extra])
    return bytes(out)


def native_logs_filename(database: str, table: str, segment_id: str | None = None,
                         lifted: Sequence[str] = ()) -> str:
    """The name of a native logs segment since October 2024: the hash of `logs_mapping(lifted)`."""
    return filename(database, table, schema_hash(logs_mapping(lifted)), segment_id)
