"""All tables' WALs in one directory: writes, the index of closed segments, disk accounting.

At start the directory is scanned: stale `*.tmp` files are deleted (never `*.part` files: those
belong to the transfer ledger, whose verdict on a transfer killed at its publication depends on
whether its part file is still there), every segment is checked and
a torn or corrupt tail truncated at the last good block, header-only segments are deleted, and
every remaining segment goes back into the index as closed (a segment that was active when the
process died is closed now; new writes go to new segments).

Limits: a write that would take disk usage over `max_disk_usage`, or that needs a new segment
while `max_segment_count` segments exist, fails with OverLimitsError and writes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import Protocol

from node.errors import CorruptionError, InvalidInputError, InvalidNameError, OverLimitsError, VanishedSegmentError
from node.names import MAX_DATABASE_LEN, MAX_TABLE_LEN, validate_name
from node.ratelog import RateLimitedLog
from node.storage import ACTIVE_DIR, fsync_dir, in_remade_dir, sync_filesystem
from node.wal import adopt, journal
from node.wal import format as fmt
from node.wal.importer import SegmentImport
from node.wal.journal import JournalWriter
from node.wal.names import (
    FlakeIds,
    Schema,
    SegmentName,
    host_id,
    parse_filename,
    parse_prefix,
    schema_hash,
    schema_line,
    segment_host,
)
from node.wal.openfiles import DEFAULT_LIMIT as OPEN_FILES_LIMIT
from node.wal.openfiles import OpenFiles
from node.wal.segment import COMPACT_BLOCK_BYTES, FsyncPolicy, SegmentWriter, repair, scan
from node.wal.table import Mark, SegmentInfo, TableWal

log = logging.getLogger(__name__)

VANISHED_LOG_SECONDS = 10.0
"""Segments given up as deleted outside the node while written are logged at most once this often."""

MiB = 1 << 20
OVER_LIMITS_HOLD_SECONDS = 5.0
MAX_CACHED_NAMES = 100_000
_BY_KEY = attrgetter("key")
"""The order in which a request takes its tables' locks (`TableWal.key`)."""
SYNC_THREADS = 16
"""Under `always`, a request's segments are fsynced at once in up to this many threads: the file
system commits them together. 50 segments of 3 KB each here: 11.6 ms one after the other, 3.6 ms in
8 threads, 2.8 ms in 16 (a `syncfs` 1.0 ms, but it also waits for every other write on the volume)."""
JOURNAL_ROUND_SECONDS = 5.0
"""A journal is split into its tables' segments this long after its first request at most... A
round costs ~50 us for each table it writes (the block, and with thousands of tables the reopen of
the table's file), so the longer it waits, the more requests' rows each table's block holds: with
10,000 tables and requests of 1,000, a table gets ~35 requests' rows a round at 5 s, ~14 at 2 s."""
JOURNAL_ROUND_BYTES = 64 * MiB
"""...or once the rows it holds, uncompressed, reach this (they wait in memory for the round)."""
JOURNAL_MAX_PENDING = 256 * MiB
"""Rows written to journals and not yet split past which a request for the journal is refused
(OverLimitsError): reached only while rounds fail (a full disk) or fall behind."""


