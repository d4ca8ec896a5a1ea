"""The local sink near a full disk: chdb's streaming insert returns without an error when it has
no room to write its part (the rows are not there), so the sink counts what each insert added
and refuses to run out of space silently. The store is on a small tmpfs (skipped where mounting
one is impossible); the WAL is elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from node.errors import SinkError
from node.metrics import NodeMetrics
from node.sinks.base import Batch
from node.sinks.local import (
    DELIVERIES_FILE,
    ChdbConn,
    CheckedConn,
    Deliveries,
    LocalConfig,
    LocalSink,
    UnconfirmedInsertError,
    csv_bytes,
    open_store,
    store_dir,
)
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from tests.harness import fill, tmpfs
from tests.sinks import metrics, write_batch
from tests.wal.helpers import write_block

pytest.importorskip("chdb")

SCHEMA = (("Timestamp", "datetime"), ("SeriesId", "long"), ("Labels", "dynamic"), ("Value", "real"))
NO_SPACE_CHECK = LocalConfig(lock_wait=0.2, min_free=0, free_factor=0)


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs, unmounted at the end."""
    with tmpfs(tmp_path / "vol", "16m") as mnt:
        yield mnt


def rows_batch(wal_dir: Path, first: int, n: int, table: str = "Full") -> Batch:
    """`n` metric rows with unique SeriesIds `first`..`first + n - 1`, in blocks of 1,000."""
    wal = Repository(WalConfig(wal_dir))
    wal.start()
    for start in range(first, first + n, 1000):
        block = "".join(f'2026-11-24T04:00:{i % 60:02d}.{i % 1000:03d}Z,{i},"{{""pod"":""app-{i % 50}-7f9c"",'
                        f'""node"":""aks-nodepool1-{i % 9}"",""i"":{i}}}",{i * 0.25}\n'
                        for i in range(start, min(start + 1000, first + n)))
        write_block(wal, "Metrics", table, fmt.KIND_METRIC, block.encode(), block.count("\n"), SCHEMA)
    return Batch("Metrics", table, tuple(wal.rotate_all()))


def stats(sink: LocalSink, table: str = "Full") -> tuple[int, int]:
    """(rows, distinct SeriesIds) of Metrics.`table`, read on the sink's own thread."""
    def run() -> tuple[int, int]:
        if sink._conn is not None:
            return _stats(ChdbConn(sink._conn, "test"), table)
        with open_store(sink.directory, 5) as c:
            return _stats(ChdbConn(c, "test"), table)
    return sink._owner.submit(run).result()


def _stats(conn: ChdbConn, table: str) -> tuple[int, int]:
    (row,) = conn.query(f"SELECT count(), uniqExact(SeriesId) FROM Metrics.{table}")
    return int(row[0]), int(row[1])


def test_a_full_disk_fails_the_upload_and_the_retry_stores_every_row_once(volume: Path, tmp_path: Path) -> None:
    """Regression (full-disk run: 519,000 rows acknowledged, 335,775 stored): chdb's insert
    returns as if it had written the part when it could not reserve room for it. The upload now
    raises, the segments stay, and once there is room the same batch stores every row, once."""
    sink = LocalSink(store_dir(volume), NO_SPACE_CHECK)
    sink.start()
    try:
        sink.upload(rows_batch(tmp_path / "wal0", 0, 100))  # the table exists, the store is open
        filler = fill(volume, 256 << 10)
        batch = rows_batch(tmp_path / "wal1", 100, 20_000)
        with pytest.raises(UnconfirmedInsertError, match=r"Metrics\.Full returned without an error but the table "
                                                         r"went from 100 to 100 rows.*NOT_ENOUGH_SPACE"):
            sink.upload(batch)
        assert all(s.path.exists() for s in batch.segments) and batch.rows == 20_000
        assert stats(sink) == (100, 100)
        assert sink._store is not None  # the store is fine: kept open (a reopen leaks chdb threads)

        filler.unlink()
        sink.upload(Batch(batch.database, batch.table, batch.segments))  # the retry: same segments, same token
        assert stats(sink) == (20_100, 20_100)
        sink.upload(Batch(batch.database, batch.table, batch.segments))  # once more: deduplicated, delivered
        assert stats(sink) == (20_100, 20_100)
    finally:
        sink.stop()


