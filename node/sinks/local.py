"""The local sink: with no sink configured, batches land in an embedded ClickHouse (chdb) under
`<storage-dir>/local`, in the same tables and columns as the ClickHouse sink (chschema.py).

Sharing the store with `ingestor query`: chdb runs an embedded server that holds an exclusive lock
on its data directory for as long as a connection is open, and refuses a second process even in
read-only mode. So nobody keeps it open: the sink opens the store for one batch (create the table
if needed, insert, close: ~20 ms of opening for a few tables, ~0.2 s for hundreds) and the query
command for one query. Both take `<storage-dir>/local/ingestor.lock` (flock) first, so they take
turns instead of failing on chdb's lock: the query command waits up to `--wait` seconds for an
upload in progress; the sink waits up to `lock_wait` seconds for a query, then fails the batch with
SinkError (retried with backoff). chdb allows one store per process at a time, so every use of chdb
in this process goes through one lock as well. Background merges still happen: ClickHouse merges
while a batch is inserted and when the store is opened.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from node.errors import SinkError
from node.sinks import chschema
from node.sinks.base import Batch
from node.sinks.chschema import TableCache, error_from, quote

log = logging.getLogger(__name__)

LOCK_FILE = "ingestor.lock"
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


class StoreBusyError(SinkError):
    """Another process holds the store for longer than we wait."""


@contextlib.contextmanager
def open_store(directory: Path, wait: float, read_only: bool = False,
               settings: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Lock the store (waiting up to `wait` seconds), open a chdb connection to it (with session
    `settings`), close it at the end. Raises StoreBusyError when the lock is not had in time."""
    directory.mkdir(parents=True, exist_ok=True)
    with _ENGINE:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, wait, directory)
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


def _flock(fd: int, wait: float, directory: Path) -> None:
    # A lock between processes has no event to wait on: poll it, briefly.
    deadline = time.monotonic() + wait
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

    def start(self) -> None:
        try:
            import chdb  # noqa: F401
        except ImportError as e:
            raise SinkError(f"the local sink needs chdb: {e}") from None
        self.directory.mkdir(parents=True, exist_ok=True)
        log.info("local sink: embedded ClickHouse store in %s (query it with `ingestor query --storage-dir %s`)",
                 self.directory, self.directory.parent)

    def stop(self) -> None:
        """Nothing stays open between batches."""

    def accepts(self, database: str) -> bool:
        return True

    def upload(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        where = f"local store {self.directory}"
        with open_store(self.directory, self.config.lock_wait) as conn:
            chschema.deliver(ChdbConn(conn, where), self._cache, batch.database, batch, self.config.dedup_window)
        elapsed = time.perf_counter() - t0
        mb = batch.uncompressed_bytes / 1e6
        log.info("stored %s.%s locally: %d rows, %.1f MB in %.2fs (%.1f MB/s)", batch.database, batch.table,
                 batch.rows, mb, elapsed, mb / elapsed if elapsed > 0 else 0.0)
