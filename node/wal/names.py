"""Segment file names, segment ids and schema hashes.

    <Database>_<Table>[_<SchemaHash>]_<SegmentId>.wal

`_` separates the fields, as in adx-mon. Database and table are names (node/names.py: runs of
`[A-Za-z0-9]` joined by single `_`, at most 64 and 150 characters), written in their *file form*:
each `_` of a name is `-` in the file name (`observability_logs` -> `observability-logs_Logs_...`).
No name holds a `-`, so the mapping is a bijection and a file name has one reading; a name
without `_` is written as it is. Every reader of file names and prefixes goes through this module
(`parse_filename`, `parse_prefix`, `SegmentName`): a prefix split on `_` by hand gives file forms,
not names.

A name from the network that does not match is refused (InvalidNameError), never cleaned into a
path: a file-form name holds only letters, digits and inner `-`, never a separator, a dot or NUL,
so it can never address a path outside the storage directory.

adx-mon's own reader splits a file name on every `_` (3 fields: database, table, id; 4: with a
schema). Its writers never put `_` inside a name (they strip it: `observability_logs` becomes
`observabilitylogs`), so for the files they write both readings agree. A file such as
`observability_logs_t_<id>.wal` is read here as adx-mon reads it: database `observability`, table
`logs`, schema `t`.

SegmentId is a flake id in 16 lowercase hex digits (lexical order is creation order)::

    | 41 bits: ms since 2014-01-01T00:00:00Z | 10 bits: host id | 13 bits: sequence |
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import xxhash

from node import names
from node.errors import InvalidNameError
from node.names import FILE_NAME_PATTERN, MAX_DATABASE_LEN, MAX_TABLE_LEN

_SCHEMA = "[0-9a-z]{1,13}"
_PREFIX = rf"(?P<db>{FILE_NAME_PATTERN})_(?P<table>{FILE_NAME_PATTERN})(?:_(?P<schema>{_SCHEMA}))?"
_FILE_RE = re.compile(rf"{_PREFIX}_(?P<id>[0-9a-f]{{16}})\.wal")
_PREFIX_RE = re.compile(_PREFIX)
_MAX_FILE_NAME = 255

FLAKE_EPOCH_MS = 1388534400000  # 2014-01-01T00:00:00Z
_SEQ_BITS, _HOST_BITS = 13, 10


def parse_prefix(prefix: str) -> tuple[str, str, str | None]:
    """(database, table, schema hash or None) of a prefix `<Database>_<Table>[_<SchemaHash>]` in
    file form; InvalidNameError when it is not one (the database and table are names again:
    `observability-logs_Logs` -> ("observability_logs", "Logs", None))."""
    m = _PREFIX_RE.fullmatch(prefix) if isinstance(prefix, str) and len(prefix) < _MAX_FILE_NAME else None
    if m is None:
        raise InvalidNameError(f"invalid segment prefix {str(prefix)[:64]!r}")
    database = names.from_file_form(m["db"], "database", MAX_DATABASE_LEN)
    table = names.from_file_form(m["table"], "table", MAX_TABLE_LEN)
    return database, table, m["schema"]


def validate_prefix(prefix: str) -> str:
    """Return `prefix` (`<Database>_<Table>[_<SchemaHash>]`, file form) if valid, else raise InvalidNameError."""
    parse_prefix(prefix)
    return prefix


def database_of(prefix: str) -> str:
    """The database (a name, not its file form) of a valid prefix."""
    return parse_prefix(prefix)[0]


Schema = tuple[tuple[str, str], ...]


def schema_hash(schema: Schema) -> str:
    """xxhash64 of every column's name + type, concatenated, in base 36."""
    h = xxhash.xxh64()
    for column, data_type in schema:
        h.update(column.encode())
        h.update(data_type.encode())
    return base36(h.intdigest())


def base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    while True:
        n, r = divmod(n, 36)
        out.append(digits[r])
        if n == 0:
            return "".join(reversed(out))


def schema_line(schema: Schema) -> bytes:
    """The CSV header line written at the start of every block of a schema'd segment."""
    return (",".join(f"{c}:{t}" for c, t in schema) + "\n").encode()


def make_prefix(database: str, table: str, schema_id: str | None = None) -> str:
    """The prefix of `database`.`table` (names; InvalidNameError if either is not one) in file form."""
    names.validate_name(database, "database", MAX_DATABASE_LEN)
    names.validate_name(table, "table", MAX_TABLE_LEN)
    db, tb = names.file_form(database), names.file_form(table)
    return f"{db}_{tb}_{schema_id}" if schema_id else f"{db}_{tb}"


@dataclass(frozen=True, slots=True)
class SegmentName:
    """A segment's file name, with its database and table as names (not their file forms)."""

    database: str
    table: str
    schema: str | None
    segment_id: str
    prefix: str = field(init=False, repr=False, compare=False)
    """`DB_TABLE[_SCHEMA]` in file form, checked and made once: the upload round reads it for every
    segment. Read it back with `parse_prefix`, never by splitting it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", make_prefix(self.database, self.table, self.schema))

    @property
    def filename(self) -> str:
        return f"{self.prefix}_{self.segment_id}.wal"

    @property
    def created_ms(self) -> int:
        """Unix time in ms at which the segment id was made."""
        return created_ms(self.segment_id)


def created_ms(segment_id: str) -> int:
    """Unix time in ms at which a segment id (or a journal's) was made."""
    return (int(segment_id, 16) >> (_SEQ_BITS + _HOST_BITS)) + FLAKE_EPOCH_MS


def parse_filename(name: str) -> SegmentName:
    """Parse a segment file name; InvalidNameError when it is not one."""
    m = _FILE_RE.fullmatch(name) if isinstance(name, str) and len(name) <= _MAX_FILE_NAME else None
    if m is None:
        raise InvalidNameError(f"not a segment file name: {str(name)[:128]!r}")
    return SegmentName(names.from_file_form(m["db"], "database", MAX_DATABASE_LEN),
                       names.from_file_form(m["table"], "table", MAX_TABLE_LEN), m["schema"], m["id"])


def host_id(node_name: str, worker: int = 0) -> int:
    """10-bit host id from the node name; workers of one node get distinct ids."""
    return (xxhash.xxh64_intdigest(node_name.encode()) + worker) % (1 << _HOST_BITS)


def segment_host(segment_id: str) -> int:
    """The host id bits of a segment id."""
    return (int(segment_id, 16) >> _SEQ_BITS) & ((1 << _HOST_BITS) - 1)


class FlakeIds:
    """Time-ordered, unique-per-host segment ids. Thread-safe."""

    def __init__(self, host: int) -> None:
        self._host = host % (1 << _HOST_BITS)
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def next(self) -> str:
        with self._lock:
            now = int(time.time() * 1000)
            if now <= self._last_ms:
                # Same millisecond (or the clock stepped back): keep ids increasing.
                self._seq += 1
                if self._seq >= 1 << _SEQ_BITS:
                    self._last_ms += 1
                    self._seq = 0
                now = self._last_ms
            else:
                self._seq = 0
            self._last_ms = now
            value = ((now - FLAKE_EPOCH_MS) << (_SEQ_BITS + _HOST_BITS)) | (self._host << _SEQ_BITS) | self._seq
            return f"{value:016x}"