class Failures:
    """A sink that counts the uploads that raised."""

    def __init__(self, sink: LocalSink) -> None:
        self.sink, self.name, self.failed = sink, sink.name, 0

    def start(self) -> None:
        self.sink.start()

    def stop(self) -> None:
        self.sink.stop()

    def accepts(self, database: str) -> bool:
        return True

    def batch_limit(self) -> int | None:
        return self.sink.batch_limit()

    def upload(self, batch: Batch) -> None:
        try:
            self.sink.upload(batch)
        except SinkError:
            self.failed += 1
            raise


def test_through_the_uploader_the_segments_stay_until_their_rows_are_stored(volume: Path, tmp_path: Path) -> None:
    """The node's path: the uploader keeps the segments while the store has no room (they were
    deleted before: the insert returned), and delivers them, every row once, when it has."""
    wal = Repository(WalConfig(tmp_path / "node" / "wal"))
    wal.start()
    rows_batch(tmp_path / "node" / "wal", 0, 20_000)  # closed segments in the node's WAL
    wal.refresh()
    segments = wal.closed_segments()
    assert segments
    filler = fill(volume, 256 << 10)
    sink = Failures(LocalSink(store_dir(volume), NO_SPACE_CHECK))
    config = UploadConfig(interval=0.05, backoff_initial=0.05, backoff_max=0.1,
                          policy=BatchPolicy(min_batch_bytes=0, max_wait=0))

    async def run() -> None:
        up = Uploader(wal, sink, config, NodeMetrics(CollectorRegistry()))
        await up.start()
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while sink.failed < 2 and wal.closed_segments() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert sink.failed >= 2 and all(s.path.exists() for s in segments)
            assert stats(sink.sink) == (0, 0)
            filler.unlink()
            while wal.closed_segments() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert not wal.closed_segments()
            assert stats(sink.sink) == (20_000, 20_000)
        finally:
            await up.stop()

    asyncio.run(run())


def test_no_room_is_refused_before_inserting(volume: Path, tmp_path: Path) -> None:
    """With less free space than max(64 MiB, 2x the batch), the batch is not tried: one line
    says what is free, what is needed and where."""
    sink = LocalSink(store_dir(volume), LocalConfig(lock_wait=0.2))
    sink.start()
    try:
        batch = rows_batch(tmp_path / "wal", 0, 1000)
        free = os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize
        with pytest.raises(SinkError) as info:
            sink.upload(batch)
        msg = str(info.value)
        assert "\n" not in msg and str(sink.directory) in msg and f"{free / 1e6:.1f} MB free" in msg
        assert "needs 67.1 MB (max(64 MiB, 2x its rows))" in msg and "free space on that volume" in msg
    finally:
        sink.stop()
    # and the check follows the batch's size: 2x 9 MB of rows on a 16 MB volume, over 4 MiB headroom
    sink = LocalSink(store_dir(volume), LocalConfig(lock_wait=0.2, min_free=4 << 20))
    sink.start()
    try:
        sink.upload(batch)
        big = rows_batch(tmp_path / "wal2", 1000, 80_000)
        with pytest.raises(SinkError, match=r"a batch of \d+\.\d MB needs \d+\.\d MB \(max\(4 MiB, 2x its rows\)\)"):
            sink.upload(big)
        assert stats(sink) == (1000, 1000)
    finally:
        sink.stop()


def test_csv_bytes_from_block_headers(tmp_path: Path) -> None:
    batch = rows_batch(tmp_path / "wal", 0, 5000)
    estimate = csv_bytes(batch)
    b"".join(batch.iter_csv())
    assert estimate == batch.uncompressed_bytes + sum(s.blocks for s in batch.segments) * (
        fmt.SAMPLE_HEADER.size + len(b"Timestamp:datetime,SeriesId:long,Labels:dynamic,Value:real\n"))


