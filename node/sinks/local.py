"""The local sink: with no sink configured, batches land in an embedded ClickHouse (chdb) under
`<storage-dir>/local`, in the same tables and columns as the ClickHouse sink (chschema.py).

Sharing the store with `ingestor query`: chdb runs an embedded server that holds an exclusive lock
on its data directory for as long as a connection is open, and refuses a second process even in
read-only mode. Both the sink and the query command take `<storage-dir>/local/ingestor.lock`
(flock) first, so they take turns instead of failing on chdb's lock. Whoever waits for the store
announces it with a marker file `query.wanted.<pid>-<thread>` next to the lock; the sink keeps the
store open for as long as nobody waits (see below) and closes it within 0.1 s of an announcement.
The query command waits up to `--wait` seconds; the sink waits up to `lock_wait` seconds for a
query, then fails the batch with SinkError (retried). chdb allows one store per process at a time,
so every use of chdb in this process goes through one lock as well. Background merges still
happen: ClickHouse merges while a batch is inserted and when the store is opened.

Why the store stays open: chdb 4.4 leaves about five threads and fifteen file descriptors behind
each time a connection is opened and closed (measured: 200 cycles, +1,040 threads, +2,900 fds).
A sink that closed the store when idle leaked them with every batch (the soak run found it), so
it now reopens only after a query or a failure, and `idle_close` (None by default) is there for
tests.

Deduplication: chdb is a modern ClickHouse, so inserts carry `insert_deduplication_token`.

A "yes" is checked, not believed (`CheckedConn`). chdb 4.4's streaming insert
(`send_insert().finish()`) swallows the failure of the write itself: on a volume without room it
returns normally, its `rows_written` counting the rows it parsed, while no part is written
(measured on a 32 MB tmpfs: `finish()` returns, `count()` does not move, nothing is left in tmp/,
and the only trace is `system.errors`: NOT_ENOUGH_SPACE "Cannot reserve 1.42 MiB, not enough
space"; neither the C++ result's nor the inserter's `has_error()` is set). `query("INSERT ... FORMAT
CSV <rows>")` does raise, but needs the whole batch in memory as one string. So the sink counts
the target table before and after each insert, on its one owner thread: it is the store's only
writer (`ingestor query` opens it read-only, and not while the sink holds it), and count() of a
MergeTree is unchanged by merges, so the difference is exactly what the insert added. See
`Deliveries` for how a retry that adds fewer rows (deduplicated) is told from a failed write.

Room: an insert needs free space on the store's volume (ClickHouse reserves a block's size before
writing its part; the WAL shares the volume), so a batch is not even tried without `free_space`
(see `needed_bytes`); the SinkError says what is free, what is needed, and where.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from node import debug
from node.errors import PermanentSinkError, SinkError
from node.sinks import chschema
from node.sinks.base import Batch
from node.sinks.chschema import TableCache, error_from, quote
from node.storage import StorageLayout, atomic_write
from node.wal import format as fmt

log = logging.getLogger(__name__)

LOCK_FILE = "ingestor.lock"
DELIVERIES_FILE = "ingestor.deliveries"
"""The sink's record of what its inserts added (`Deliveries`), next to the lock."""
MiB = 1 << 20
SPACE_HEADROOM = 64 * MiB
SPACE_FACTOR = 2
"""An insert is tried only with max(SPACE_HEADROOM, SPACE_FACTOR x the batch's CSV bytes) free (see
`needed_bytes`)."""
WANTED_FILE = "query.wanted"
"""Prefix of the markers of those waiting for the store (one per waiting thread)."""
STALE_WANTED_SECONDS = 60.0
ENGINE_SETTINGS = {
    "max_thread_pool_free_size": "32",
    "mark_cache_size": str(64 << 20),
    "index_mark_cache_size": str(16 << 20),
    "primary_index_cache_size": str(64 << 20),
    "query_condition_cache_size": str(16 << 20),
}
"""Bounds of the embedded server (chdb applies server settings given at its first connection in a
process). Its defaults suit a database server, not a sink inside a node: up to 1,000 idle threads
kept after a burst, and mark and primary-index caches of up to 5 GiB each."""
TABLE_SETTINGS = {"concurrent_part_removal_threshold": "1000000"}
"""MergeTree settings of the tables the local sink creates. With the default (100), removing the
outdated parts of a table that takes a small insert a second starts a pool of ~125 threads that
stay (measured: 25 threads before, 150 after, whatever the server's pool settings); one thread
removes a few hundred small parts in no time."""
_ENGINE = threading.Lock()
"""chdb runs one embedded server per process, on one directory at a time."""


