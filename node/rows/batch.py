"""What a conversion produces: CSV rows grouped by (database, table), with counts and reasons.

    ConvertResult
    ├── tables: {(database, table): TableBatch(kind, schema, data=b"row\\nrow\\n", count=2)}
    ├── accepted   rows written into `tables`
    ├── rejected   points / records / spans refused (never silently dropped)
    └── reasons    distinct human-readable causes of the refusals, at most MAX_REASONS

A reason reads "<kind of refusal>: <detail>" (or just the kind); the part before the first ":"
never contains request data, so it can be used as a metric label.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Schema = tuple[tuple[str, str], ...]
"""((column, type), ...) in row order; types are ADX scalar type names."""

KIND_METRIC, KIND_TRACE, KIND_LOG = 1, 2, 3
"""WAL sample types."""

MAX_REASONS = 10


@dataclass(slots=True)
class TableBatch:
    """The rows for one table: CSV, each row ending in "\\n", no header line. The WAL writes it as it
    is (`repository.BlockLike`: one is made per table of every request)."""

    database: str
    table: str
    kind: int
    schema: Schema
    data: bytearray
    count: int


@dataclass
class ConvertResult:
    """The outcome of converting one request."""

    tables: dict[tuple[str, str], TableBatch] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)


JOIN_ROWS = 16384
"""Rows joined into text at once: a request of a million rows is encoded in steps of a few
milliseconds each, so that a conversion in a worker thread lets the event loop run."""


def _encode(rows: list[str], into: bytearray | None) -> bytearray:
    """`rows` as UTF-8, appended to `into` (a new bytearray when None)."""
    if into is None and len(rows) <= JOIN_ROWS:
        return bytearray("".join(rows), "utf-8")
    out = bytearray() if into is None else into
    for i in range(0, len(rows), JOIN_ROWS):
        out += "".join(rows[i:i + JOIN_ROWS]).encode("utf-8")
    return out


class ResultBuilder:
    """Collects rows (one `str` per row, ending in "\\n") per destination, and refusals.

    Converters append to the list that `rows(dest)` returns; `flush()` (between the pieces of a
    large request, when no converter holds a row list) turns the rows so far into bytes, and
    `result()` does so with the rest.
    """

    def __init__(self, kind: int, schema: Schema) -> None:
        self._kind = kind
        self._schema = schema
        self._rows: dict[tuple[str, str], list[str]] = {}
        self._data: dict[tuple[str, str], bytearray] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._reasons: dict[str, None] = {}
        self.rejected = 0

    def rows(self, dest: tuple[str, str]) -> list[str]:
        """The row list of (database, table), created on first use."""
        rows = self._rows.get(dest)
        if rows is None:
            rows = self._rows[dest] = []
        return rows

    def reject(self, reason: str, n: int = 1) -> None:
        """Count `n` refused items; keep `reason` if it is new and there is room."""
        self.rejected += n
        if len(self._reasons) < MAX_REASONS:
            self._reasons[reason] = None

    def flush(self) -> None:
        """Encode the rows collected so far; the row lists are emptied in place."""
        data, counts = self._data, self._counts
        for dest, rows in self._rows.items():
            if rows:
                prev = data.get(dest)
                if prev is None and len(rows) <= JOIN_ROWS:  # the common case, inline: once per table
                    data[dest] = bytearray("".join(rows), "utf-8")
                    counts[dest] = len(rows)
                else:
                    data[dest] = _encode(rows, prev)
                    counts[dest] = counts.get(dest, 0) + len(rows)
                rows.clear()

    def result(self) -> ConvertResult:
        self.flush()
        kind, schema, counts = self._kind, self._schema, self._counts
        tables = {dest: TableBatch(dest[0], dest[1], kind, schema, data, counts[dest])
                  for dest, data in self._data.items()}
        return ConvertResult(tables, sum(counts.values()), self.rejected, list(self._reasons))


MAX_MERGED_BYTES = 64 << 20
"""Most bytes of rows `merged` puts in one batch, far under the WAL's block limit (256 MiB)."""


def merged(results: list[ConvertResult], max_bytes: int = MAX_MERGED_BYTES) -> list[TableBatch]:
    """The batches of several requests' results as few batches as they allow: one per (database,
    table, kind, schema), its rows those of each result in turn, unless that would pass `max_bytes`
    (then the batch so far is closed and another begins). The results' own batches are left as
    they are."""
    out: dict[tuple[str, str, int, Schema], TableBatch] = {}
    full: list[TableBatch] = []
    mine: set[int] = set()  # id() of the batches made here (the only ones grown in place)
    for result in results:
        for b in result.tables.values():
            key = (b.database, b.table, b.kind, b.schema)
            m = out.get(key)
            if m is None:
                out[key] = b
            elif len(m.data) + len(b.data) > max_bytes:
                full.append(m)
                out[key] = b
            else:
                if id(m) not in mine:
                    m = out[key] = TableBatch(m.database, m.table, m.kind, m.schema, bytearray(m.data), m.count)
                    mine.add(id(m))
                m.data += b.data
                m.count += b.count
    full.extend(out.values())
    return full
