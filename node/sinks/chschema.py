"""The ClickHouse SQL that both ClickHouse sinks share: column types, table DDL, error classes,
and the deduplicated delivery of one batch over any connection (network server or embedded chdb).

Tables: one `MergeTree` per (database, table), created on first use from the batch's schema, with
`ORDER BY` its first `datetime` column. Columns follow `CLICKHOUSE_TYPES`; a column the table lacks
is added (like ADX's `.create-merge table`), a column whose type conflicts is a PermanentSinkError.

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

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from node.errors import InvalidNameError, PermanentSinkError, SinkError
from node.names import COLUMN_RE, MAX_COLUMN_LEN, validate_name
from node.sinks.base import CLICKHOUSE_TYPES, Batch
from node.wal.names import Schema

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
    + ", ".join(f"'{name}'" for name in CSV_SETTINGS) + "))"
)


def detect_features(conn: Conn) -> Features:
    row = conn.query(FEATURES_SQL)[0]
    known = frozenset(row[4].split(",")) & frozenset(CSV_SETTINGS)
    return Features(row[0], row[1] != "0", row[2] != "0", row[3] != "0", known)


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


def column_type(adx_type: str, features: Features) -> str:
    """The ClickHouse type of a new column of ADX type `adx_type` on a server with `features`."""
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


def compatible(adx_type: str, ch_type: str) -> bool:
    """Whether an existing column of `ch_type` can take values of `adx_type` as the node writes them."""
    b = base_type(ch_type)
    if adx_type == "datetime":
        return b.startswith("DateTime")
    if adx_type == "long":
        return b == "Int64"
    if adx_type == "int":
        return b in ("Int32", "Int64")
    if adx_type in ("real", "decimal"):
        return b in ("Float64", "Float32")
    if adx_type == "bool":
        return b in ("Bool", "UInt8")
    return b == "String"


def order_by(schema: Schema) -> str:
    for name, adx_type in schema:
        if adx_type == "datetime":
            return column(name)
    return "tuple()"


def create_table_sql(database: str, table: str, schema: Schema, features: Features,
                     dedup_window: int = DEFAULT_DEDUP_WINDOW, table_settings: Mapping[str, str] | None = None) -> str:
    """`table_settings`: more MergeTree settings (names and values the caller vouches for)."""
    cols = ", ".join(f"{column(c)} {column_type(t, features)}" for c, t in schema)
    pairs = [f"non_replicated_deduplication_window = {int(dedup_window)}"] if features.dedup_token else []
    pairs += [f"{k} = {v}" for k, v in (table_settings or {}).items()]
    settings = f" SETTINGS {', '.join(pairs)}" if pairs else ""
    return (f"CREATE TABLE IF NOT EXISTS {ident(database)}.{ident(table)} ({cols}) "
            f"ENGINE = MergeTree() ORDER BY {order_by(schema)}{settings}")


def table_columns(conn: Conn, database: str, table: str) -> dict[str, str]:
    rows = conn.query(f"SELECT name, type FROM system.columns WHERE database = '{database}' AND table = '{table}'")
    return {r[0]: r[1] for r in rows}


def ensure_table(conn: Conn, features: Features, database: str, table: str, schema: Schema,
                 dedup_window: int = DEFAULT_DEDUP_WINDOW,
                 table_settings: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Create the database and table if missing, add missing columns; return the batch's columns as
    ((name, the table's ClickHouse type), ...). A conflicting column type is a PermanentSinkError."""
    ident(database), ident(table)
    for name, _ in schema:
        column(name)
    existing = table_columns(conn, database, table)
    if not existing:
        conn.command(f"CREATE DATABASE IF NOT EXISTS {ident(database)}")
        conn.command(create_table_sql(database, table, schema, features, dedup_window, table_settings))
        existing = table_columns(conn, database, table)
    elif features.dedup_token:
        engine = conn.query(f"SELECT engine_full FROM system.tables WHERE database = '{database}' AND name = '{table}'")
        text = engine[0][0] if engine else ""
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

    def forget(self, database: str, table: str) -> None:
        for key in [k for k in self.columns if k[0] == database and k[1] == table]:
            self.columns.pop(key, None)
        self.ledgers.discard(database)


def deliver(conn: Conn, cache: TableCache, database: str, batch: Batch,
            dedup_window: int = DEFAULT_DEDUP_WINDOW, table_settings: Mapping[str, str] | None = None) -> bool:
    """Insert every row of `batch` into `database`.`batch.table` exactly once (see the module
    docstring); return False when the server already had the batch (ledger servers only)."""
    schema = batch.read_schema()
    if not schema:
        raise PermanentSinkError(f"batch {batch.id} has no schema line: cannot map its columns")
    table = batch.table
    if cache.features is None:
        cache.features = detect_features(conn)
        log.info("ClickHouse %s: DateTime64 %s, insert deduplication token %s, CSV settings it does not know: %s",
                 cache.features.version, cache.features.datetime64, cache.features.dedup_token,
                 ", ".join(sorted(set(CSV_SETTINGS) - cache.features.csv_settings)) or "none")
    features = cache.features
    try:
        key = (database, table, schema)
        columns = cache.columns.get(key)
        if columns is None:
            columns = cache.columns[key] = ensure_table(conn, features, database, table, schema, dedup_window,
                                                        table_settings)
        base = {"date_time_input_format": "best_effort", "insert_deduplicate": "1", **features.insert_settings()}
        token = dedup_token(batch)
        if features.dedup_token:
            # async_insert is on by default in new servers (26.x): a batch is big enough to be its
            # own insert, and it must be in the table, under its token, before it is confirmed.
            token_settings = {**base, "insert_deduplication_token": token, "async_insert": "0"}
            conn.insert(database, table, columns, batch.iter_csv(), token_settings)
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
    conn.insert(database, stage_name, columns, batch.iter_csv(), settings)
    partitions = conn.query(f"SELECT DISTINCT partition_id FROM system.parts WHERE database = '{database}' "
                            f"AND table = '{stage_name}' AND active")
    for (partition_id,) in partitions:
        conn.command(f"ALTER TABLE {db}.{ident(table)} ATTACH PARTITION ID {literal(partition_id)} FROM {stage}")
    # The crash window: rows are in, the ledger does not know yet.
    conn.command(f"INSERT INTO {ledger} SELECT '{token}', '{table}', {int(batch.rows)}, now()")
    conn.command(f"DROP TABLE IF EXISTS {stage}")
    return True