def store_dir(storage_dir: Path) -> Path:
    """Where the local sink keeps its tables (`<storage-dir>/local`, node/storage.py)."""
    return StorageLayout(Path(storage_dir)).local


@dataclass(frozen=True)
class LocalConfig:
    """Tuning of the local sink (its directory is given to LocalSink)."""

    lock_wait: float = 10.0
    """Seconds an upload waits for an `ingestor query` holding the store, before failing (retried)."""
    dedup_window: int = chschema.DEFAULT_DEDUP_WINDOW
    """`non_replicated_deduplication_window` of the tables created."""
    min_free: int = SPACE_HEADROOM
    free_factor: float = SPACE_FACTOR
    """An insert is tried only with max(min_free, free_factor x the batch's CSV bytes) free on the
    store's volume (see `needed_bytes`); 0 and 0 turn the check off (tests)."""
    idle_close: float | None = None
    """Seconds without a batch after which the store is closed; None: kept open until someone
    waits for it (each close leaks chdb threads: see the module's docstring)."""


class StoreBusyError(SinkError):
    """Another process holds the store for longer than we wait."""


class UnconfirmedInsertError(SinkError):
    """An insert returned but the table does not have the batch's rows (e.g. no room to write its
    part): retried; the store itself is fine and stays open."""