class BlockLike(Protocol):
    """What `Repository.write_many` reads of a block: a `Block`, or a converter's `TableBatch` as it is."""

    @property
    def database(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def data(self) -> bytes | bytearray: ...
    @property
    def count(self) -> int: ...
    @property
    def schema(self) -> Schema | None: ...


@dataclass(slots=True)
class Block:
    """One block of rows (CSV text, each row ending in "\\n") for a table (not frozen: one is made
    per table of every request, and a frozen dataclass takes three times as long to make)."""

    database: str
    table: str
    kind: int
    data: bytes | bytearray
    count: int
    schema: Schema | None = None


@dataclass(frozen=True)
class WalConfig:
    """Configuration of the WAL repository (defaults follow adx-mon)."""

    directory: Path
    """Where segment files live; created if missing."""
    node_name: str = "node"
    """Feeds the host bits of segment ids."""
    worker: int = 0
    """Index of the writing process among a node's workers (distinct segment ids)."""
    fsync: FsyncPolicy = FsyncPolicy.ON_ROTATE
    """Durability policy; see FsyncPolicy."""
    max_segment_size: int = 1024 * MiB
    """A segment is closed once it reaches this size."""
    max_segment_age: float = 300.0
    """A segment is closed once it has been open this many seconds."""
    max_disk_usage: int = 0
    """Bytes of segments (active and closed) past which writes fail; 0 means no limit."""
    max_segment_count: int = 50000
    """Segments (active and closed) past which new segments are refused; 0 means no limit. Five
    times adx-mon's 10,000: every table written has a segment, and as segments close each table has
    two (the closed one waiting for its upload, the next one), so at 10,000 tables adx-mon's default
    refuses every request that needs a new segment from the first closing until the sink has
    taken half the closed ones. It bounds files (inodes, the index: ~0.5 KiB a segment), not
    descriptors (`max_open_segments`)."""
    max_disk_usage_per_database: int = 0
    """Bytes of one database's segments past which its writes fail; 0 means no limit."""
    max_open_segments: int = OPEN_FILES_LIMIT
    """Active segment files this process holds open at once; past it, the one written least
    recently is closed and reopened at its next write (node/wal/openfiles.py). 0: no limit."""
    journal_tables: int = 100
    """A request that writes this many tables or more is written as one block of a journal, and
    split into the tables' segments every few seconds (node/wal/journal.py); 0: never (each
    table's block is written into its segment as the request comes). Not lower: a round costs ~50 us
    for each table it writes, which pays when each table's block holds many requests' rows, not
    when requests of a few tables each spread over thousands of tables."""
    min_free_disk: int = 0
    """Free bytes on the directory's volume below which writes fail; 0 means no floor. The room
    is kept for what frees the volume: uploads (the local sink's store shares it), delivery
    records, the transfer ledger."""


@dataclass
class RecoveryReport:
    """What the start-up scan did."""

    segments: int = 0
    repaired: int = 0
    truncated_bytes: int = 0
    deleted_empty: int = 0
    deleted_tmp: int = 0
    ignored: list[str] = field(default_factory=list)
    journals: int = 0
    """Journals split at start (requests acknowledged and not yet in their tables' segments)."""
    adopted: int = 0
    """Segments adx-mon left in the storage directory, adopted (node/wal/adopt.py; also in `segments`)."""


@dataclass(frozen=True)
class WalStats:
    disk_usage: int
    segment_count: int
    closed: dict[str, tuple[int, int]]
    """prefix -> (closed segment count, closed bytes)"""
    active: dict[str, int]
    """prefix -> bytes in the active segment"""


_Entry = tuple[TableWal, int, int, bytes, bytes | bytearray]
"""A table's rows of one request in a journal: (table, kind, count, schema line, rows)."""


@dataclass(slots=True, eq=False)
class _Rows:
    """A table's rows (of one kind) in a journal, request by request: held for the round as the
    requests' own bytes, in lists rather than an object a request and table, so that the collector
    does not walk hundreds of thousands of them."""

    line: bytes
    counts: list[int] = field(default_factory=list)
    data: list[bytes | bytearray] = field(default_factory=list)


@dataclass(eq=False)
class _Journal:
    """A journal file and the rows it holds, waiting for their round (`Repository.split_journal`)."""

    path: Path
    writer: JournalWriter | None
    """None for a journal found at start."""
    tables: dict[tuple[TableWal, int], _Rows] = field(default_factory=dict)
    """The rows of each (table, kind), in the order of the requests."""
    raw: int = 0
    """Bytes of rows it holds."""
    accounted: dict[str, int] = field(default_factory=dict)
    """Its bytes, as counted per database in the disk usage (given back when it is deleted)."""
    opened: float = field(default_factory=time.monotonic)

    def add(self, entries: Iterable[_Entry]) -> None:
        tables = self.tables
        for wal, kind, count, line, data in entries:
            rows = tables.get((wal, kind))
            if rows is None:
                rows = tables[(wal, kind)] = _Rows(line)
            rows.counts.append(count)
            rows.data.append(data)


class Repository:
    """Owns the per-table WALs of one directory. Thread-safe."""

    def __init__(self, config: WalConfig, on_repair: Callable[[int], None] | None = None,
                 shared: SharedUsage | None = None,
                 on_vanished: Callable[[SegmentInfo], None] | None = None) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self.active_directory = self.directory / ACTIVE_DIR
        """Where active segments are written (`<storage-dir>/wal/active`, node/storage.py)."""
        self._ids = FlakeIds(host_id(config.node_name, config.worker))
        self._lock = threading.Lock()
        self._wals: dict[tuple[str, str, str | None], TableWal] = {}
        self.files = OpenFiles(config.max_open_segments)
        """The active segments' descriptors, at most --max-open-segments of them at once."""
        self._closed: dict[str, dict[str, SegmentInfo]] = defaultdict(dict)  # prefix -> id -> info
        self._usage = 0
        self._usage_by_db: dict[str, int] = defaultdict(int)
        self._segments = 0
        self._on_repair = on_repair
        self._on_vanished = on_vanished
        self._vanished_log = RateLimitedLog(log, VANISHED_LOG_SECONDS)
        self._listeners: list[Callable[[SegmentInfo], None]] = []
        self._indexing = True
        self._stopping = False
        """Set by `stop`: a `rotate_expired` in another thread ends early."""
        self._closing_all = 0
        """Closings of every table at once in progress (`rotate_all(compact=False)`: a stop, a
        leave): a `rotate_expired` in another thread ends early meanwhile, rather than hold each
        table's lock ahead of them."""
        self._refused_at = 0.0  # monotonic time of the last write refused for limits
        self._refused_usage = 0  # this process's bytes of segments then
        self._refused_at_db: dict[str, float] = {}
        self._shared = shared
        self._schemas: dict[Schema, tuple[str, bytes]] = {}  # a handful: one per table layout
        self._routes: dict[tuple[str, str, Schema | None], tuple[TableWal, bytes]] = {}
        """(database, table, schema) -> its WAL and schema line, for names already validated (at most
        MAX_CACHED_NAMES): one lookup a block instead of a validation, a schema lookup and a WAL lookup."""
        self.blocked_databases: frozenset[str] = frozenset()
        """Databases over their share as another process (the supervisor) measured it."""
        self._jlock = threading.Lock()
        """Held while a request is appended to the journal, and while a round takes it out."""
        self._journal: _Journal | None = None
        """The journal requests are written to now."""
        self._unsplit: list[_Journal] = []
        """Journals taken out for their round and not yet split (a failed round: tried again)."""
        self._pending = 0
        """Bytes of rows in journals not yet split."""
        self._awaiting: set[TableWal] = set()
        """Tables with rows in a journal and no active segment when their request came: the segment
        their round will open is counted already, against --max-segment-count, as a request
        written straight into segments counts the ones it opens."""
        self._round_lock = threading.Lock()
        self._sync_pool: ThreadPoolExecutor | None = None
        """Threads for the fsyncs of a request's segments under `always` (`_sync_segments`), made
        on first use and let go of by `stop`."""
        self._sync_pool_lock = threading.Lock()
        self._splitter: threading.Thread | None = None
        self._wake = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, recover: bool = True) -> RecoveryReport:
        """Scan, repair and index the directory. Call once, before any write.

        `recover=False` is for a writer process of a node whose supervisor already recovered
        the directory: it only writes, and keeps no index of closed segments.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.active_directory.mkdir(exist_ok=True)
        self._indexing = recover
        report = RecoveryReport()
        if not recover:
            return report
        self._undo_rounds(None, report)  # before the segments a round was writing are published
        # Segments left active by a previous run are closed now: repaired, then published.
        for entry in sorted(os.scandir(self.active_directory), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.is_file() and self._recover_file(path, report) is not None:
                os.rename(path, self.directory / entry.name)
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
            if entry.is_file():
                info = self._recover_file(Path(entry.path), report)
                if info is not None:
                    self._index(info)
                    report.segments += 1
        adopted = adopt.adopt(self.directory, self._ids.next, self._on_repair)  # what adx-mon left
        for info in adopted.segments:
            self._index(info)
        adopted.count_into(report)
        self._replay_journals(None, report)
        fsync_dir(self.active_directory)
        fsync_dir(self.directory)
        log.info("WAL %s: %d segments, %d repaired (%d bytes cut), %d empty and %d temporary deleted, "
                 "journals split: %d", self.directory, report.segments, report.repaired, report.truncated_bytes,
                 report.deleted_empty, report.deleted_tmp, report.journals)
        return report

    def _recover_file(self, path: Path, report: RecoveryReport) -> SegmentInfo | None:
        """Check one file found at start; return it as a segment, or None when it was dropped."""
        if path.name.endswith(".tmp"):
            path.unlink()
            report.deleted_tmp += 1
            return None
        if not path.name.endswith(".wal"):
            return None
        try:
            name = parse_filename(path.name)
        except InvalidNameError:
            report.ignored.append(path.name)
            log.warning("ignoring %s: not a segment file name", path)
            return None
        result = scan(path)
        if result.error is not None:
            if result.good_end == 0:  # not even a whole magic: nothing to keep
                log.warning("deleting %s: %s", path, result.error.reason)
                path.unlink()
                report.deleted_empty += 1
                return None
            report.truncated_bytes += repair(result.error)
            report.repaired += 1
            if self._on_repair is not None:
                self._on_repair(result.size - result.good_end)
        if result.good_end <= len(fmt.MAGIC):
            path.unlink()
            report.deleted_empty += 1
            return None
        return SegmentInfo(path, name, result.good_end, result.blocks, result.rows)

    def recover_active(self, host: int) -> list[SegmentInfo]:
        """Repair and publish the active segments of a writer process that died (by host id)."""
        report = RecoveryReport()
        self._undo_rounds(host, report)
        found = []
        for entry in sorted(os.scandir(self.active_directory), key=lambda e: e.name):
            try:
                name = parse_filename(entry.name)
            except InvalidNameError:
                continue
            if segment_host(name.segment_id) != host:
                continue
            path = Path(entry.path)
            info = self._recover_file(path, report)
            if info is not None:
                final = self.directory / entry.name
                os.rename(path, final)
                info = SegmentInfo(final, info.name, info.size, info.blocks, info.rows)
                self._index(info)
                found.append(info)
        found += self._replay_journals(host, report)
        fsync_dir(self.directory)
        return found

    def refresh(self) -> list[SegmentInfo]:
        """Index closed segments that other processes published; return the new ones.

        Files published by rename are whole, so they are indexed without a scan; their block
        and row counts are then unknown (0). A file is indexed under the index lock and only if
        it still exists then: `remove` unlinks under the same lock, so a segment being removed is
        never indexed again (see "Who owns the index" in docs/wal.md).
        """
        found = []
        with self._lock:
            known = {i.path.name for d in self._closed.values() for i in d.values()}
        for entry in os.scandir(self.directory):
            if entry.name in known or not entry.name.endswith(".wal") or not entry.is_file():
                continue
            try:
                name = parse_filename(entry.name)
            except InvalidNameError:
                continue
            with self._lock:
                if name.segment_id in self._closed.get(name.prefix, {}):
                    continue
                try:
                    size = os.stat(entry.path).st_size
                except FileNotFoundError:  # removed since the scan listed it
                    continue
                info = SegmentInfo(Path(entry.path), name, size, 0, 0)
                self._index_locked(info)
            found.append(info)
        return found

    def stop(self) -> list[SegmentInfo]:
        """Close every active segment (they become closed segments in the index), as they are. A
        `rotate_expired` running meanwhile in another thread stops after the table it is closing,
        so that a stop does not wait for thousands of closings with their compaction and fsyncs
        (10,000 tables: ~2 minutes here)."""
        self._stopping = True
        self._wake.set()
        if self._splitter is not None:
            self._splitter.join()
        try:
            self.split_journal()
        except OSError as e:  # a full disk: its rows stay in the journal, split at the next start
            log.error("stopping: the WAL journal could not be split into the tables' segments (%s); its %d bytes "
                      "of rows stay in %s, split at the next start", e, self._pending, self.active_directory)
        try:
            return self.rotate_all(compact=False, split=False)
        finally:
            with self._sync_pool_lock:
                pool, self._sync_pool = self._sync_pool, None
            if pool is not None:
                pool.shutdown()

    def add_listener(self, fn: Callable[[SegmentInfo], None]) -> None:
        """Call `fn` with every segment that gets closed or imported."""
        self._listeners.append(fn)

    # -- writing ----------------------------------------------------------------------------

    def write_many(self, blocks: Iterable[BlockLike]) -> None:
        """Append each block to its table's active segment: all of them or none. A bad name or a
        limit refuses the request before the first append; a write that fails part way (a disk
        that fills in the middle of the request) cuts the blocks already appended back out. So a
        refused request leaves nothing, and a sender that retries it duplicates nothing.

        The tables' locks are held for the whole request, taken in one order (by name), so that
        no other request appends behind a block that may still be undone.

        Returns once every block is in its file. Raises InvalidNameError or OverLimitsError.
        """
        if not isinstance(blocks, (list, tuple)):
            blocks = list(blocks)
        if self.config.journal_tables and len(blocks) >= self.config.journal_tables:
            self._write_journal(blocks)
            return
        encoded: list[tuple[TableWal, bytes, bytes, int]] = []
        need: dict[str, int] = {}  # bytes per database
        unique: dict[TableWal, None] = {}  # the request's tables, once each
        routes, encode = self._routes, fmt.encode_block
        for b in blocks:
            route = routes.get((b.database, b.table, b.schema))
            if route is None:
                route = self._route(b.database, b.table, b.schema)
            wal, line = route
            header, payload = encode(b.kind, b.count, b.data, line)
            encoded.append((wal, header, payload, b.count))
            database = wal.database
            need[database] = need.get(database, 0) + len(header) + len(payload)
            unique[wal] = None
        new_segments = sum(1 for w in unique if w.writer is None)
        self._reserve(need, new_segments)
        credits = [new_segments]

        def new_segment(delta: int) -> None:
            if delta > 0 and credits[0] > 0:
                credits[0] -= 1  # counted by _reserve already
            else:
                self._count_segment(delta)

        wals = sorted(unique, key=_BY_KEY)
        held: list[TableWal] = []
        written = 0  # blocks appended
        grown: list[int] = []  # bytes each appended block grew its file by (a new file's magic too)
        try:
            marks = []
            for w in wals:
                w.lock.acquire()
                held.append(w)
                marks.append(w.mark())
            try:
                # one lock for the descriptors of the request's segments, not two a block; a request
                # with more tables than half the bound takes them one at a time, so that the bound holds
                pinned = [w.writer for w in wals if w.writer is not None]
                if self.files.limit and len(pinned) > self.files.limit // 2:
                    pinned = []
                self.files.acquire_all(pinned)
                try:
                    for wal, header, payload, count in encoded:
                        grown.append(wal.append_held(header, payload, count, new_segment=new_segment))
                        written += 1
                    if self.config.fsync is FsyncPolicy.ALWAYS:
                        self._sync_segments([w.writer for w in wals if w.writer is not None], new_segments > 0)
                finally:
                    self.files.release_all(pinned)
            except BaseException as e:
                self._settle(encoded, grown, need)
                undone = 0
                counted: dict[int, int] = defaultdict(int)  # bytes appended per table
                for (wal, *_), n in zip(encoded, grown, strict=False):
                    counted[id(wal)] += n
                for w, m in zip(wals, marks, strict=True):
                    nbytes, segments = w.undo(m)
                    undone += nbytes
                    self._account(w.database, -counted[id(w)], -segments)
                if isinstance(e, OverLimitsError):
                    self._note_refused()
                if isinstance(e, VanishedSegmentError):  # the sender's retry goes to new segments
                    for w in wals:
                        w.drop_if_vanished_held()
                if undone:
                    log.warning("write of a request failed part way (%s); the %d bytes it had appended were cut "
                                "back out: nothing of it stays", e, undone)
                raise
            self._settle(encoded, grown, need)
            full = [w for w in wals if w.take_out_if_full_held()]
        finally:
            for w in reversed(held):
                w.lock.release()
            for database, nbytes in need.items():  # what was reserved and not written
                if nbytes:
                    self._account(database, -nbytes, 0)
            if credits[0]:
                self._account(next(iter(need), ""), 0, -credits[0])
        _publish_full(full)  # its compaction and fsyncs with no table's lock held

    def _sync_segments(self, writers: Sequence[SegmentWriter], created: bool) -> None:
        """Under `always`: the segments a request appended to made durable before it is
        acknowledged, their fsyncs at once (SYNC_THREADS), and the directory of those it created
        (their names). Raises the first failure, once all are done: `write_many` then cuts the
        request back out."""
        if len(writers) == 1:
            writers[0].sync()
        elif writers:
            with self._sync_pool_lock:
                pool = self._sync_pool
                if pool is None:
                    pool = self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="wal-fsync")
            k = min(SYNC_THREADS, len(writers))  # a task a thread, not a task a segment: each costs a wake-up
            failures = [f.exception() for f in [pool.submit(_sync_all, writers[i::k]) for i in range(k)]]
            for failure in failures:
                if failure is not None:
                    raise failure
        if created:
            fsync_dir(self.active_directory)

    # -- the journal (node/wal/journal.py) ---------------------------------------------------

    def _write_journal(self, blocks: Sequence[BlockLike]) -> None:
        """`write_many` of a request over many tables: one block of the journal, its rows kept in
        memory for their round. All or nothing, as `write_many`."""
        routes, pack = self._routes, journal.HEAD.pack
        parts: list[bytes | bytearray] = []
        entries: list[_Entry] = []
        raw: dict[str, int] = {}  # bytes of rows per database
        unique: dict[TableWal, None] = {}
        count = 0
        for b in blocks:
            route = routes.get((b.database, b.table, b.schema))
            if route is None:
                route = self._route(b.database, b.table, b.schema)
            wal, line = route
            data = b.data
            parts += (wal.journal_key, pack(b.kind, b.count, len(line), len(data)), line, data)
            entries.append((wal, b.kind, b.count, line, data))
            raw[wal.database] = raw.get(wal.database, 0) + len(data)
            unique[wal] = None
            count += b.count
        header, payload = journal.encode_record(parts)
        size = len(header) + len(payload)
        total = sum(raw.values())
        if self._pending + total > JOURNAL_MAX_PENDING:
            self._note_refused()
            raise OverLimitsError(f"{self._pending} bytes of rows wait for their journal round, over "
                                  f"{JOURNAL_MAX_PENDING} (rounds fail or fall behind: see the log)")
        need = {db: size * n // max(total, 1) for db, n in raw.items()}  # the block's bytes, shared out
        first = next(iter(need))
        need[first] += size - sum(need.values())
        magic = 0
        fresh: list[TableWal] = []
        reserved = False
        try:
            with self._jlock:
                # the segments its round will open, counted now (under the journal's lock: once a table)
                awaiting = self._awaiting
                fresh = [w for w in unique if w.writer is None and w not in awaiting]
                self._reserve(need, len(fresh))
                reserved = True
                j = self._journal
                if j is None:
                    path = self.active_directory / f"{self._ids.next()}{journal.SUFFIX}"
                    fsync = self.config.fsync
                    j = _Journal(path, in_remade_dir(self.active_directory, lambda: JournalWriter(path, fsync),
                                                     fsync is not FsyncPolicy.NEVER))
                    self._journal = j
                    magic = len(journal.MAGIC)
                assert j.writer is not None
                j.writer.append(header, payload, count)
                j.add(entries)
                j.raw += total
                for db, n in need.items():
                    j.accounted[db] = j.accounted.get(db, 0) + n
                j.accounted[first] += magic
                self._pending += total
                awaiting.update(fresh)
                due = self._pending >= JOURNAL_ROUND_BYTES
        except BaseException as e:
            if reserved:
                self._account_many({db: -n for db, n in need.items()})
                if fresh:
                    self._account(first, 0, -len(fresh))
                if isinstance(e, OverLimitsError):  # the disk filled (_reserve says its own refusals)
                    self._note_refused()
            raise
        if magic:
            self._account(first, magic, 0)
        if self._splitter is None:
            self._start_splitter()
        if due:
            self._wake.set()

    def _start_splitter(self) -> None:
        with self._lock:
            if self._splitter is None and not self._stopping:
                self._splitter = threading.Thread(target=self._split_loop, name="wal-journal", daemon=True)
                self._splitter.start()

    def _split_loop(self) -> None:
        failed_at = 0.0
        while not self._stopping:
            self._wake.wait(JOURNAL_ROUND_SECONDS / 4)
            self._wake.clear()
            j = self._journal
            due = (self._pending >= JOURNAL_ROUND_BYTES or (self._unsplit and time.monotonic() - failed_at >= 1.0)
                   or (j is not None and time.monotonic() - j.opened >= JOURNAL_ROUND_SECONDS))
            if not due or self._stopping:
                continue
            try:
                self.split_journal()
            except Exception as e:  # the rows stay in their journal, on disk and in memory: tried again
                failed_at = time.monotonic()
                log.warning("splitting the WAL journal into the tables' segments failed (%s); %d bytes of rows "
                            "wait in it, tried again in a second", e, self._pending)

    @property
    def journal_bytes(self) -> int:
        """Bytes of rows in journals, not yet split into their tables' segments."""
        return self._pending

    def split_journal(self) -> int:
        """Append every journal's rows to their tables' segments (node/wal/journal.py), oldest
        journal first; returns the journals split. Raises what stopped a round (a full disk): that
        journal and the later ones stay, for the next call."""
        with self._round_lock:
            with self._jlock:
                if self._journal is not None:
                    self._unsplit.append(self._journal)
                    self._journal = None
            done = 0
            while self._unsplit:
                j = self._unsplit[0]
                if j.writer is not None:
                    j.writer.close(sync=False, sync_dir=False)  # its round deletes it
                self._split(j)
                self._unsplit.pop(0)
                with self._jlock:
                    self._pending -= j.raw
                done += 1
            return done

    def _split(self, j: _Journal) -> None:
        """One round (see node/wal/journal.py for the steps, and why they are exactly once)."""
        groups: dict[TableWal, list[tuple[int, _Rows]]] = {}
        for (wal, kind), rows in j.tables.items():
            groups.setdefault(wal, []).append((kind, rows))
        wals = sorted(groups, key=_BY_KEY)
        sync = self.config.fsync is FsyncPolicy.ALWAYS

        awaiting = self._awaiting
        opened: set[TableWal] = set()

        def new_segment(delta: int, database: str = "", wal: TableWal | None = None) -> None:
            # rows acknowledged already: no limit; a segment counted when its request came, not again
            if wal in awaiting:
                return
            self._account(database, 0, delta)

        held: list[TableWal] = []
        marks: list[Mark] = []
        grown: dict[str, int] = {}
        manifest: Path | None = None
        full: list[TableWal] = []
        try:
            for w in wals:
                w.lock.acquire()
                held.append(w)
                marks.append(w.mark())
            try:
                listed = []
                for w, m in zip(wals, marks, strict=True):
                    n = w.ensure_active_held(partial(new_segment, database=w.database, wal=w))
                    if n:
                        grown[w.database] = grown.get(w.database, 0) + n
                        opened.add(w)
                    assert w.writer is not None
                    listed.append((w.writer.path.name, m.size if m.writer is not None else w.writer.size))
                manifest = in_remade_dir(self.active_directory, lambda: journal.write_manifest(j.path, listed, sync),
                                         self.config.fsync is not FsyncPolicy.NEVER)
                for w in wals:
                    for header, payload, count in _round_blocks(groups[w]):
                        n = w.append_held(header, payload, count,
                                          new_segment=partial(new_segment, database=w.database, wal=w))
                        grown[w.database] = grown.get(w.database, 0) + n
                if sync:  # the round's blocks and new files durable before its commit: one call, not an fsync a block
                    sync_filesystem(self.active_directory)
                # the commit; a journal deleted outside the node left its rows in memory, now in their segments
                j.path.unlink(missing_ok=True)
                if sync:
                    fsync_dir(self.active_directory)
            except BaseException as e:
                for w, m in zip(wals, marks, strict=False):
                    _, segments = w.undo(m)
                    if segments:
                        new_segment(-segments, w.database, w)
                if manifest is not None:
                    manifest.unlink(missing_ok=True)
                if isinstance(e, VanishedSegmentError):  # the next round writes past it, into new segments
                    for w in held:
                        w.drop_if_vanished_held()
                raise
            full = [w for w in wals if w.take_out_if_full_held()]
            with self._jlock:  # what was counted for the segments it opened is theirs now
                surplus = [w for w in wals if w in awaiting and w not in opened]
                awaiting.difference_update(wals)
            for w in surplus:  # counted for a segment another write opened first
                self._account(w.database, 0, -1)
        finally:
            for w in reversed(held):
                w.lock.release()
        if manifest is not None:
            manifest.unlink(missing_ok=True)
        grown_back = dict(grown)
        for db, n in j.accounted.items():
            grown_back[db] = grown_back.get(db, 0) - n
        self._account_many(grown_back)
        _publish_full(full)

    def _journal_files(self, suffix: str, host: int | None) -> list[Path]:
        """This directory's journals (or manifests), of one process's host id when given, oldest first."""
        found = []
        for entry in os.scandir(self.active_directory):
            if not entry.name.endswith(suffix):
                continue
            try:
                owner = segment_host(journal.journal_id(Path(entry.name)))
            except ValueError:
                continue
            if host is None or owner == host:
                found.append(Path(entry.path))
        return sorted(found)

    def _undo_rounds(self, host: int | None, report: RecoveryReport) -> None:
        """At start, or for a writer process that died: undo the rounds it was killed in (their
        journals are split again by `_replay_journals`), and forget those that had committed."""
        for manifest in self._journal_files(journal.MANIFEST_SUFFIX + ".tmp", host):
            manifest.unlink()  # a round killed before its manifest: it had appended nothing
        for manifest in self._journal_files(journal.MANIFEST_SUFFIX, host):
            try:
                again, cut = journal.undo(manifest)
            except CorruptionError as e:  # renamed into place whole: only another program makes one so
                log.error("journal manifest %s is not one (%s): deleted; its journal, if any, is split as "
                          "it is, and rows its round had written may arrive twice", manifest.name, e)
                manifest.unlink()
                continue
            if again is None:
                manifest.unlink()
            elif cut:
                log.warning("journal %s: its round was killed part way; the %d bytes it had appended to "
                            "segments were cut back, and it is split again", again.name, cut)
                report.truncated_bytes += cut

    def _replay_journals(self, host: int | None, report: RecoveryReport) -> list[SegmentInfo]:
        """At start, or for a writer process that died: split the journals it left (requests
        acknowledged, not yet in their tables' segments) and close the segments they went to."""
        touched: dict[TableWal, None] = {}
        for path in self._journal_files(journal.SUFFIX, host):
            found = journal.read(path)
            if found.error is not None:
                dropped = path.stat().st_size - found.good_end
                log.warning("journal %s: %s; the %d bytes from offset %d (a request killed as it was written, "
                            "never acknowledged) are dropped", path.name, found.error, dropped, found.good_end)
                report.repaired += 1
                report.truncated_bytes += dropped
                if self._on_repair is not None:
                    self._on_repair(dropped)
            j = _Journal(path, None)
            for e in found.entries:
                wal = self._route_replayed(e)
                j.add(((wal, e.kind, e.count, e.line, e.data),))
                touched[wal] = None
            if j.tables:
                self._split(j)
            else:
                path.unlink()
                journal.manifest_path(path).unlink(missing_ok=True)
            report.journals += 1
        closed = []
        for w in touched:
            info = w.rotate(compact=True)
            if info is not None:
                closed.append(info)
        return closed

    def _route_replayed(self, e: journal.Entry) -> TableWal:
        validate_name(e.database, "database", MAX_DATABASE_LEN)
        validate_name(e.table, "table", MAX_TABLE_LEN)
        return self._wal(e.database, e.table, e.sid)

    def _settle(self, encoded: Sequence[tuple[TableWal, bytes, bytes, int]], grown: list[int],
                need: dict[str, int]) -> None:
        """After the appends of `write_many` (all of them, or the first `len(grown)`): take what was
        written out of `need` (what was reserved) and count what the files grew by past it (a new
        file's magic)."""
        extra: dict[str, int] = {}
        for (wal, header, payload, _), n in zip(encoded, grown, strict=False):
            size = len(header) + len(payload)
            database = wal.database
            need[database] -= size
            if n != size:
                extra[database] = extra.get(database, 0) + n - size
        if extra:
            self._account_many(extra)

    def _route(self, database: str, table: str, schema: Schema | None) -> tuple[TableWal, bytes]:
        """A block's table WAL and schema line; InvalidNameError for a name that may not be one."""
        validate_name(database, "database", MAX_DATABASE_LEN)
        validate_name(table, "table", MAX_TABLE_LEN)
        sid = None
        line = b""
        if schema:
            known = self._schemas.get(schema)
            if known is None:
                known = self._schemas[schema] = (schema_hash(schema), schema_line(schema))
            sid, line = known
        route = (self._wal(database, table, sid), line)
        if len(self._routes) < MAX_CACHED_NAMES:
            self._routes[(database, table, schema)] = route
        return route

    def _wal(self, database: str, table: str, sid: str | None) -> TableWal:
        key = (database, table, sid)
        wal = self._wals.get(key)
        if wal is None:
            with self._lock:
                wal = self._wals.get(key)
                if wal is None:
                    c = self.config
                    wal = TableWal(self.directory, database, table, sid, self._ids, c.fsync,
                                   c.max_segment_size, c.max_segment_age, self._index_new, self.files,
                                   self._active_vanished)
                    self._wals[key] = wal
        return wal

    def _others(self) -> tuple[int, int]:
        return self._shared.others() if self._shared is not None else (0, 0)

    def _publish(self) -> None:
        """Called with the lock held after every change of this process's accounting."""
        if self._shared is not None:
            self._shared.publish(self._usage, self._segments)

    def _reserve(self, need: dict[str, int], new_segments: int = 0) -> None:
        """Count `need` bytes per database and `new_segments` segments, or raise OverLimitsError and
        count nothing."""
        limit = self.config.max_disk_usage
        seg_limit = self.config.max_segment_count
        other_bytes, other_segments = self._others() if (limit or seg_limit) else (0, 0)
        db_limit = self.config.max_disk_usage_per_database
        nbytes = sum(need.values())
        with self._lock:
            if db_limit:
                for database, n in need.items():
                    if database in self.blocked_databases or self._usage_by_db[database] + n > db_limit:
                        self._refused_at_db[database] = time.monotonic()
                        raise OverLimitsError(f"database {database}: {self._usage_by_db[database]} + {n} bytes "
                                              f"over max-disk-usage-per-database {db_limit} (its sink is behind)")
            floor = self.config.min_free_disk
            if floor and (free := self._free_disk()) - nbytes < floor:
                self._note_refused()
                raise OverLimitsError(f"{free} bytes free on the volume of {self.directory}, under min-free-disk "
                                      f"{floor} with this write's {nbytes} (kept for the uploads that free it)")
            if limit and self._usage + other_bytes + nbytes > limit:
                self._note_refused()
                raise OverLimitsError(f"disk usage {self._usage + other_bytes} + {nbytes} bytes over "
                                      f"max-disk-usage {limit}")
            if new_segments and seg_limit and self._segments + other_segments + new_segments > seg_limit:
                # Not a hold on readiness: a node at its limit says so by itself (over_limits), and
                # one under it takes requests that need fewer new segments than this one.
                raise OverLimitsError(f"{self._segments + other_segments} segments + {new_segments} new over "
                                      f"max-segment-count {seg_limit} (one segment per table: raise "
                                      f"--max-segment-count for more tables)")
            for database, n in need.items():
                self._usage += n
                self._usage_by_db[database] += n
            self._segments += new_segments
            self._publish()

    def _free_disk(self) -> int:
        """Bytes free on the volume (statvfs: about a microsecond, once per request)."""
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return 1 << 62  # cannot tell: the write itself will say
        return st.f_bavail * st.f_frsize

    def _count_segment(self, delta: int) -> None:
        limit = self.config.max_segment_count
        other_segments = self._others()[1] if limit else 0
        with self._lock:
            if delta > 0 and limit and self._segments + other_segments >= limit:
                self._note_refused()
                raise OverLimitsError(f"{self._segments + other_segments} segments at max-segment-count {limit}")
            self._segments += delta
            self._publish()

    def _account_many(self, nbytes: dict[str, int]) -> None:
        """`_account` of bytes for several databases at once (one lock)."""
        with self._lock:
            for database, n in nbytes.items():
                if n:
                    self._usage += n
                    self._usage_by_db[database] += n
            self._publish()

    def _account(self, database: str, nbytes: int, segments: int) -> None:
        with self._lock:
            self._usage += nbytes
            self._usage_by_db[database] += nbytes
            self._segments += segments
            self._publish()

    # -- closed segments --------------------------------------------------------------------

    def _index(self, info: SegmentInfo) -> None:
        """Index a segment found at start (it is not yet counted)."""
        with self._lock:
            self._index_locked(info)

    def _index_locked(self, info: SegmentInfo) -> None:
        if info.name.segment_id in self._closed[info.prefix]:  # indexed already (a refresh saw it first)
            return
        self._closed[info.prefix][info.name.segment_id] = info
        self._usage += info.size
        self._usage_by_db[info.database] += info.size
        self._segments += 1
        self._publish()

    def _index_new(self, info: SegmentInfo) -> None:
        """Index a segment this process just closed (already counted while active, at the size it
        was written: what compaction took off is given back here)."""
        with self._lock:
            if info.shrunk:
                self._usage -= info.shrunk
                self._usage_by_db[info.database] -= info.shrunk
                self._publish()
            if self._indexing:
                if info.name.segment_id in self._closed[info.prefix]:
                    # a refresh found the renamed file first and counted it: it was counted already
                    self._forget_locked(info)
                self._closed[info.prefix][info.name.segment_id] = info
            else:  # a writer process: the supervisor indexes and accounts closed segments
                self._usage -= info.size
                self._usage_by_db[info.database] -= info.size
                self._segments -= 1
                self._publish()
        for fn in self._listeners:
            fn(info)

    def rotate_all(self, compact: bool = True, split: bool = True) -> list[SegmentInfo]:
        """Close every active segment; `compact=False` when closing them all at once must be quick
        (stopping, leaving): then they are not rewritten (a read and an fsync a segment), and they
        are made durable together, with one sync of the file system rather than an fsync per
        file and two per directory (10,000 segments: ~8 ms each here under load, 80 s). The
        journals are split first (unless `split` is false), so that every acknowledged row is in
        a segment."""
        if split:
            self.split_journal()
        if compact:
            return self._rotate_each(lambda w: w.rotate(compact=True))
        self._closing_all += 1  # a rotate_expired in another thread gives way (a leave, as a stop)
        try:
            return self._close_all_at_once()
        finally:
            self._closing_all -= 1

    def _close_all_at_once(self) -> list[SegmentInfo]:
        with self._lock:
            wals = list(self._wals.values())
        closed: list[SegmentInfo] = []
        taken: list[SegmentInfo] = []
        error: OSError | None = None
        for w in wals:
            try:
                done, info = w.close_unsynced()
            except OSError as e:
                error = error or e
                continue
            if done is not None:
                closed.append(done)
            if info is not None:
                taken.append(info)
        if taken and self.config.fsync is not FsyncPolicy.NEVER:
            sync_filesystem(self.directory)  # on failure they stay unannounced, on disk for the next start
        for info in taken:
            self._index_new(info)
        if error is not None:
            raise error
        return closed + taken

    def rotate_expired(self) -> list[SegmentInfo]:
        """Close the active segments older than max-segment-age; call it periodically. It ends
        early once `stop` has begun, or while every table is being closed at once (which closes
        the rest)."""
        return self._rotate_each(lambda w: w.rotate_if_expired(), until_stop=True)

    def _rotate_each(self, rotate: Callable[[TableWal], SegmentInfo | None],
                     until_stop: bool = False) -> list[SegmentInfo]:
        """`rotate` every table; one that fails (a full disk) does not keep the others open: its
        error is raised once they are all done, and it is tried again next time."""
        with self._lock:
            wals = list(self._wals.values())
        closed: list[SegmentInfo] = []
        error: OSError | None = None
        for w in wals:
            if until_stop and (self._stopping or self._closing_all):
                break
            try:
                info = rotate(w)
            except OSError as e:
                error = error or e
                continue
            if info is not None:
                closed.append(info)
        if error is not None:
            raise error
        return closed

    def closed_segments(self, prefix: str | None = None) -> list[SegmentInfo]:
        """Closed segments, oldest first (per prefix when given)."""
        with self._lock:
            if prefix is not None:
                return sorted(self._closed.get(prefix, {}).values(), key=lambda i: i.name.segment_id)
            every = [i for d in self._closed.values() for i in d.values()]
        return sorted(every, key=lambda i: (i.prefix, i.name.segment_id))

    def prefixes(self) -> list[str]:
        with self._lock:
            return sorted(p for p, d in self._closed.items() if d)

    def remove(self, segments: Iterable[SegmentInfo]) -> None:
        """Delete closed segments (after a sink or peer confirmed them).

        The file is unlinked under the index lock, as it leaves the index: no `refresh` can see it
        between the two and index it again.
        """
        for info in segments:
            with self._lock:
                known = self._closed.get(info.prefix, {}).pop(info.name.segment_id, None)
                if known is None:
                    continue
                info.path.unlink(missing_ok=True)
                self._forget_locked(known)

    def _forget_locked(self, info: SegmentInfo) -> None:
        self._usage -= info.size
        self._usage_by_db[info.database] -= info.size
        self._segments -= 1
        self._publish()

    def _active_vanished(self, info: SegmentInfo) -> None:
        """A segment given up while written, its file deleted outside the node (node/wal/table.py):
        what it was counted for goes, as a removed segment's does, and it is counted as
        a closed one that vanished is. Logged here, once every VANISHED_LOG_SECONDS (a deleted directory
        gives up every table's segment at once; the line after says how many were left out)."""
        self._account(info.database, -info.size, -1)
        self._vanished_log.log(logging.ERROR, "vanished", "segment %s was deleted by something other than this node "
                               "while it was written: the %d rows (%d bytes) it held are lost; table %s.%s goes on "
                               "in a new segment", info.path, info.rows, info.size, info.database, info.name.table)
        if self._on_vanished is not None:
            self._on_vanished(info)

    def drop_vanished(self, segments: Iterable[SegmentInfo]) -> list[SegmentInfo]:
        """Drop from the index the segments whose file is gone although the node never removed
        them (a person or another program deleted them); return them. Each is logged and counted
        once (`on_vanished`), so that its table is never blocked by a file that will not come back.
        """
        gone = []
        for info in segments:
            with self._lock:
                known = self._closed.get(info.prefix, {}).get(info.name.segment_id)
                if known is None or os.path.exists(known.path):
                    continue
                del self._closed[info.prefix][info.name.segment_id]
                self._forget_locked(known)
            gone.append(known)
            log.error("segment %s vanished from the WAL directory (deleted by something other than this node): "
                      "%d bytes of rows it held are lost; dropped from the index", known.path, known.size)
            if self._on_vanished is not None:
                self._on_vanished(known)
        return gone

    def begin_import(self, prefix: str, size: int, decode: bool = True) -> SegmentImport:
        """Start receiving a segment of `prefix` of `size` bytes from a peer (see `SegmentImport`).

        The space is reserved now: InvalidNameError for a bad prefix, OverLimitsError when the
        segment would not fit the limits (nothing is written then).
        """
        database, table, schema = parse_prefix(prefix)
        if size <= len(fmt.MAGIC):
            raise InvalidInputError(f"transferred segment {prefix}: declared size {size} holds no block")
        self._reserve({database: size}, 1)
        name = SegmentName(database, table, schema, self._ids.next())
        return SegmentImport(self.directory, name, size, lambda: self._account(database, -size, -1),
                             self._index_new, decode=decode)

    def import_segment(self, prefix: str, data: bytes | bytearray | memoryview) -> SegmentInfo:
        """Publish transferred bytes (magic, then blocks of `prefix`) as a new closed segment:
        verified, then published atomically (see `SegmentImport`)."""
        imp = self.begin_import(prefix, len(data))
        try:
            imp.feed(data)
        except BaseException:
            imp.abort()
            raise
        return imp.commit(zlib.crc32(data))

    # -- accounting -------------------------------------------------------------------------

    def _note_refused(self) -> None:
        """A write was refused for the limits: readiness holds (`over_limits`) until the node's
        segments shrink, or a few seconds pass."""
        self._refused_at = time.monotonic()
        self._refused_usage = self._usage

    def over_limits(self) -> str:
        """Why writes are being refused ("" when they are not): a limit reached, or a write
        refused in the last few seconds while nothing was freed since (an upload that deletes
        segments ends the hold at once: the node is no longer over)."""
        c = self.config
        other_bytes, other_segments = self._others()
        with self._lock:
            usage, segments, refused = self._usage + other_bytes, self._segments + other_segments, self._refused_at
            freed = self._usage < self._refused_usage
        if c.max_disk_usage and usage >= c.max_disk_usage * 0.99:
            return f"disk usage {usage} of max {c.max_disk_usage} bytes"
        if c.max_segment_count and segments >= c.max_segment_count:
            return f"{segments} segments of max {c.max_segment_count}"
        if c.min_free_disk and (free := self._free_disk()) < c.min_free_disk:
            return f"{free} bytes free on the volume, under min-free-disk {c.min_free_disk}"
        if refused and not freed and time.monotonic() - refused < OVER_LIMITS_HOLD_SECONDS:
            return f"a write was refused {time.monotonic() - refused:.1f}s ago (disk usage {usage} bytes)"
        return ""

    def disk_usage(self, database: str | None = None) -> int:
        with self._lock:
            return self._usage if database is None else self._usage_by_db.get(database, 0)


