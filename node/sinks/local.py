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
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from node.errors import PermanentSinkError, SinkError
from node.sinks import chschema
from node.sinks.base import Batch
from node.sinks.chschema import TableCache, error_from, quote

log = logging.getLogger(__name__)

LOCK_FILE = "ingestor.lock"
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
    """Where the local sink keeps its tables."""
    return Path(storage_dir) / "local"


@dataclass(frozen=True)
class LocalConfig:
    """Tuning of the local sink (its directory is given to LocalSink)."""

    lock_wait: float = 10.0
    """Seconds an upload waits for an `ingestor query` holding the store, before failing (retried)."""
    dedup_window: int = chschema.DEFAULT_DEDUP_WINDOW
    """`non_replicated_deduplication_window` of the tables created."""
    idle_close: float | None = None
    """Seconds without a batch after which the store is closed; None: kept open until someone
    waits for it (each close leaks chdb threads: see the module's docstring)."""


class StoreBusyError(SinkError):
    """Another process holds the store for longer than we wait."""


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

    def start(self) -> None:
        try:
            import chdb  # noqa: F401
        except ImportError as e:
            raise SinkError(f"the local sink needs chdb: {e}") from None
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
        try:
            chschema.deliver(ChdbConn(self._conn, where), self._cache, batch.database, batch,
                             self.config.dedup_window, TABLE_SETTINGS)
        except PermanentSinkError:
            raise  # the batch's fault: the store is fine
        except BaseException:
            self._close()
            raise
        self._last_used = time.monotonic()
        if self._closer_thread is None:  # not started: nothing would close it later
            self._close()
        elapsed = time.perf_counter() - t0
        mb = batch.uncompressed_bytes / 1e6
        log.info("stored %s.%s locally: %d rows, %.1f MB in %.2fs (%.1f MB/s)", batch.database, batch.table,
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