def test_an_insert_whose_count_was_lost_is_credited_on_the_retry(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash (here: a failed count) between the insert and its record: the retry adds 0 rows
    (deduplicated), and is confirmed because the open record is settled by the table's count
    first, also by a sink of a restarted node."""
    directory = store_dir(tmp_path / "storage")
    sink = LocalSink(directory, NO_SPACE_CHECK)
    batch = write_batch(tmp_path / "wal", metrics(n=5))
    real = CheckedConn.count
    calls = {"n": 0}

    def lost_after_insert(self: CheckedConn, database: str, table: str) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise SinkError("connection lost")
        return real(self, database, table)

    monkeypatch.setattr(CheckedConn, "count", lost_after_insert)
    with pytest.raises(SinkError, match="connection lost"):
        sink.upload(batch)
    monkeypatch.setattr(CheckedConn, "count", real)
    lines = [json.loads(line) for line in (directory / DELIVERIES_FILE).read_text().splitlines()]
    assert lines == [{"table": "Metrics.HttpRequestsTotal", "begin": lines[0]["begin"], "before": 0}]
    restarted = LocalSink(directory, NO_SPACE_CHECK)
    restarted.upload(Batch(batch.database, batch.table, batch.segments))
    assert stats(restarted, "HttpRequestsTotal")[0] == batch.rows == 15  # once


def test_rows_that_no_attempt_was_seen_adding_are_not_confirmed(tmp_path: Path) -> None:
    """0 rows added is a success only for a token credited before: without the record (here
    removed), a batch whose rows are there cannot be told from one whose write failed, and is
    not confirmed."""
    directory = store_dir(tmp_path / "storage")
    sink = LocalSink(directory, NO_SPACE_CHECK)
    batch = write_batch(tmp_path / "wal", metrics(n=2))
    sink.upload(batch)
    (directory / DELIVERIES_FILE).unlink()
    with pytest.raises(UnconfirmedInsertError, match=r"from 6 to 6 rows \(\+0; 6 in the batch, 0 credited"):
        LocalSink(directory, NO_SPACE_CHECK).upload(Batch(batch.database, batch.table, batch.segments))


def test_deliveries_record_is_bounded_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / DELIVERIES_FILE
    d = Deliveries(path, keep=10)
    count = 0
    for i in range(500):
        d.settle("Db.T", count)
        d.begin("Db.T", f"tok{i}", count)
        count += 3
        d.settle("Db.T", count)
    assert len(path.read_text().splitlines()) < 100
    assert d.credited("Db.T", "tok499") == 3 and d.credited("Db.T", "tok489") == 0
    d.begin("Db.T", "tok500", count)  # a crash after this line
    with open(path, "a") as f:
        f.write('{"table": "Db.T", "add')  # and a torn one
    again = Deliveries(path, keep=10)
    again.load()
    assert again.credit == d.credit and again.open == {"Db.T": ("tok500", count)}
    assert again.settle("Db.T", count + 7) == 7 and again.credited("Db.T", "tok500") == 7


def test_the_uploader_plans_batches_that_fit_the_room_left(volume: Path, tmp_path: Path) -> None:
    """A volume with less room than a whole table's backlog needs: the uploader asks the local sink
    how large a batch may be (`batch_limit`) and drains the backlog in batches that fit, instead
    of planning one batch the sink refuses for ever."""
    wal_dir = tmp_path / "node" / "wal"
    for i in range(10):
        rows_batch(wal_dir, i * 10_000, 10_000)  # ten segments, about 1.1 MB of rows each
    wal = Repository(WalConfig(wal_dir))
    wal.start()
    total = sum(csv_bytes(Batch("Metrics", "Full", (s,))) for s in wal.closed_segments())
    config = LocalConfig(lock_wait=0.2, min_free=4 << 20)
    sink = Failures(LocalSink(store_dir(volume), config))
    free = os.statvfs(volume).f_bavail * os.statvfs(volume).f_frsize
    assert 2 * total > free  # one batch of it all could never go
    sizes: list[int] = []
    real_upload = sink.sink.upload

    def upload(batch: Batch) -> None:
        sizes.append(csv_bytes(batch))
        real_upload(batch)

    sink.sink.upload = upload  # type: ignore[method-assign]
    up_config = UploadConfig(interval=0.05, backoff_initial=0.05, backoff_max=0.1,
                             policy=BatchPolicy(min_batch_bytes=0, max_wait=0))

    async def run() -> None:
        up = Uploader(wal, sink, up_config, NodeMetrics(CollectorRegistry()))
        await up.start()
        try:
            deadline = asyncio.get_running_loop().time() + 60
            while wal.closed_segments() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert not wal.closed_segments()
        finally:
            await up.stop()

    asyncio.run(run())
    assert stats(sink.sink) == (100_000, 100_000)
    assert len(sizes) > 1 and sum(sizes) >= total