_PREFIXES: dict[str, str] = {}
"""Segment file name -> its prefix, for `directory_stats`: the same names are scanned again and
again (an active segment lives for --max-segment-age), and a parse costs more than the scan."""
MAX_CACHED_PREFIXES = 100_000


def _prefix_of(filename: str) -> str:
    """The prefix of a segment file name (InvalidNameError if it is not one)."""
    prefix = _PREFIXES.get(filename)
    if prefix is None:
        prefix = parse_filename(filename).prefix
        if len(_PREFIXES) >= MAX_CACHED_PREFIXES:
            _PREFIXES.clear()
        _PREFIXES[filename] = prefix
    return prefix


def directory_stats(directory: Path) -> WalStats:
    """Segments as the directory shows them, whichever process wrote them."""
    closed: dict[str, tuple[int, int]] = {}
    active: dict[str, int] = {}
    usage = count = 0
    for sub, is_active in ((directory, False), (directory / ACTIVE_DIR, True)):
        try:
            entries = list(os.scandir(sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.name.endswith(".wal"):
                continue
            try:
                prefix = _prefix_of(entry.name)
                size = entry.stat().st_size
            except (InvalidNameError, FileNotFoundError):
                continue
            usage += size
            count += 1
            if is_active:
                active[prefix] = active.get(prefix, 0) + size
            else:
                n, b = closed.get(prefix, (0, 0))
                closed[prefix] = (n + 1, b + size)
    return WalStats(usage, count, closed, active)


def _sync_all(writers: Sequence[SegmentWriter]) -> None:
    for w in writers:
        w.sync()


def _publish_full(full: list[TableWal]) -> None:
    """Close the full segments a write took out of service (no table's lock held: a compaction and
    fsyncs); one that fails is tried again at the next tick: its rows are in the WAL already."""
    for w in full:
        try:
            w.publish()
        except OSError as e:
            log.warning("closing a full segment of %s failed (%s); tried again at the next tick", w.key, e)


def _round_blocks(groups: list[tuple[int, _Rows]]) -> Iterator[tuple[bytes, bytes, int]]:
    """A round's blocks for one table: for each kind, its requests' rows joined up to
    ~`COMPACT_BLOCK_BYTES` a block, as (header, payload, rows)."""
    for kind, rows in groups:
        line = rows.line
        run: list[bytes | bytearray] = []
        size = count = 0
        for c, data in zip(rows.counts, rows.data, strict=True):
            if run and size + len(data) > COMPACT_BLOCK_BYTES:
                yield (*fmt.encode_block(kind, count, b"".join(run), line), count)
                run, size, count = [], 0, 0
            run.append(data)
            size += len(data)
            count += c
        if run:
            yield (*fmt.encode_block(kind, count, b"".join(run), line), count)


class SharedUsage(Protocol):
    """Accounting shared by the processes that write one WAL directory."""

    def publish(self, usage: int, segments: int) -> None:
        """Set this process's bytes and segments."""

    def others(self) -> tuple[int, int]:
        """Bytes and segments of every other process."""