@contextlib.contextmanager
def open_store(directory: Path, wait: float, read_only: bool = False,
               settings: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Lock the store (waiting up to `wait` seconds, announced by a marker so that a sink holding
    it lets go), open a chdb connection to it (with session `settings`), close it at the end.
    Raises StoreBusyError when the lock is not had in time."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = directory / f"{WANTED_FILE}.{os.getpid()}-{threading.get_ident()}"
    wanted.touch()
    try:
        deadline = time.monotonic() + wait
        if not _ENGINE.acquire(timeout=wait):
            raise StoreBusyError(f"the local store {directory} is held in this process for over {wait:g}s")
        try:
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock(fd, max(0.0, deadline - time.monotonic()), wait, directory)
                wanted.unlink(missing_ok=True)
                import chdb

                try:
                    params = {**({"mode": "ro"} if read_only else {}), **(settings or {})}
                    target = f"{directory}?{urlencode(params)}" if params else str(directory)
                    conn = chdb.connect(target)  # type: ignore[no-untyped-call]
                except RuntimeError as e:  # never the batch's fault (e.g. a process that did not take our lock)
                    raise SinkError(f"opening the local store {directory}: {e}") from None
                finally:
                    debug.default_fatal_signals()  # chdb took them again: see there
                try:
                    yield conn
                finally:
                    conn.close()
            finally:
                os.close(fd)  # releases the flock
        finally:
            _ENGINE.release()
    finally:
        wanted.unlink(missing_ok=True)


def someone_waits(directory: Path) -> bool:
    """Whether a fresh marker says that someone waits for the store (older ones were left by a
    process that was killed, and are removed)."""
    now = time.time()
    found = False
    for marker in directory.glob(f"{WANTED_FILE}.*"):
        try:
            age = now - marker.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < STALE_WANTED_SECONDS:
            found = True
        else:
            marker.unlink(missing_ok=True)
    return found


def _flock(fd: int, left: float, wait: float, directory: Path) -> None:
    # A lock between processes has no event to wait on: poll it, briefly.
    deadline = time.monotonic() + left
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreBusyError(f"the local store {directory} is in use by another process "
                                     f"(an upload or an `ingestor query`) for over {wait:g}s") from None
            time.sleep(0.05)


class ChdbConn:
    """chschema.Conn over an open chdb connection."""

    def __init__(self, conn: Any, where: str) -> None:
        self._conn, self._where = conn, where

    def _run(self, sql: str, fmt: str = "TabSeparated") -> str:
        try:
            return str(self._conn.query(sql, fmt).bytes().decode())
        except RuntimeError as e:
            raise error_from(None, str(e), self._where) from None

    def query(self, sql: str) -> list[list[str]]:
        return chschema.parse_tsv(self._run(sql))

    def command(self, sql: str) -> None:
        self._run(sql)

    def insert(self, database: str, table: str, columns: Sequence[tuple[str, str]], chunks: Iterable[bytes],
               settings: Mapping[str, str]) -> None:
        cols = ", ".join(quote(c) for c, _ in columns)
        sets = ", ".join(f"{k} = {chschema.literal(v)}" for k, v in settings.items())
        sql = f"INSERT INTO {quote(database)}.{quote(table)} ({cols})" + (f" SETTINGS {sets}" if sets else "")
        try:
            with self._conn.send_insert(sql, "CSV") as ins:
                for chunk in chunks:
                    if chunk:
                        ins.append(chunk)
                ins.finish()
        except RuntimeError as e:
            raise error_from(None, str(e), f"{self._where}: insert into {database}.{table}") from None


def csv_bytes(batch: Batch) -> int:
    """The bytes of CSV text in `batch`'s segments (with each block's 8-byte header and schema
    line), from their block headers, without decompressing: each block is a Snappy/S2 block, which
    starts with its uncompressed length (a varint). Falls back to 5x the segment's size (the
    uploader's first guess) for a segment that cannot be walked."""
    total = 0
    for seg in batch.segments:
        try:
            total += _segment_csv_bytes(seg.path)
        except (OSError, ValueError):
            total += 5 * seg.size
    return total


def _segment_csv_bytes(path: Path) -> int:
    with open(path, "rb") as f:  # only the pages of the block headers are read
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            fmt.check_magic(data[:len(fmt.MAGIC)])
            offset, total = len(fmt.MAGIC), 0
            while offset + fmt.BLOCK_HEADER.size <= size:
                length, _ = fmt.BLOCK_HEADER.unpack_from(data, offset)
                offset += fmt.BLOCK_HEADER.size
                if length == 0 or offset + length > size:
                    raise ValueError(f"{path}: bad block at {offset}")
                n = shift = 0
                for byte in data[offset:offset + min(5, length)]:
                    n |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                total += n
                offset += length
    return total


def free_space(directory: Path) -> int:
    """Bytes an unprivileged process can still write on `directory`'s volume."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def needed_bytes(batch_bytes: int, min_free: int = SPACE_HEADROOM, factor: float = SPACE_FACTOR) -> int:
    """Free bytes required before inserting a batch of `batch_bytes` CSV bytes: by default
    max(64 MiB, 2 x batch_bytes). Why (measured on 100 MB batches, 2026-11-30): ClickHouse
    reserves a block's uncompressed column bytes before writing its part (`Cannot reserve ...` is
    what fails), 0.73x the CSV for metric rows; the part then takes 0.21x (metric rows with
    random ids and values) to 0.57x (log rows of random text) of the CSV, up to about 1x for
    incompressible text. So 1x covers what a batch reserves and leaves; the second 1x is for the
    merges that follow (a merge writes the merged part before dropping its sources) and for the
    WAL, which keeps taking rows on the same volume meanwhile. 64 MiB: the store's metadata and
    deduplication logs, and small batches' merges. Refusing costs a retry with its reason said
    (the rows wait in the WAL); trying on a volume about to fill fails anyway (the count catches
    it) and starves merges and the WAL, so the bound errs high."""
    return max(min_free, int(factor * batch_bytes))


def check_space(directory: Path, batch: Batch, min_free: int = SPACE_HEADROOM,
                factor: float = SPACE_FACTOR) -> None:
    """Raise SinkError (the batch is retried, its segments kept) when the store's volume has less
    free space than `needed_bytes` for the batch."""
    if min_free <= 0 and factor <= 0:
        return
    size = csv_bytes(batch)
    need, free = needed_bytes(size, min_free, factor), free_space(directory)
    if free < need:
        raise SinkError(f"local store {directory}: {free / 1e6:.1f} MB free on its volume, a batch of "
                        f"{size / 1e6:.1f} MB needs {need / 1e6:.1f} MB (max({min_free / MiB:g} MiB, "
                        f"{factor:g}x its rows)); not "
                        f"inserted, its segments are kept and retried: free space on that volume or move "
                        f"--storage-dir to a larger one")


class Deliveries:
    """What the sink's inserts added to each table, per deduplication token, on disk
    (`<store>/ingestor.deliveries`, JSON lines), so that a retried batch that adds fewer rows than
    it has is told apart from a write that failed without saying so.

    The reasoning. An insert carries the batch's token, and ClickHouse drops every block whose
    token it already has, so a retry of a batch that was stored adds 0 rows, and a retry of one
    stored in part (an insert of several blocks cut off) adds the rest. A failed write that chdb
    does not report adds 0 rows too. Neither ClickHouse's answer nor a system table tells which
    (the deduplication log is an internal file). So the sink keeps its own account: before an
    insert into a table it writes, and fsyncs, `begin` (token, the table's count before); after it,
    `added` (count after - count before), credited to the token. Rows credited to a token are rows
    of that batch in the table; the batch is delivered once its credit reaches its row count
    (`Batch.rows`, the sum of its blocks' counts). A retry that adds 0 rows is therefore a success
    exactly when an earlier attempt was seen adding them, and a failure when none was.

    A crash between an insert and its `added` line leaves the `begin` open. The next insert into
    that table first settles it: the sink is the table's only writer and writes a `begin` before
    every insert into it, so whatever the count moved since the open `begin` was that insert's,
    and is credited to its token (0 if it never ran). Hence no window in which rows in the table
    are unaccounted for: a batch confirmed before a crash and retried after it is confirmed again,
    rows once. The `added` lines are not fsynced: the next `begin` (same file) makes them durable,
    and one lost in a crash is settled like an open `begin`.

    Kept: per table the tokens of the last `keep` batches (the tables' deduplication window:
    ClickHouse has forgotten older tokens, so a retry of those inserts its rows again and needs no
    credit), and the open `begin`s. The file is rewritten (atomically) when it has grown to twice
    that. It is read again every time the store is opened, under the store's lock, so that two
    sinks taking turns in one process (or a restarted node) see each other's lines."""

    def __init__(self, path: Path, keep: int = chschema.DEFAULT_DEDUP_WINDOW) -> None:
        self.path, self.keep = path, max(1, keep)
        self.credit: dict[str, dict[str, int]] = {}
        """table -> token -> rows credited (oldest first)."""
        self.open: dict[str, tuple[str, int]] = {}
        """table -> (token, count before) of the insert not settled yet."""
        self._lines = 0

    def load(self) -> None:
        self.credit, self.open, self._lines = {}, {}, 0
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                table = str(rec["table"])
                if "begin" in rec:
                    self.open[table] = (str(rec["begin"]), int(rec["before"]))
                elif "added" in rec:
                    self._settle(table, int(rec["added"]))
                elif "credit" in rec:
                    self.credit.setdefault(table, {})[str(rec["token"])] = int(rec["credit"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash: only the last can be, and it was not acted on
            self._lines += 1

    def credited(self, table: str, token: str) -> int:
        return self.credit.get(table, {}).get(token, 0)

    def begin(self, table: str, token: str, before: int) -> None:
        """Record (durably) an insert about to start."""
        if self._lines > 2 * (sum(len(t) for t in self.credit.values()) + len(self.open)) + 64:
            self._compact()
        self._append({"table": table, "begin": token, "before": before}, sync=True)
        self.open[table] = (token, before)

    def settle(self, table: str, count_now: int) -> int | None:
        """Credit the open insert into `table` with what the count moved since it began; return
        that (None: nothing open)."""
        if table not in self.open:
            return None
        added = count_now - self.open[table][1]
        self._append({"table": table, "added": added}, sync=False)
        self._settle(table, added)
        return added

    def _settle(self, table: str, added: int) -> None:
        opened = self.open.pop(table, None)
        if opened is None:
            return
        token = opened[0]
        tokens = self.credit.setdefault(table, {})
        tokens[token] = tokens.pop(token, 0) + max(0, added)  # a table dropped meanwhile: < 0
        while len(tokens) > self.keep:
            del tokens[next(iter(tokens))]

    def _append(self, rec: dict[str, str | int], sync: bool) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
                if sync:
                    os.fsync(f.fileno())
        except OSError as e:
            raise SinkError(f"cannot record the insert in {self.path}: {e}") from None
        self._lines += 1

    def _compact(self) -> None:
        recs = [{"table": t, "token": k, "credit": v} for t, tokens in self.credit.items() for k, v in tokens.items()]
        recs += [{"table": t, "begin": k, "before": b} for t, (k, b) in self.open.items()]
        try:
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in recs))
        except OSError as e:
            raise SinkError(f"cannot rewrite {self.path}: {e}") from None
        self._lines = len(recs)


class CheckedConn(ChdbConn):
    """A ChdbConn whose inserts of `batch` are confirmed by the table's count (see `Deliveries`):
    an insert that did not put every row of the batch in the table raises SinkError."""

    def __init__(self, conn: Any, where: str, batch: Batch, deliveries: Deliveries) -> None:
        super().__init__(conn, where)
        self.batch, self.deliveries = batch, deliveries

    def count(self, database: str, table: str) -> int:
        return int(self.query(f"SELECT count() FROM {quote(database)}.{quote(table)}")[0][0])

    def insert(self, database: str, table: str, columns: Sequence[tuple[str, str]], chunks: Iterable[bytes],
               settings: Mapping[str, str]) -> None:
        token = settings.get("insert_deduplication_token")
        key = f"{database}.{table}"
        t0 = time.time()
        before = self.count(database, table)
        if token is not None:
            self.deliveries.settle(key, before)  # an insert cut off earlier (crash, lost count)
            credit = self.deliveries.credited(key, token)
            self.deliveries.begin(key, token, before)
        else:
            credit = 0  # a fresh staging table (servers without tokens): no retry can add fewer
        super().insert(database, table, columns, chunks, settings)
        after = self.count(database, table)
        added = after - before
        if token is not None:
            self.deliveries.settle(key, after)
        rows = self.batch.rows  # known now: the insert read the batch to its end
        total = credit + max(0, added)
        if (total >= rows > 0) or (rows == 0 and total > 0) or (rows == 0 and self.batch.uncompressed_bytes == 0):
            if credit and added > 0:
                log.warning("batch %s: %s added %d rows to %s though %d were credited to it before (of %d): "
                            "if its table was not dropped meanwhile, rows may be doubled", self.batch.id,
                            self._where, added, key, credit, rows)
            elif credit and added == 0:
                log.info("batch %s was stored in %s before (%d rows): deduplicated", self.batch.id, key, credit)
            return
        seen = "" if rows else " (its blocks carry no row counts)"
        raise UnconfirmedInsertError(
            f"{self._where}: the insert of batch {self.batch.id} into {key} returned without an error but the "
            f"table went from {before} to {after} rows ({added:+d}; {rows} in the batch{seen}, {credit} credited by "
            f"earlier attempts){self._errors_since(t0)}; not confirmed: its segments are kept and retried")

    def _errors_since(self, t0: float) -> str:
        """What chdb counted in system.errors since `t0` (where it keeps the write's failure)."""
        try:
            rows = self.query("SELECT name, value, last_error_message FROM system.errors "
                              f"WHERE last_error_time >= toDateTime({int(t0)}) ORDER BY last_error_time DESC LIMIT 3")
        except SinkError:
            return ""
        return "; system.errors: " + "; ".join(f"{r[0]} ({r[2][:300]})" for r in rows) if rows else ""


class LocalSink:
    """Delivers batches of every database into the embedded store in `directory`
    (`store_dir(storage_dir)`, i.e. `<storage-dir>/local`)."""

    name = "local"

    def __init__(self, directory: Path, config: LocalConfig | None = None) -> None:
        self.directory = Path(directory)
        self.config = config or LocalConfig()
        self._cache = TableCache()
        self._owner = ThreadPoolExecutor(1, thread_name_prefix="local-store")
        self._store: contextlib.AbstractContextManager[Any] | None = None
        self._conn: Any = None
        self._last_used = 0.0
        self._stopping = threading.Event()
        self._closer_thread: threading.Thread | None = None
        self.deliveries = Deliveries(self.directory / DELIVERIES_FILE, self.config.dedup_window)

    def start(self) -> None:
        try:
            import chdb  # noqa: F401
        except ImportError as e:
            raise SinkError(f"the local sink needs chdb: {e}") from None
        debug.default_fatal_signals()  # chdb takes them when it loads
        self.directory.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        self._closer_thread = threading.Thread(target=self._closer, name="local-store-closer", daemon=True)
        self._closer_thread.start()
        log.info("local sink: embedded ClickHouse store in %s (query it with `ingestor query --storage-dir %s`)",
                 self.directory, self.directory.parent)

    def stop(self) -> None:
        self._stopping.set()
        if self._closer_thread is not None:
            self._closer_thread.join()
            self._closer_thread = None
        self._owner.submit(self._close).result()

    def accepts(self, database: str) -> bool:
        return True

    def batch_limit(self) -> int | None:
        """The largest batch (bytes of CSV) that the room on the store's volume lets through now
        (`needed_bytes` the other way round), at least 1 MB: the uploader plans no larger one, so
        a volume near full is drained by small batches instead of refusing big ones forever."""
        c = self.config
        if c.free_factor <= 0:
            return None
        try:
            room = free_space(self.directory) - c.min_free
        except OSError:
            return None
        return max(1 << 20, int(room / c.free_factor))

    def upload(self, batch: Batch) -> None:
        # chdb's connection is opened, used and closed on one thread: the sink's own.
        self._owner.submit(self._upload, batch).result()

    def _upload(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        where = f"local store {self.directory}"
        if self._store is None:
            self._wait_for_queries()
            store = open_store(self.directory, self.config.lock_wait, settings=ENGINE_SETTINGS)
            self._conn = store.__enter__()  # StoreBusyError leaves nothing held
            self._store = store
            self.deliveries.load()  # under the store's lock: whoever held it before may have added lines
        check_space(self.directory, batch, self.config.min_free, self.config.free_factor)
        try:
            chschema.deliver(CheckedConn(self._conn, where, batch, self.deliveries), self._cache, batch.database,
                             batch, self.config.dedup_window, TABLE_SETTINGS)
        except (PermanentSinkError, UnconfirmedInsertError):
            raise  # the batch's fault, or no room: the store is fine (and a reopen leaks chdb threads)
        except BaseException:
            self._close()
            raise
        self._last_used = time.monotonic()
        if self._closer_thread is None:  # not started: nothing would close it later
            self._close()
        elapsed = time.perf_counter() - t0
        mb = batch.uncompressed_bytes / 1e6
        log.debug("stored %s.%s locally: %d rows, %.1f MB in %.2fs (%.1f MB/s)", batch.database, batch.table,
                  batch.rows, mb, elapsed, mb / elapsed if elapsed > 0 else 0.0)

    def _query_waiting(self) -> bool:
        return someone_waits(self.directory)

    def _wait_for_queries(self) -> None:
        """Let a waiting `ingestor query` have the store first (it takes the lock, then removes
        its marker), so that a busy node cannot starve it."""
        deadline = time.monotonic() + self.config.lock_wait
        while self._query_waiting():
            if time.monotonic() >= deadline:
                raise StoreBusyError(f"an `ingestor query` is waiting for the local store {self.directory}")
            time.sleep(0.05)

    def _close(self) -> None:
        """On the owner thread: close the store and release its lock."""
        store, self._store, self._conn = self._store, None, None
        if store is not None:
            store.__exit__(None, None, None)

    def _close_if_idle(self) -> None:
        idle = self.config.idle_close
        if self._store is not None and ((idle is not None and time.monotonic() - self._last_used > idle)
                                        or self._query_waiting()):
            self._close()

    def _closer(self) -> None:
        """Close the store when idle or when a query wants it."""
        while not self._stopping.wait(0.1):
            if self._store is not None:
                self._owner.submit(self._close_if_idle).result()
