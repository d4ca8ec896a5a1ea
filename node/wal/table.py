"""The WAL of one table prefix: one active segment at a time, rotated by size or age.

The active segment lives in `<wal dir>/active/`; closing it renames it into the WAL directory, so
every `*.wal` file directly in the WAL directory is a closed segment, for any process to see.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.wal.names import FlakeIds, SegmentName
from node.wal.segment import FsyncPolicy, SegmentWriter, fsync_dir

ACTIVE_DIR = "active"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A closed segment: what the index, the batcher and `wal ls` know of it."""

    path: Path
    name: SegmentName
    size: int
    blocks: int
    rows: int

    @property
    def prefix(self) -> str:
        return self.name.prefix

    @property
    def database(self) -> str:
        return self.name.database


class TableWal:
    """Appends blocks of one prefix; hands each closed segment to `on_close`. Thread-safe."""

    def __init__(
        self,
        directory: Path,
        database: str,
        table: str,
        schema: str | None,
        ids: FlakeIds,
        fsync: FsyncPolicy,
        max_segment_size: int,
        max_segment_age: float,
        on_close: Callable[[SegmentInfo], None],
    ) -> None:
        self.database, self.table, self.schema = database, table, schema
        self._dir = directory
        self._active_dir = directory / ACTIVE_DIR
        self._ids = ids
        self._fsync = fsync
        self._max_size = max_segment_size
        self._max_age = max_segment_age
        self._on_close = on_close
        self._lock = threading.Lock()
        self._active: SegmentWriter | None = None
        self._active_name: SegmentName | None = None
        self._opened = 0.0

    @property
    def is_open(self) -> bool:
        """True while an active segment is open (the next append does not create a file)."""
        return self._active is not None

    @property
    def active_size(self) -> int:
        active = self._active
        return active.size if active is not None else 0

    def append(self, header: bytes, payload: bytes, rows: int, *, new_segment: Callable[[int], None]) -> int:
        """Append one block; return the bytes the file grew by.

        `new_segment(1)` is called before a new segment file is created (it raises when the
        repository is over its segment limit), `new_segment(-1)` if creating it then failed.
        """
        with self._lock:
            if self._active is None:
                new_segment(1)
                name = SegmentName(self.database, self.table, self.schema, self._ids.next())
                try:
                    self._active = SegmentWriter(self._active_dir / name.filename, self._fsync)
                except BaseException:
                    new_segment(-1)
                    raise
                self._active_name = name
                self._opened = time.monotonic()
                grown = self._active.size
            else:
                grown = 0
            before = self._active.size
            self._active.append(header, payload, rows)
            grown += self._active.size - before
            if self._active.size >= self._max_size:
                self._close_locked()
            return grown

    def rotate(self, *, older_than: float | None = None) -> SegmentInfo | None:
        """Close the active segment (only if open longer than `older_than` seconds, when given)."""
        with self._lock:
            if self._active is None:
                return None
            if older_than is not None and time.monotonic() - self._opened < older_than:
                return None
            return self._close_locked()

    def rotate_if_expired(self) -> SegmentInfo | None:
        return self.rotate(older_than=self._max_age)

    def _close_locked(self) -> SegmentInfo:
        active, name = self._active, self._active_name
        assert active is not None and name is not None
        self._active = self._active_name = None
        active.close()
        closed = self._dir / name.filename
        os.rename(active.path, closed)
        if self._fsync is not FsyncPolicy.NEVER:
            fsync_dir(self._dir)
        info = SegmentInfo(closed, name, active.size, active.blocks, active.rows)
        self._on_close(info)
        return info
