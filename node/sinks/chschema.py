"""The ClickHouse SQL that both ClickHouse sinks share: column types, table DDL, error classes,
and the deduplicated delivery of one batch over any connection (network server or embedded chdb).

Tables: one `MergeTree` per (database, table), created on first use from the batch's schema.
Columns follow `CLICKHOUSE_TYPES`; a column the table lacks is added (like ADX's `.create-merge
table`), a column whose type cannot take the batch's values is a PermanentSinkError. Two layouts:

    layout   made by               engine
    -------  --------------------  ----------------------------------------------------------------
    ADXMON   the ClickHouse sink   as adx-mon's uploader: PARTITION BY toYYYYMMDD(Timestamp)
                                   ORDER BY (SeriesId, Timestamp) with both columns, (Timestamp)
                                   with one; else as LOCAL; SETTINGS index_granularity = 8192
    LOCAL    the local sink        ORDER BY the first datetime column

Columns are the same in both (SeriesId a signed Int64, as the rows and ADX have it; adx-mon makes
it UInt64, docs/sinks.md says why this sink does not).

With ADXMON, each database also gets what adx-mon's uploader creates when it opens
(`ensure_adxmon_tables`): `adxmon_schema_versions` (one row per table and schema, written when the
sink first uses them) and the empty default tables `metrics_samples` and `otel_logs`.

A table that exists is used as it is when its columns can take the batch's values (`compatible`):
any column type of adx-mon's (`SeriesId UInt64`, `DateTime64(3)`, `String` for anything) as well
as ours. A signed `long` into an unsigned column is its two's complement (`-1` -> 2**64 - 1: the
xxhash64 a SeriesId is, unsigned, as adx-mon reads it), by `unsigned` for text and by the native
sink's converters for values.

Exactly-once delivery, chosen by what the server has (`detect_features`, not by version number):

    server                              how a retried batch is kept from doubling rows
    ---------------------------------   -----------------------------------------------------------
    has `insert_deduplication_token`    the insert carries a token derived from `Batch.id` (and
    and `non_replicated_deduplication_  async_insert=0); tables are created with
    window` (ClickHouse since early     `non_replicated_deduplication_window`, so the server drops
    2022; chdb)                         every block it already has, also those of an insert that
                                        failed half-way. No crash window, as long as the retry comes
                                        within the table's last `dedup_window` insert blocks.
    older servers (e.g. Debian's 18.16) a ledger table `<db>._ingestor_batches` (one row per batch):
                                        a batch found in it is confirmed without inserting.
                                        Otherwise the rows go into a fresh staging table (a failed
                                        insert leaves nothing in the real table), which is attached
                                        to the real table (`ATTACH PARTITION ... FROM`, atomic per
                                        partition; the sink's tables have one), then the ledger row
                                        is written. Crash window: a crash or a lost connection
                                        between the attach and the ledger insert doubles the batch
                                        when it is retried.

Servers before 20.1 have no DateTime64: their `datetime` columns are `DateTime('UTC')` and keep
whole seconds; servers before 21.12 have no Bool (UInt8 instead). A table that exists is used as it
is when its columns are compatible (`compatible`).

Every insert states how its CSV is to be read (`CSV_SETTINGS`) instead of trusting the server's
defaults and profiles, which differ: before 22.7 `format_csv_allow_single_quotes` is 1, since 23.x
`input_format_csv_detect_header` drops a first row that looks like the column names, and a profile
may allow parse errors (the rows are skipped) or bad values (they become defaults). A setting the
server does not know is left out (it would fail the insert: "Unknown setting", code 115); which it
knows is asked once, with the features.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import xxhash

from node.errors import InvalidNameError, PermanentSinkError, SinkError
from node.names import COLUMN_RE, MAX_COLUMN_LEN, validate_name
from node.rows.csvtext import field
from node.sinks.base import CLICKHOUSE_TYPES, Batch
from node.wal.names import Schema, parse_filename

log = logging.getLogger(__name__)

LEDGER_TABLE = "_ingestor_batches"
STAGE_PREFIX = "_ingestor_stage_"
DEFAULT_DEDUP_WINDOW = 1000

# ClickHouse error codes that mean "this batch (or our SQL for it) will never succeed as it is":
# unparseable values, wrong types or column counts, syntax. Everything else is retried: network,
# memory, too many parts, a table or database dropped behind our back, authentication.
PERMANENT_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    10,   # NOT_FOUND_COLUMN_IN_BLOCK
    20,   # NUMBER_OF_COLUMNS_DOESNT_MATCH
    25,   # CANNOT_PARSE_ESCAPE_SEQUENCE
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    43,   # ILLEGAL_TYPE_OF_ARGUMENT
    44,   # ILLEGAL_COLUMN
    50,   # UNKNOWN_TYPE
    53,   # TYPE_MISMATCH
    62,   # SYNTAX_ERROR
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    130,  # CANNOT_READ_ARRAY_FROM_TEXT
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
})
# Codes after which the cached knowledge of a table is stale (it was dropped or altered).
STALE_CODES = frozenset({16, 47, 60, 81})  # NO_SUCH_COLUMN_IN_TABLE, UNKNOWN_IDENTIFIER, UNKNOWN_TABLE, _DATABASE
_CODE_RE = re.compile(r"Code: (\d+)")
_INTERNAL_RE = re.compile(r"[A-Za-z0-9_]{1,1100}")


class StaleTableError(SinkError):
    """The table or database is gone or changed: forget what is cached about it and retry."""


def error_from(code: int | None, message: str, where: str) -> SinkError:
    """The sink error for a ClickHouse error `code` (None: parse it out of `message`)."""
    if code is None:
        m = _CODE_RE.search(message)
        code = int(m.group(1)) if m else None
    text = f"{where}: {message.strip()[:2000]}"
    if code in PERMANENT_CODES:
        return PermanentSinkError(text)
    if code in STALE_CODES:
        return StaleTableError(text)
    return SinkError(text)


# How the CSV of an insert is read; the writer (node/rows/csvtext.py) depends on each. Sent with
# every insert whose server knows the setting (18.16 knows the first three and the last two).
CSV_SETTINGS: dict[str, str] = {
    "format_csv_delimiter": ",",
    "format_csv_allow_double_quotes": "1",
    "format_csv_allow_single_quotes": "0",  # 1 before 22.7: an unquoted leading ' opens a quoted field
    "format_csv_null_representation": "\\N",  # the writer quotes a field with a backslash
    "input_format_csv_detect_header": "0",  # 1 since 23.x: a first row equal to the column names is dropped
    "input_format_csv_skip_first_lines": "0",
    "input_format_csv_allow_whitespace_or_tab_as_delimiter": "0",
    "input_format_csv_allow_variable_number_of_columns": "0",  # else missing fields become defaults
    "input_format_csv_use_default_on_bad_values": "0",  # else an unparseable value becomes a default
    "input_format_allow_errors_num": "0",  # else rows that do not parse are skipped
    "input_format_allow_errors_ratio": "0",
}
TEXT_SETTINGS = frozenset(CSV_SETTINGS) | {"date_time_input_format"}
"""Settings of text input only (the native protocol sends typed values and leaves them out)."""


@dataclass(frozen=True)
class Features:
    """What a server supports, as far as the sinks care."""

    version: str = ""
    datetime64: bool = True
    bool_type: bool = True
    dedup_token: bool = True
    """Both `insert_deduplication_token` and the MergeTree `non_replicated_deduplication_window`."""
    csv_settings: frozenset[str] = frozenset(CSV_SETTINGS)
    """The names in CSV_SETTINGS that the server knows."""
    partitions_setting: bool = True
    """The server knows `max_partitions_per_insert_block` (sent as 0 into partitioned tables: a batch
    spanning more than 100 days must not fail for ever)."""

    def insert_settings(self) -> dict[str, str]:
        """The CSV_SETTINGS this server knows, with their values."""
        return {k: v for k, v in CSV_SETTINGS.items() if k in self.csv_settings}


FEATURES_SQL = (
    "SELECT version(),"
    " (SELECT count() FROM system.data_type_families WHERE name = 'DateTime64'),"
    " (SELECT count() FROM system.data_type_families WHERE name = 'Bool'),"
    " (SELECT count() FROM system.settings WHERE name = 'insert_deduplication_token')"
    " * (SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'),"
    " (SELECT arrayStringConcat(groupArray(name), ',') FROM system.settings WHERE name IN ("
    + ", ".join(f"'{name}'" for name in CSV_SETTINGS) + ")),"
    " (SELECT count() FROM system.settings WHERE name = 'max_partitions_per_insert_block')"
)


def detect_features(conn: Conn) -> Features:
    row = conn.query(FEATURES_SQL)[0]
    known = frozenset(row[4].split(",")) & frozenset(CSV_SETTINGS)
    return Features(row[0], row[1] != "0", row[2] != "0", row[3] != "0", known, row[5] != "0")


class Conn(Protocol):
    """One connection to a ClickHouse server or chdb store. Methods raise SinkError subclasses."""

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a SELECT, every value as text."""

    def command(self, sql: str) -> None:
        """Run a statement that returns nothing."""

    def insert(self, database: str, table: str, columns: Sequence[tuple[str, str]], chunks: Iterable[bytes],
               settings: Mapping[str, str]) -> None:
        """INSERT CSV rows (`chunks`, whole rows each) into `columns` ((name, ClickHouse type), ...)."""


