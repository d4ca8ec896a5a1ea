"""What every sink implements, and the batch it is given.

A batch is closed segments of one table prefix, oldest first. A sink reads the rows with
`Batch.iter_csv()` (header lines stripped), delivers them, and returns only once the destination
confirmed them; it raises SinkError to have the batch retried later, PermanentSinkError when it
will never accept it. Sinks are synchronous: the uploader calls `upload()` from a worker thread,
at most `--uploads` at a time per sink.

Blocks without a header line (segments adx-mon wrote: docs/sinks.md, "Segments from adx-mon").
The columns of a batch are those of its first block's header line, else the default columns of
the block's kind (`DEFAULT_SCHEMAS`, adx-mon's default mappings, which are this node's columns),
the kind read from, in this order: the schema hash in the file name (the hash of a default
schema), the block's sample type (`log` or `metric`), the first row (4 fields and an integer
SeriesId: metrics; 9 fields and an RFC 3339 ObservedTimestamp: logs). adx-mon's OTLP logs rows
(`transform/otlp_logs_csv.go`) are rewritten on the way into what this node's own log rows hold
(`_log_row`): ids as hex, the severity number as a number, the body as JSON. A block whose
columns cannot be told, or whose rows do not fit them, is a SegmentError that says which segment,
block and row; a segment that does not read (corrupt on disk, or a peer's block that does not
decode) a CorruptSegmentError. The uploader quarantines that segment alone.

Row counts: a block declares its rows; blocks that declare 0 (adx-mon's metrics and native logs)
are counted from their CSV records (`count_records`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from node.errors import CorruptionError, CorruptSegmentError, PermanentSinkError, SegmentError
from node.rows.csvtext import field as csv_field
from node.rows.csvtext import quoted
from node.rows.logs import LOGS_SCHEMA
from node.rows.series import BASE_SCHEMA
from node.rows.traces import TRACES_SCHEMA
from node.wal import format as fmt
from node.wal.format import count_records
from node.wal.names import Schema, SegmentName, schema_hash
from node.wal.segment import Block, iter_blocks
from node.wal.table import SegmentInfo

log = logging.getLogger(__name__)

# ADX/Kusto scalar types in segment headers -> what a ClickHouse column of it is.
CLICKHOUSE_TYPES = {
    "datetime": "DateTime64(9, 'UTC')",
    "long": "Int64",
    "int": "Int32",
    "real": "Float64",
    "string": "String",
    "dynamic": "String",
    "bool": "Bool",
    "guid": "String",
    "timespan": "String",
    "decimal": "Float64",
}


DEFAULT_SCHEMAS: dict[int, Schema] = {fmt.KIND_METRIC: BASE_SCHEMA, fmt.KIND_LOG: LOGS_SCHEMA,
                                      fmt.KIND_TRACE: TRACES_SCHEMA}
"""The columns of a block without a header line, by kind: adx-mon's default mappings
(`schema.NewMetricsSchema`, `schema.NewLogsSchema`, which its ingestor gives the metrics and the
logs databases' uploaders), the same as this node's; traces: this node's (adx-mon has none)."""
KIND_NAMES = {fmt.KIND_METRIC: "metrics", fmt.KIND_LOG: "logs", fmt.KIND_TRACE: "traces"}
_KIND_OF_HASH = {schema_hash(schema): kind for kind, schema in DEFAULT_SCHEMAS.items()}
_INTEGER = re.compile(r"-?\d{1,20}")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_GO_INF = re.compile(rb'(?m)^([^,\n]*,-?\d+,"(?:[^"]|"")*",)([+-])Inf(?=,|\r?$)')
"""A metrics row whose Value is Go's `+Inf` / `-Inf` (`strconv.AppendFloat`), its part before the value."""
_SEVERITY = {"SEVERITY_NUMBER_UNSPECIFIED": 0} | {
    f"SEVERITY_NUMBER_{level}{'' if i == 0 else i + 1}": base + i
    for level, base in (("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17), ("FATAL", 21))
    for i in range(4)}
"""OTLP's `SeverityNumber` enum names, as Go's `String()` writes them, and their numbers."""


def parse_schema_line(line: bytes) -> Schema:
    """`Timestamp:datetime,Value:real\\n` -> (("Timestamp", "datetime"), ("Value", "real"))."""
    cols = []
    for part in line.decode().strip().split(","):
        name, _, typ = part.partition(":")
        cols.append((name, typ))
    return tuple(cols)


def batch_id(database: str, table: str, names: Iterable[str]) -> str:
    """The id of a batch of the segments `names` (file names, oldest first)."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(b"\n")
    return f"{database}_{table}_{h.hexdigest()[:32]}"


def go_infinities(value: bytes) -> bytes:
    """Metrics rows with adx-mon's `+Inf` / `-Inf` Value (Go's spelling) as `Infinity` / `-Infinity`,
    the spelling this node writes for ADX's `real` and ClickHouse (node/rows/csvtext.py): ClickHouse
    18.16 refuses `+Inf` in CSV (checked: `is not like Float64`, the batch refused for ever), and ADX
    makes a value its type cannot parse null. Only the Value column: a label value `+Inf` (`le`) is
    left as it is. Rows without either pass untouched."""
    if b"Inf\n" not in value and b"Inf," not in value and b"Inf\r" not in value:
        return value
    return _GO_INF.sub(lambda m: m.group(1) + (b"Infinity" if m.group(2) == b"+" else b"-Infinity"), value)


def _where(seg: SegmentInfo, block: Block) -> str:
    return f"segment {seg.path.name}, block at offset {block.offset}"


def _first_record(value: bytes) -> list[str]:
    text = value[:1 << 16].decode("utf-8", "replace")
    return next(csv.reader(io.StringIO(text, newline="")), [])


def headerless_kind(name: SegmentName, kind: int, value: bytes, where: str) -> int:
    """The kind (a key of DEFAULT_SCHEMAS) of a block without a header line, by the schema hash of
    its file name, else its sample type, else the shape of its first row (see the module's doc)."""
    if name.schema:
        found = _KIND_OF_HASH.get(name.schema)
        if found is None:
            known = ", ".join(f"{KIND_NAMES[k]} {h}" for h, k in _KIND_OF_HASH.items())
            raise PermanentSinkError(f"{where}: no header line, and the schema hash {name.schema} of its file name is "
                                     f"not that of a default schema ({known}): its columns are unknown")
        return found
    if kind in DEFAULT_SCHEMAS:
        return kind
    first = _first_record(value)
    if len(first) == len(BASE_SCHEMA) and _INTEGER.fullmatch(first[1]):
        return fmt.KIND_METRIC
    if len(first) == len(LOGS_SCHEMA) and _RFC3339.fullmatch(first[1]):
        return fmt.KIND_LOG
    raise PermanentSinkError(
        f"{where}: no header line, sample type {kind} (unknown), and its first row ({len(first)} fields) is neither "
        f"adx-mon's metrics row (4 fields: Timestamp, SeriesId (an integer), Labels, Value) nor its logs row "
        f"(9 fields: Timestamp, ObservedTimestamp (a time), TraceId, SpanId, SeverityText, SeverityNumber, Body, "
        f"Resource, Attributes): its columns are unknown")


def _hex_id(text: str, size: int) -> str:
    """A trace or span id as this node writes it (lower-case hex, "" when absent or all zero), from
    adx-mon's text of it: the raw bytes (`string(l.GetTraceId())`), or hex already."""
    if not text:
        return ""
    if len(text) == 2 * size and _HEX.fullmatch(text):
        raw = bytes.fromhex(text)
    else:
        raw = text.encode("utf-8", "surrogateescape")
    return raw.hex() if raw.strip(b"\0") else ""


def _severity(text: str) -> str:
    """adx-mon's OTLP writer writes the severity's enum name (`SEVERITY_NUMBER_INFO`): its number."""
    number = _SEVERITY.get(text)
    return text if number is None else str(number)


def _reject_constant(name: str) -> None:
    raise ValueError(name)


def _json(text: str) -> str:
    """`text` if it is JSON, else `text` as a JSON string: what ADX makes of a value for a `dynamic`
    column (adx-mon's OTLP writer puts a string body as it is, other bodies as JSON)."""
    try:
        json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return json.dumps(text, ensure_ascii=False)
    return text


def _log_rows(value: bytes, where: str) -> tuple[bytes, int]:
    """adx-mon's logs rows (`transform/otlp_logs_csv.go`, `native_logs_csv.go` before its header
    line) as this node's (node/rows/logs.py): the same 9 columns; trace and span ids as hex (adx-mon
    wrote their raw bytes), the severity as its number (adx-mon: its enum name), the body, resource
    and attributes as JSON (a string body as a JSON string). The rest as it is. Returns the rows and
    their number; PermanentSinkError for a row that is not 9 fields."""
    text = value.decode("utf-8", "surrogateescape")  # raw id bytes are no UTF-8: kept for _hex_id
    out: list[str] = []
    width = len(LOGS_SCHEMA)
    try:
        for n, f in enumerate(csv.reader(io.StringIO(text, newline=""), strict=True), 1):
            if len(f) != width:
                raise PermanentSinkError(f"{where}, row {n}: {len(f)} fields, adx-mon's logs rows have {width} "
                                         f"({', '.join(c for c, _ in LOGS_SCHEMA)})")
            # The times as adx-mon wrote them (one ADX cannot read is null there, as in adx-mon)
            out.append(f"{csv_field(f[0])},{csv_field(f[1])},{_hex_id(f[2], 16)},{_hex_id(f[3], 8)},"
                       f"{csv_field(f[4])},{_severity(f[5])},{quoted(_json(f[6]))},{quoted(_json(f[7]))},"
                       f"{quoted(_json(f[8]))}\n")
    except csv.Error as e:
        raise PermanentSinkError(f"{where}: its rows are not CSV: {e}") from None
    rows = "".join(out)
    try:
        return rows.encode(), len(out)
    except UnicodeEncodeError:  # bytes that are no UTF-8 outside the ids: U+FFFD, as ADX reads them
        return rows.encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode(), len(out)


@contextlib.contextmanager
def _alone(seg: SegmentInfo) -> Iterator[None]:
    """A refusal of `seg`'s rows (PermanentSinkError) as a SegmentError: the uploader then
    quarantines that segment alone, not its batch."""
    try:
        yield
    except SegmentError:
        raise
    except PermanentSinkError as e:
        raise SegmentError(seg.path, str(e)) from None


@dataclass
class Batch:
    """Closed segments of one prefix, to be delivered together."""

    database: str
    table: str
    segments: tuple[SegmentInfo, ...]
    schema: Schema | None = None
    """Columns from the first block's header line, or the default of its kind when it has none
    (`headerless`); None until read (`read_schema`), or for a batch without a block."""
    kind: int = fmt.KIND_UNKNOWN
    uncompressed_bytes: int = field(default=0)
    """Bytes of CSV rows; known once iter_csv() ran to the end."""
    rows: int = field(default=0)
    """CSV records; known once iter_csv() ran to the end."""

    token: str | None = None
    """The id of the delivery this batch belongs to, when it is what is left of a recorded one
    (some of its segments vanished): the sink's deduplication then recognises the whole."""
    headerless: bool = False
    """The first block has no header line: `schema` is DEFAULT_SCHEMAS[kind], and every block
    without one is read as rows of `kind` (adx-mon's logs rows rewritten as this node's)."""
    _checked: bool = field(default=False, repr=False)

    @property
    def id(self) -> str:
        """Deterministic from the segments: the same batch retried has the same id."""
        if self.token is not None:
            return self.token
        return batch_id(self.database, self.table, (s.path.name for s in self.segments))

    @property
    def size(self) -> int:
        """Bytes of segment files (compressed)."""
        return sum(s.size for s in self.segments)

    def _blocks(self) -> Iterator[tuple[SegmentInfo, Block]]:
        """Every block of every segment; a segment that does not read (turned corrupt on disk, or
        a peer's block that passed its CRC and does not decode: a peer's segment is not decoded on
        receipt, node/transfer/intake.py) is a CorruptSegmentError naming it: it will not read
        better later, and the uploader quarantines it alone."""
        for seg in self.segments:
            try:
                for block in iter_blocks(seg.path):
                    yield seg, block
            except CorruptionError as e:
                raise CorruptSegmentError(seg.path, f"offset {e.offset}: {e.reason}") from None

    def iter_csv(self) -> Iterator[bytes]:
        """The rows of every block of every segment, in order, schema header lines stripped
        (blocks without one read as `read_schema` says); sets `uncompressed_bytes` and `rows`."""
        if self.schema is None:
            self._resolve()
        metrics = self.schema is not None and self.schema[:len(BASE_SCHEMA)] == BASE_SCHEMA
        counted = [0, 0]
        try:
            yield from self._csv(metrics, counted)
        except SegmentError as e:
            e.rows_before = counted[1]
            raise
        self.uncompressed_bytes, self.rows = counted

    def _csv(self, metrics: bool, counted: list[int]) -> Iterator[bytes]:
        """`iter_csv`'s blocks; `counted`: [bytes, rows] yielded so far."""
        for seg, block in self._blocks():
            header, value = fmt.strip_schema_line(block.value)
            with _alone(seg):
                if header is None and self.headerless:
                    value, n = self._headerless_rows(seg, block, value)
                else:
                    if header is not None and self.headerless and parse_schema_line(header) != self.schema:
                        raise PermanentSinkError(f"{_where(seg, block)}: header line {header.decode().strip()[:200]} "
                                                 f"in a batch whose first block has none (the default "
                                                 f"{KIND_NAMES[self.kind]} columns)")
                    n = block.count or count_records(value)
            if metrics:  # adx-mon's metrics rows, header line or not
                value = go_infinities(value)
            yield value
            counted[0] += len(value)
            counted[1] += n

    def _resolve(self) -> None:
        """The schema and kind from the first block with a header line or a row (its header line, or
        the default of its kind); none for a batch without either."""
        for seg, block in self._blocks():
            header, value = fmt.strip_schema_line(block.value)
            if header is not None:
                self.schema = parse_schema_line(header)
                if self.kind == fmt.KIND_UNKNOWN:
                    self.kind = block.kind
            elif not value.strip():
                continue  # a block without a header line or a row says nothing
            else:
                with _alone(seg):
                    self.kind = headerless_kind(seg.name, block.kind, value, _where(seg, block))
                    self.schema, self.headerless = DEFAULT_SCHEMAS[self.kind], True
                    self._headerless_rows(seg, block, value)  # the first block's rows fit, before anything is sent
            return

    def _headerless_rows(self, seg: SegmentInfo, block: Block, value: bytes) -> tuple[bytes, int]:
        """A block without a header line in a headerless batch: its rows (rewritten for logs), their number."""
        if not value.strip():
            return b"", 0  # no row (a write of nothing)
        where = _where(seg, block)
        kind = headerless_kind(seg.name, block.kind, value, where)
        if kind != self.kind:
            raise PermanentSinkError(f"{where}: a block of {KIND_NAMES[kind]} rows in a batch of "
                                     f"{KIND_NAMES[self.kind]} rows (both without a header line)")
        if kind == fmt.KIND_LOG:
            rows, n = _log_rows(value, where)
            if block.count and block.count != n:
                log.warning("%s: the block says %d rows, its CSV holds %d: %d taken", where, block.count, n, n)
            return rows, n
        assert self.schema is not None
        first = _first_record(value) if value else []
        if first and len(first) != len(self.schema):
            lifted = " (a metrics block written with lifted labels, whose columns no header line names)" \
                if kind == fmt.KIND_METRIC and len(first) > len(self.schema) else ""
            raise PermanentSinkError(f"{where}: rows of {len(first)} fields without a header line; the default "
                                     f"{KIND_NAMES[kind]} columns are {len(self.schema)} "
                                     f"({', '.join(c for c, _ in self.schema)}){lifted}")
        return value, block.count or count_records(value)

    def read_schema(self) -> Schema | None:
        """The columns of the batch's rows: its first block's header line, or the default of its
        kind (see the module's doc). A headerless logs batch is read through once here, so that a
        row that cannot be read refuses the batch before any of it is sent (and `rows` is known)."""
        if self.schema is None:
            self._resolve()
        if self.headerless and self.kind == fmt.KIND_LOG and not self._checked:
            self._checked = True
            try:
                for _ in self.iter_csv():
                    pass
            except SegmentError as e:
                e.rows_before = 0  # read here, before the sink was handed any of it
                raise
        return self.schema


class Sink(Protocol):
    """A destination of batches."""

    name: str

    def start(self) -> None:
        """Connect / create what is needed; raise SinkError if the sink cannot work at all."""

    def stop(self) -> None:
        """Release connections."""

    def accepts(self, database: str) -> bool:
        """Whether this sink is configured for `database` (receivers refuse other databases)."""

    def upload(self, batch: Batch) -> None:
        """Deliver every row of `batch`; return only once the destination confirmed them."""


def batch_limit(sink: Sink) -> int | None:
    """The largest batch (bytes of CSV) `sink` can take now, for sinks that have a say (the local
    sink: the room on its volume); None: no limit but the configured batch size."""
    limit = getattr(sink, "batch_limit", None)
    return limit() if callable(limit) else None
