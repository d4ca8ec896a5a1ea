"""The WAL of one table prefix: one active segment at a time, rotated by size or age.

The active segment lives in `<wal dir>/active/` (node/storage.py `ACTIVE_DIR`); closing it renames
it into the WAL directory, so every `*.wal` file directly in the WAL directory is a closed segment,
for any process to see.

A segment deleted by something other than the node while it is written (a person freeing space
on a full disk, `rm -rf` of the WAL directory) is given up, never waited for: the rows it held are
gone with it, and the table goes on in a new segment. An open descriptor keeps a deleted file's
blocks, and writes into it would succeed, so each table's open segment is looked at once a second
(`rotate_if_expired`: its descriptor's file has no name left); a write that must reopen it finds
it gone and is refused with VanishedSegmentError (retried by its sender, into a new segment). The
one given up is logged and counted (`on_vanished`), its descriptor closed so that its space goes
back to the volume, and the table's later segments are published past it. The WAL's directories
are made again when a new segment finds them gone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from node.storage import ACTIVE_DIR, fsync_dir, in_remade_dir
from node.wal import journal
from node.wal.names import FlakeIds, SegmentName
from node.wal.openfiles import OpenFiles
from node.wal.segment import FsyncPolicy, SegmentWriter, compact


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A closed segment: what the index, the batcher and `wal ls` know of it."""

    path: Path
    name: SegmentName
    size: int
    blocks: int
    rows: int
    """Rows it holds, where known: 0 for a segment received from a peer (its blocks' CRCs checked,
    not decoded: node/transfer/intake.py)."""
    shrunk: int = 0
    """Bytes compaction took off it as it closed (`segment.compact`): written, and so counted in
    the disk usage, as an active segment, but no longer on disk."""

    @property
    def prefix(self) -> str:
        return self.name.prefix

    @property
    def database(self) -> str:
        return self.name.database


@dataclass(slots=True)
class _Closing:
    """A segment taken out of service and not yet published (`TableWal._publish_closing`)."""

    writer: SegmentWriter
    name: SegmentName
    compact: bool
    compacted: tuple[int, int, int] | None = None
    """(size, blocks, rows) once rewritten: a later try publishes it as such."""


class Mark(NamedTuple):
    """The end of a table's active segment at one moment (`TableWal.mark`); a tuple, as one is
    taken per table of every request."""

    writer: SegmentWriter | None
    size: int
    blocks: int
    rows: int