def parse_tsv(text: str) -> list[list[str]]:
    """Rows of ClickHouse's TabSeparated output."""
    rows = []
    for line in text.split("\n"):
        if line:
            rows.append([_unescape(v) for v in line.split("\t")])
    return rows


_ESCAPES = {"t": "\t", "n": "\n", "\\": "\\", "r": "\r", "0": "\0", "'": "'", "b": "\b", "f": "\f"}


def _unescape(v: str) -> str:
    if "\\" not in v:
        return v
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), v)


def ident(name: str) -> str:
    """A database, table or column name from a batch or a DSN, validated and quoted for SQL."""
    try:
        validate_name(name, "name")
    except InvalidNameError as e:
        raise PermanentSinkError(str(e)) from None
    return f"`{name}`"


def column(name: str) -> str:
    """A column name from a batch's schema, validated and quoted for SQL. Columns keep a pattern of
    their own (node/names.py `COLUMN_RE`): a name's characters and `_`, as segment header lines allow."""
    if COLUMN_RE.fullmatch(name) is None:
        raise PermanentSinkError(f"invalid column name {name[:64]!r}: must be 1-{MAX_COLUMN_LEN} of [A-Za-z0-9_]")
    return f"`{name}`"


def quote(name: str) -> str:
    """A name already validated by `ident`, or one of the sink's own (`_ingestor_...`), quoted."""
    if _INTERNAL_RE.fullmatch(name) is None:
        raise PermanentSinkError(f"invalid name {name[:64]!r}")
    return f"`{name}`"


