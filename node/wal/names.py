"""Segment file names, segment ids and schema hashes.

    <Database>_<Table>[_<SchemaHash>]_<SegmentId>.wal

Database and table are names (node/names.py: `[A-Za-z0-9]` only, at most 64 and 150 characters),
so `_` separates fields without ambiguity. A name from the network that does not match is refused
(InvalidNameError), never cleaned into a path: a validated name cannot contain a separator, a dot or
NUL, so it can never address a path outside the storage directory.

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
from node.names import MAX_DATABASE_LEN, MAX_TABLE_LEN, NAME_PATTERN

_SCHEMA = "[0-9a-z]{1,13}"
_FILE_RE = re.compile(
    rf"(?P<db>{NAME_PATTERN})_(?P<table>{NAME_PATTERN})(?:_(?P<schema>{_SCHEMA}))?_(?P<id>[0-9a-f]{{16}})\.wal"
)
_PREFIX_RE = re.compile(rf"(?P<db>{NAME_PATTERN})_(?P<table>{NAME_PATTERN})(?:_(?P<schema>{_SCHEMA}))?")

FLAKE_EPOCH_MS = 1388534400000  # 2014-01-01T00:00:00Z
_SEQ_BITS, _HOST_BITS = 13, 10


def validate_prefix(prefix: str) -> str:
    """Return `prefix` (`<Database>_<Table>[_<SchemaHash>]`) if valid, else raise InvalidNameError."""
    m = _PREFIX_RE.fullmatch(prefix) if isinstance(prefix, str) else None
    if m is None:
        raise InvalidNameError(f"invalid segment prefix {str(prefix)[:64]!r}")
    names.validate_name(m["db"], "database", MAX_DATABASE_LEN)
    names.validate_name(m["table"], "table", MAX_TABLE_LEN)
    return prefix


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
    names.validate_name(database, "database", MAX_DATABASE_LEN)
    names.validate_name(table, "table", MAX_TABLE_LEN)
    return f"{database}_{table}_{schema_id}" if schema_id else f"{database}_{table}"


@dataclass(frozen=True, slots=True)
class SegmentName:
    database: str
    table: str
    schema: str | None
    segment_id: str
    prefix: str = field(init=False, repr=False, compare=False)
    """`DB_TABLE[_SCHEMA]`, checked and made once: the upload round reads it for every segment."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", make_prefix(self.database, self.table, self.schema))

    @property
    def filename(self) -> str:
        return f"{self.prefix}_{self.segment_id}.wal"

    @property
    def created_ms(self) -> int:
        """Unix time in ms at which the segment id was made."""
        return (int(self.segment_id, 16) >> (_SEQ_BITS + _HOST_BITS)) + FLAKE_EPOCH_MS


def parse_filename(name: str) -> SegmentName:
    """Parse a segment file name; InvalidNameError when it is not one."""
    m = _FILE_RE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise InvalidNameError(f"not a segment file name: {str(name)[:128]!r}")
    return SegmentName(m["db"], m["table"], m["schema"], m["id"])


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
