"""What every sink implements, and the batch it is given.

A batch is closed segments of one table prefix, oldest first. A sink reads the rows with
`Batch.iter_csv()` (header lines stripped), delivers them, and returns only once the destination
confirmed them; it raises SinkError to have the batch retried later, PermanentSinkError when it
will never accept it. Sinks are synchronous: the uploader calls `upload()` from a worker thread,
at most `--uploads` at a time per sink.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from node.wal import format as fmt
from node.wal.names import Schema
from node.wal.segment import iter_blocks
from node.wal.table import SegmentInfo

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


@dataclass
class Batch:
    """Closed segments of one prefix, to be delivered together."""

    database: str
    table: str
    segments: tuple[SegmentInfo, ...]
    schema: Schema | None = None
    """Columns from the first block's header line; None for segments without one."""
    kind: int = fmt.KIND_UNKNOWN
    uncompressed_bytes: int = field(default=0)
    """Bytes of CSV rows; known once iter_csv() ran to the end."""
    rows: int = field(default=0)

    token: str | None = None
    """The id of the delivery this batch belongs to, when it is what is left of a recorded one
    (some of its segments vanished): the sink's deduplication then recognises the whole."""

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

    def iter_csv(self) -> Iterator[bytes]:
        """The rows of every block of every segment, in order, schema header lines stripped."""
        total = rows = 0
        for seg in self.segments:
            for block in iter_blocks(seg.path):
                header, value = fmt.strip_schema_line(block.value)
                if header is not None and self.schema is None:
                    self.schema = parse_schema_line(header)
                if self.kind == fmt.KIND_UNKNOWN:
                    self.kind = block.kind
                total += len(value)
                rows += block.count
                yield value
        self.uncompressed_bytes, self.rows = total, rows

    def read_schema(self) -> Schema | None:
        """The schema of the first block that has a header line, without reading further."""
        if self.schema is None:
            for seg in self.segments:
                for block in iter_blocks(seg.path):
                    header, _ = fmt.strip_schema_line(block.value)
                    if header is not None:
                        self.schema = parse_schema_line(header)
                    if self.kind == fmt.KIND_UNKNOWN:
                        self.kind = block.kind
                    break
                break
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