def literal(text: str) -> str:
    """`text` as a quoted SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Layout(enum.Enum):
    """How the tables a sink creates are laid out (the module docstring)."""

    LOCAL = "local"
    ADXMON = "adx-mon"


ADXMON_TYPES = {"SeriesId": "UInt64"}
"""Columns whose ClickHouse type adx-mon's uploader sets by name, whatever their ADX type. Used for
adx-mon's own default tables only: the sink's tables keep SeriesId a signed Int64 (docs/sinks.md)."""


def column_type(adx_type: str, features: Features, name: str = "", by_name: Mapping[str, str] | None = None) -> str:
    """The ClickHouse type of a new column `name` of ADX type `adx_type` on a server with
    `features`; `by_name`: types that columns of these names get whatever their ADX type."""
    if by_name and name in by_name:
        return by_name[name]
    ch = CLICKHOUSE_TYPES.get(adx_type)
    if ch is None:
        raise PermanentSinkError(f"unknown column type {adx_type!r}")
    if ch.startswith("DateTime64") and not features.datetime64:
        return "DateTime('UTC')"
    if ch == "Bool" and not features.bool_type:
        return "UInt8"
    return ch


def base_type(ch_type: str) -> str:
    """`Nullable(LowCardinality(String))` -> `String`."""
    while True:
        for wrapper in ("Nullable(", "LowCardinality("):
            if ch_type.startswith(wrapper) and ch_type.endswith(")"):
                ch_type = ch_type[len(wrapper):-1]
                break
        else:
            return ch_type


_COMPATIBLE = {
    "datetime": ("DateTime",),
    "long": ("Int64", "UInt64"),
    "int": ("Int32", "Int64", "UInt32", "UInt64"),
    "real": ("Float64", "Float32"),
    "decimal": ("Float64", "Float32"),
    "bool": ("Bool", "UInt8"),
}


def compatible(adx_type: str, ch_type: str) -> bool:
    """Whether an existing column of `ch_type` can take values of `adx_type` as the node writes them:
    its own type, one adx-mon creates for it (`UInt64` for a `long` SeriesId, `DateTime64(3)`), or
    `String`, which takes any value as its text (adx-mon makes `dynamic`, `bool`, `decimal` and
    unknown types `String`). A signed value into an unsigned column is its two's complement."""
    b = base_type(ch_type)
    if b == "String":
        return True
    if adx_type == "datetime":
        return b.startswith("DateTime")
    return b in _COMPATIBLE.get(adx_type, ())