NO_SEGMENT = Mark(None, 0, 0, 0)
_new_mark = tuple.__new__


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
        files: OpenFiles,
        on_vanished: Callable[[SegmentInfo], None],
    ) -> None:
        self.database, self.table, self.schema = database, table, schema
        self.key = (database, table, schema or "")
        """The order in which a request takes the locks of several tables."""
        self.journal_key = journal.table_key(database, table, schema)
        """Its names as a journal entry holds them (node/wal/journal.py)."""
        self._dir = directory
        self._active_dir = directory / ACTIVE_DIR
        self._ids = ids
        self._fsync = fsync
        self._max_size = max_segment_size
        self._max_age = max_segment_age
        self._on_close = on_close
        self._on_vanished = on_vanished
        """Called for a segment given up as deleted outside the node (what it held as written), to
        log and count it."""
        self._files = files
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        """Held while the segments taken out of service are closed and renamed into the WAL (a
        compaction and fsyncs: milliseconds): not the table's lock, so that a write to the table
        (into its next segment) never waits for them."""
        self._active: SegmentWriter | None = None
        self._active_name: SegmentName | None = None
        self._opened = 0.0
        self._closing: list[_Closing] = []
        """Segments taken out of service whose publication into the WAL failed (a full disk, an
        I/O error): tried again at every rotate, so that their rows are not left in `active/`
        until a restart."""

    @property
    def writer(self) -> SegmentWriter | None:
        """The active segment's writer (lock held), for a caller that pins the descriptors of a
        request's segments at once (`OpenFiles.acquire_all`)."""
        return self._active

    @property
    def lock(self) -> threading.Lock:
        """Held by a write (`Repository.write_many`, which holds the locks of all the tables of a
        request, and uses the `*_held` methods), and while `rotate` and its kin take the active
        segment out of service."""
        return self._lock

    def append_held(self, header: bytes, payload: bytes, rows: int, *, new_segment: Callable[[int], None]) -> int:
        """Append one block, with the lock held by the caller (`Repository.write_many`, which may
        still undo it: see `mark` and `undo`, and takes a full segment out afterwards); return the
        bytes the file grew by. `new_segment(1)` is called before a new segment file is created (it
        raises when the repository is over its segment limit), `new_segment(-1)` if creating it
        then failed. Not fsynced, whatever the policy: its callers make a request's or a round's
        appends durable at once (`Repository.write_many`, the journal's round)."""
        grown = self.ensure_active_held(new_segment) if self._active is None else 0
        active = self._active
        assert active is not None
        before = active.size
        active.append(header, payload, rows, sync=False)
        return grown + active.size - before

    def ensure_active_held(self, new_segment: Callable[[int], None]) -> int:
        """With the lock held: open an active segment if there is none; return the bytes written
        (its magic, or 0). `new_segment` as for `append_held`."""
        if self._active is not None:
            return 0
        new_segment(1)
        name = SegmentName(self.database, self.table, self.schema, self._ids.next())
        try:
            path = self._active_dir / name.filename
            self._active = in_remade_dir(self._active_dir, lambda: SegmentWriter(path, self._fsync, self._files),
                                         self._fsync is not FsyncPolicy.NEVER)
        except BaseException:
            new_segment(-1)
            raise
        self._active_name = name
        self._opened = time.monotonic()
        return self._active.size

    def mark(self) -> Mark:
        """Where the active segment ends now (lock held)."""
        a = self._active
        # tuple.__new__: a NamedTuple's own constructor is a Python function, and this runs for every
        # table of every request
        return _new_mark(Mark, (a, a.size, a.blocks, a.rows)) if a is not None else NO_SEGMENT

    def undo(self, mark: Mark) -> tuple[int, int]:
        """Cut what was appended since `mark` (lock held, no segment closed since); return the bytes
        and the segments (0 or 1) that went away."""
        a = self._active
        if a is None:
            return 0, 0
        if mark.writer is None:  # the segment was created for what is undone: it goes
            size = a.size
            self._active = self._active_name = None
            a.discard()
            return size, 1
        cut = a.size - mark.size
        if cut:
            a.truncate(mark.size, mark.blocks, mark.rows)
        return cut, 0

    def drop_if_vanished_held(self) -> bool:
        """With the lock held: take the active segment out of service if its file was deleted
        outside the node (the next write opens a new one); the next `publish` gives it up."""
        if self._active is not None and self._active.vanished():
            self._take_out_locked(compact=False)
            return True
        return False

    def take_out_if_full_held(self) -> bool:
        """With the lock held: take a full active segment out of service (the next write opens a
        new one); the caller then `publish`es it, once it has let go of the lock."""
        if self._active is not None and self._active.size >= self._max_size:
            self._take_out_locked(compact=True)
            return True
        return False

    def publish(self) -> SegmentInfo | None:
        """Close and rename into the WAL the segments taken out of service (lock not held: writes to
        the table go on meanwhile); returns the last one published."""
        with self._publishing:
            return self._publish_closing()

    def rotate(self, *, older_than: float | None = None, compact: bool = True) -> SegmentInfo | None:
        """Close the active segment (only if open longer than `older_than` seconds, when given);
        first publish what an earlier close could not. `compact`: rewrite its small blocks as
        large ones as it closes (`segment.compact`); a node that stops closes every segment at
        once and leaves that out, so that it stops in time. Only taking the segment out of service
        holds the table's lock; its compaction, fsyncs and rename do not."""
        with self._lock:
            if self._active is not None and (older_than is None or time.monotonic() - self._opened >= older_than):
                self._take_out_locked(compact)
            if not self._closing:
                return None
        return self.publish()

    def close_unsynced(self) -> tuple[SegmentInfo | None, SegmentInfo | None]:
        """For closing every table at once (`Repository.rotate_all(compact=False)`): take the active
        segment out of service and rename it into the WAL, without an fsync and without announcing
        it; the caller makes them all durable with one sync of the file system, then announces
        them. Returns (the last segment an earlier failed closing published now, announced as
        usual; the segment taken, to announce). A failed rename keeps the segment for the usual
        path (`_publish_closing`, at the next rotate)."""
        with self._lock, self._publishing:
            done = self._publish_closing() if self._closing else None
            active, name = self._active, self._active_name
            if active is None or name is None:
                return done, None
            self._active = self._active_name = None
            closed = self._dir / name.filename
            try:
                active.close(sync=False, sync_dir=False)
                try:
                    os.rename(active.path, closed)
                except FileNotFoundError:
                    if active.path.exists():
                        raise
                    self._give_up(active, name)  # deleted outside the node
                    return done, None
            except BaseException:
                self._closing.append(_Closing(active, name, False))
                raise
            return done, SegmentInfo(closed, name, active.size, active.blocks, active.rows)

    def rotate_if_expired(self) -> SegmentInfo | None:
        # A look without the lock first: called for every table once a second, and most tables
        # have neither an expired segment nor a closing to publish. What it reads may be a moment
        # old; `rotate` looks again under the lock, and a table skipped now is looked at next time.
        active = self._active
        if not self._closing and (active is None or time.monotonic() - self._opened < self._max_age):
            if active is None or active.fd < 0 or not active.vanished():  # an fstat: open descriptors only
                return None
            with self._lock:
                self.drop_if_vanished_held()
            return self.publish()
        return self.rotate(older_than=self._max_age)

    def _take_out_locked(self, compact: bool) -> None:
        active, name = self._active, self._active_name
        assert active is not None and name is not None
        self._active = self._active_name = None  # the next write opens a new segment, whatever happens here
        self._closing.append(_Closing(active, name, compact))

    def _give_up(self, active: SegmentWriter, name: SegmentName) -> None:
        """A segment taken out of service whose file was deleted outside the node: its descriptor
        closed, the loss logged and counted (`on_vanished`, with what it held as written)."""
        active.abandon()
        self._on_vanished(SegmentInfo(active.path, name, active.size, active.blocks, active.rows))

    def _publish_closing(self) -> SegmentInfo | None:
        """Close and rename into the WAL the segments taken out of service, oldest first; an
        error leaves the rest for the next try. Returns the last one published. `_publishing`
        held (the table's lock may be: `close_unsynced`); a segment is taken out of service under
        the table's lock, so `_closing` only grows at its end meanwhile.

        A segment to compact is rewritten before its writer closes: the rewrite is fsynced, so the
        old file's fsync is left out (one fsync a segment either way)."""
        info = None
        while self._closing:
            c = self._closing[0]
            active, name = c.writer, c.name
            closed = self._dir / name.filename
            here = active.path.exists()
            renamed = not here and closed.exists()  # by an earlier try
            if not here and not renamed:  # deleted outside the node
                self._closing.pop(0)
                self._give_up(active, name)
                continue
            if c.compact and not renamed and c.compacted is None and not active.closed:
                c.compacted = compact(active.path, active.blocks, name.schema is not None)
            active.close(sync=c.compacted is None)
            if not renamed:
                os.rename(active.path, closed)
            if self._fsync is not FsyncPolicy.NEVER:
                fsync_dir(self._dir)
            self._closing.pop(0)
            size, blocks, rows = c.compacted or (active.size, active.blocks, active.rows)
            info = SegmentInfo(closed, name, size, blocks, rows, shrunk=active.size - size)
            self._on_close(info)
        return info