def unsigned_bits(ch_type: str) -> int:
    """The width of an unsigned integer column type (`UInt64` -> 64), 0 for any other type."""
    b = base_type(ch_type)
    return int(b[4:]) if b.startswith("UInt") and b[4:].isdigit() else 0


def order_by(schema: Schema) -> str:
    for name, adx_type in schema:
        if adx_type == "datetime":
            return column(name)
    return "tuple()"


def engine(schema: Schema, layout: Layout = Layout.LOCAL) -> str:
    """The ENGINE clause (without SETTINGS) of a new table of `schema`."""
    names = {name for name, _ in schema}
    if layout is Layout.ADXMON and "Timestamp" in names:
        # adx-mon's uploader (ingestor/clickhouse/syncer.go): a partition per day, ordered by series.
        key = "(`SeriesId`, `Timestamp`)" if "SeriesId" in names else "(`Timestamp`)"
        return f"ENGINE = MergeTree PARTITION BY toYYYYMMDD(`Timestamp`) ORDER BY {key}"
    return f"ENGINE = MergeTree() ORDER BY {order_by(schema)}"


def create_table_sql(database: str, table: str, schema: Schema, features: Features,
                     dedup_window: int = DEFAULT_DEDUP_WINDOW, table_settings: Mapping[str, str] | None = None,
                     layout: Layout = Layout.LOCAL, by_name: Mapping[str, str] | None = None) -> str:
    """`table_settings`: more MergeTree settings (names and values the caller vouches for);
    `by_name`: column types by column name (`column_type`)."""
    cols = ", ".join(f"{column(c)} {column_type(t, features, c, by_name)}" for c, t in schema)
    pairs = ["index_granularity = 8192"] if layout is Layout.ADXMON else []
    pairs += [f"non_replicated_deduplication_window = {int(dedup_window)}"] if features.dedup_token else []
    pairs += [f"{k} = {v}" for k, v in (table_settings or {}).items()]
    settings = f" SETTINGS {', '.join(pairs)}" if pairs else ""
    return f"CREATE TABLE IF NOT EXISTS {ident(database)}.{ident(table)} ({cols}) {engine(schema, layout)}{settings}"


def table_columns(conn: Conn, database: str, table: str) -> dict[str, str]:
    rows = conn.query(f"SELECT name, type FROM system.columns WHERE database = '{database}' AND table = '{table}'")
    return {r[0]: r[1] for r in rows}


def ensure_table(conn: Conn, features: Features, database: str, table: str, schema: Schema,
                 dedup_window: int = DEFAULT_DEDUP_WINDOW,
                 table_settings: Mapping[str, str] | None = None,
                 layout: Layout = Layout.LOCAL) -> list[tuple[str, str]]:
    """Create the database and table if missing, add missing columns; return the batch's columns as
    ((name, the table's ClickHouse type), ...). A conflicting column type is a PermanentSinkError."""
    ident(database), ident(table)
    for name, _ in schema:
        column(name)
    existing = table_columns(conn, database, table)
    if not existing:
        conn.command(f"CREATE DATABASE IF NOT EXISTS {ident(database)}")
        conn.command(create_table_sql(database, table, schema, features, dedup_window, table_settings, layout))
        existing = table_columns(conn, database, table)
    elif features.dedup_token:
        found = conn.query(f"SELECT engine_full FROM system.tables WHERE database = '{database}' AND name = '{table}'")
        text = found[0][0] if found else ""
        if not text.startswith("Replicated") and "non_replicated_deduplication_window" not in text:
            log.warning("table %s.%s was not created by the sink and has no non_replicated_deduplication_window: "
                        "a retried batch can double its rows", database, table)
    conflicts = [f"{c} is {existing[c]}, the batch has {t}" for c, t in schema
                 if c in existing and not compatible(t, existing[c])]
    if conflicts:
        raise PermanentSinkError(f"table {database}.{table} conflicts with the batch's schema: " + "; ".join(conflicts))
    for c, t in schema:
        if c not in existing:
            ch = column_type(t, features)
            log.info("adding column %s %s to %s.%s", c, ch, database, table)
            try:
                conn.command(f"ALTER TABLE {ident(database)}.{ident(table)} ADD COLUMN {column(c)} {ch}")
            except SinkError:
                if c not in table_columns(conn, database, table):  # else another node added it first
                    raise
            existing[c] = ch
    return [(c, existing[c]) for c, _ in schema]


SCHEMA_VERSIONS_TABLE = "adxmon_schema_versions"
"""adx-mon's record of the tables it made: one row per (table, schema id), ReplacingMergeTree."""
ADXMON_DEFAULT_TABLES: dict[str, Schema] = {
    "metrics_samples": (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real")),
    "otel_logs": (("Timestamp", "datetime"), ("ObservedTimestamp", "datetime"), ("TraceId", "string"),
                  ("SpanId", "string"), ("SeverityText", "string"), ("SeverityNumber", "int"), ("Body", "dynamic"),
                  ("Resource", "dynamic"), ("Attributes", "dynamic")),
}
"""The tables adx-mon's uploader creates in each of its databases when it opens (they stay empty
there too: rows go to one table per metric or `kusto.table`)."""


def ensure_adxmon_tables(conn: Conn, features: Features, database: str,
                         dedup_window: int = DEFAULT_DEDUP_WINDOW) -> None:
    """What adx-mon's uploader creates in `database` when it opens: `adxmon_schema_versions` and
    its default tables."""
    conn.command(f"CREATE DATABASE IF NOT EXISTS {ident(database)}")
    conn.command(f"CREATE TABLE IF NOT EXISTS {ident(database)}.{quote(SCHEMA_VERSIONS_TABLE)} (`Table` String, "
                 "`SchemaID` String, `Version` UInt64, `Header` String, `UpdatedAt` DateTime) "
                 "ENGINE = ReplacingMergeTree(`UpdatedAt`) ORDER BY (`Table`, `SchemaID`)")
    for table, schema in ADXMON_DEFAULT_TABLES.items():
        if not table_columns(conn, database, table):
            conn.command(create_table_sql(database, table, schema, features, dedup_window, layout=Layout.ADXMON,
                                          by_name=ADXMON_TYPES))
        record_schema_version(conn, database, table, "", list(table_columns(conn, database, table).items()))


def schema_signature(columns: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """adx-mon's `Header` (`Name:Type,...`) and `Version` (xxhash64 of `Name|Type|...`) of a table's columns."""
    h = xxhash.xxh64()
    for name, ch_type in columns:
        h.update(f"{name}|{ch_type}|".encode())
    return ",".join(f"{n}:{t}" for n, t in columns), h.intdigest()


def record_schema_version(conn: Conn, database: str, table: str, schema_id: str,
                          columns: Sequence[tuple[str, str]]) -> None:
    """A row of `adxmon_schema_versions`, as adx-mon writes one when it ensures a table."""
    header, version = schema_signature(columns)
    conn.command(f"INSERT INTO {ident(database)}.{quote(SCHEMA_VERSIONS_TABLE)} (`Table`, `SchemaID`, `Version`, "
                 f"`Header`, `UpdatedAt`) SELECT {literal(table)}, {literal(schema_id or 'default')}, {version}, "
                 f"{literal(header)}, now()")


_FIELD = rb'(?:"[^"]*(?:""[^"]*)*"|[^,"\r\n]*)'


def unsigned_text(chunks: Iterable[bytes], columns: Sequence[tuple[str, str]]) -> Iterator[bytes]:
    """`chunks` of CSV rows (whole rows each) with every negative integer in a column of an unsigned
    type written as its two's complement (`-1` into UInt64 -> `18446744073709551615`): ClickHouse's
    text formats refuse a `-` for an unsigned column. Chunks pass as they are when no such column
    exists. Each row is matched whole by one regular expression (30-80 MB/s here); a chunk the rows do not
    tile exactly (never seen: the node writes RFC 4180 rows) is converted by Python's csv instead."""
    targets = {i: unsigned_bits(t) for i, (_, t) in enumerate(columns) if unsigned_bits(t)}
    if not targets:
        yield from chunks
        return
    width, last = len(columns), max(targets)
    # Each field up to the last unsigned column is a group; the rest of the row is one.
    head = ",".join(f"({_FIELD.decode()})" for _ in range(last + 1))
    tail = f"((?:,{_FIELD.decode()}){{{width - last - 1}}})"
    row = re.compile(f"{head}{tail}\\r?\\n".encode())

    def fix(m: re.Match[bytes]) -> bytes:
        changed = False
        fields = list(m.groups())
        for i, bits in targets.items():
            v = fields[i]
            if v[:1] == b"-" and v[1:].isdigit():
                fields[i] = str(int(v) % (1 << bits)).encode()
                changed = True
        return b",".join(fields[:-1]) + fields[-1] + b"\n" if changed else m.group(0)

    for chunk in chunks:
        covered = 0

        def counted(m: re.Match[bytes]) -> bytes:
            nonlocal covered
            covered += m.end() - m.start()
            return fix(m)

        out = row.sub(counted, chunk)
        yield out if covered == len(chunk) else _unsigned_by_csv(chunk, targets)


def _unsigned_by_csv(chunk: bytes, targets: Mapping[int, int]) -> bytes:
    out = io.StringIO()
    for fields in csv.reader(io.StringIO(chunk.decode("utf-8", "replace"), newline="")):
        for i, bits in targets.items():
            if i < len(fields) and fields[i].startswith("-") and fields[i][1:].isdigit():
                fields[i] = str(int(fields[i]) % (1 << bits))
        out.write(",".join(field(f) for f in fields) + "\n")
    return out.getvalue().encode()


def _values(conn: Conn, batch: Batch, columns: Sequence[tuple[str, str]]) -> Iterator[bytes]:
    """The batch's rows for `columns`: as text for a connection that sends text, with signed values
    of unsigned columns made unsigned (`unsigned_text`); a connection that sends typed values
    (`typed_values`, the native protocol) converts them itself."""
    rows = batch.iter_csv()
    return rows if getattr(conn, "typed_values", False) else unsigned_text(rows, columns)


def dedup_token(batch: Batch) -> str:
    """The idempotency key of a batch on the server: short, and the same for every retry."""
    return "ingestor-" + hashlib.sha256(batch.id.encode()).hexdigest()[:40]


class TableCache:
    """Which tables were checked, per (database, table, schema), and the ledgers that exist.
    One per connection target; shared by threads (set and dict operations are atomic)."""

    def __init__(self) -> None:
        self.columns: dict[tuple[str, str, Schema], list[tuple[str, str]]] = {}
        self.ledgers: set[str] = set()
        self.features: Features | None = None
        self.adxmon: set[str] = set()
        """Databases where adx-mon's own tables were ensured (Layout.ADXMON)."""

    def forget(self, database: str, table: str) -> None:
        for key in [k for k in self.columns if k[0] == database and k[1] == table]:
            self.columns.pop(key, None)
        self.ledgers.discard(database)
        self.adxmon.discard(database)


def deliver(conn: Conn, cache: TableCache, database: str, batch: Batch,
            dedup_window: int = DEFAULT_DEDUP_WINDOW, table_settings: Mapping[str, str] | None = None,
            layout: Layout = Layout.LOCAL) -> bool:
    """Insert every row of `batch` into `database`.`batch.table` exactly once (see the module
    docstring), creating what is missing in `layout`; return False when the server already had the
    batch (ledger servers only)."""
    schema = batch.read_schema()  # blocks without a header line: the default of their kind (base.py)
    if not schema:
        if not any(batch.iter_csv()):
            return True  # no row: nothing to insert
        raise PermanentSinkError(f"batch {batch.id} has no schema line: cannot map its columns")
    table = batch.table
    if cache.features is None:
        cache.features = detect_features(conn)
        log.info("ClickHouse %s: DateTime64 %s, insert deduplication token %s, CSV settings it does not know: %s",
                 cache.features.version, cache.features.datetime64, cache.features.dedup_token,
                 ", ".join(sorted(set(CSV_SETTINGS) - cache.features.csv_settings)) or "none")
    features = cache.features
    try:
        if layout is Layout.ADXMON and database not in cache.adxmon:
            ensure_adxmon_tables(conn, features, database, dedup_window)
            cache.adxmon.add(database)
        key = (database, table, schema)
        columns = cache.columns.get(key)
        if columns is None:
            columns = ensure_table(conn, features, database, table, schema, dedup_window, table_settings, layout)
            if layout is Layout.ADXMON:
                record_schema_version(conn, database, table, parse_filename(batch.segments[0].path.name).schema or "",
                                      columns)
            cache.columns[key] = columns
        base = {"date_time_input_format": "best_effort", "insert_deduplicate": "1", **features.insert_settings()}
        if layout is Layout.ADXMON and features.partitions_setting:
            base["max_partitions_per_insert_block"] = "0"
        token = dedup_token(batch)
        if features.dedup_token:
            # async_insert is on by default in new servers (26.x): a batch is big enough to be its
            # own insert, and it must be in the table, under its token, before it is confirmed.
            token_settings = {**base, "insert_deduplication_token": token, "async_insert": "0"}
            conn.insert(database, table, columns, _values(conn, batch, columns), token_settings)
            return True
        return _deliver_with_ledger(conn, cache, database, table, columns, batch, token, base)
    except StaleTableError:
        cache.forget(database, table)
        raise


def _deliver_with_ledger(conn: Conn, cache: TableCache, database: str, table: str,
                         columns: list[tuple[str, str]], batch: Batch, token: str, settings: Mapping[str, str]) -> bool:
    db = ident(database)
    ledger = f"{db}.{quote(LEDGER_TABLE)}"
    if database not in cache.ledgers:
        conn.command(f"CREATE TABLE IF NOT EXISTS {ledger} (BatchId String, Table String, Rows UInt64, "
                     "Uploaded DateTime) ENGINE = MergeTree() ORDER BY BatchId")
        cache.ledgers.add(database)
    stage_name = STAGE_PREFIX + token.removeprefix("ingestor-")[:24]
    stage = f"{db}.{quote(stage_name)}"
    if conn.query(f"SELECT count() FROM {ledger} WHERE BatchId = '{token}'")[0][0] != "0":
        log.info("batch %s is already in %s.%s (ledger): not inserted again", batch.id, database, table)
        conn.command(f"DROP TABLE IF EXISTS {stage}")
        return False
    conn.command(f"DROP TABLE IF EXISTS {stage}")
    conn.command(f"CREATE TABLE {stage} AS {db}.{ident(table)}")
    conn.insert(database, stage_name, columns, _values(conn, batch, columns), settings)
    partitions = conn.query(f"SELECT partition_id, sum(rows) FROM system.parts WHERE database = '{database}' "
                            f"AND table = '{stage_name}' AND active GROUP BY partition_id ORDER BY partition_id")
    several = len(partitions) > 1
    for partition_id, rows in partitions:
        # A table partitioned by day (Layout.ADXMON) takes a batch one partition at a time: each is
        # recorded once attached, so a retry after a crash between two attaches skips those done.
        part_token = f"{token}/{partition_id}"
        if several and conn.query(f"SELECT count() FROM {ledger} WHERE BatchId = {literal(part_token)}")[0][0] != "0":
            continue
        conn.command(f"ALTER TABLE {db}.{ident(table)} ATTACH PARTITION ID {literal(partition_id)} FROM {stage}")
        if several:
            conn.command(f"INSERT INTO {ledger} SELECT {literal(part_token)}, {literal(table)}, {int(rows)}, now()")
    # The crash window: rows are in, the ledger does not know yet.
    conn.command(f"INSERT INTO {ledger} SELECT '{token}', '{table}', {int(batch.rows)}, now()")
    conn.command(f"DROP TABLE IF EXISTS {stage}")
    return True
