"""The uploader's bookkeeping: remove on success, release and back off on failure, quarantine.

The sink here is a recording sink written for the test: the real sinks (local chdb, ClickHouse,
ADX over Azurite) have their own tests; this one is about what happens around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from node.errors import PermanentSinkError, SinkError
from node.metrics import NodeMetrics
from node.sinks.base import Batch
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_rows
from tests.wal.helpers import write_block

SCHEMA = (("Timestamp", "datetime"), ("Value", "real"))


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.rows: list[bytes] = []
        self.batches: list[Batch] = []
        self.fail: Exception | None = None
        self.calls = 0

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def accepts(self, database: str) -> bool:
        return True

    def upload(self, batch: Batch) -> None:
        self.calls += 1
        data = b"".join(batch.iter_csv())
        if self.fail is not None:
            raise self.fail
        self.rows.extend(data.splitlines())
        self.batches.append(batch)


def _setup(tmp_path: Path, n: int = 20) -> tuple[Repository, list[bytes]]:
    wal = Repository(WalConfig(tmp_path / "wal", max_segment_size=2048))
    wal.start()
    sent = []
    for i in range(n):
        row = f"2026-11-24T00:00:{i % 60:02d}Z,{i}\n".encode() * 20
        write_block(wal, "Db", "T" if i % 2 else "U", fmt.KIND_METRIC, row, 20, SCHEMA)
        sent.extend(row.splitlines())
    wal.rotate_all()
    return wal, sent


def _uploader(wal: Repository, sink: RecordingSink, **kw: object) -> Uploader:
    cfg = UploadConfig(interval=0.05, policy=BatchPolicy(min_batch_bytes=0, max_wait=0), backoff_initial=0.05,
                       backoff_max=0.1, **kw)  # type: ignore[arg-type]
    return Uploader(wal, sink, cfg, NodeMetrics(CollectorRegistry()))


async def _until(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_uploaded_segments_are_removed(tmp_path: Path) -> None:
    wal, sent = _setup(tmp_path)
    sink = RecordingSink()
    up = _uploader(wal, sink)
    await up.start()
    await _until(lambda: not wal.closed_segments())
    await up.stop()
    assert sorted(sink.rows) == sorted(sent)
    assert wal.disk_usage() == 0
    assert list((tmp_path / "wal").glob("*.wal")) == []
    assert all(b.schema == SCHEMA for b in sink.batches)


async def test_failed_batches_are_released_and_retried(tmp_path: Path) -> None:
    wal, sent = _setup(tmp_path)
    sink = RecordingSink()
    sink.fail = SinkError("sink down")
    up = _uploader(wal, sink)
    await up.start()
    await _until(lambda: sink.calls >= 4)
    assert sink.rows == [] and len(wal.closed_segments()) > 0  # nothing deleted while failing
    sink.fail = None
    await _until(lambda: not wal.closed_segments())
    await up.stop()
    assert sorted(sink.rows) == sorted(sent)


async def test_permanent_errors_quarantine_and_keep_the_data(tmp_path: Path) -> None:
    wal, _ = _setup(tmp_path, n=4)
    sink = RecordingSink()
    sink.fail = PermanentSinkError("column Value: cannot parse")
    up = _uploader(wal, sink)
    await up.start()
    await _until(lambda: not wal.closed_segments())
    await up.stop()
    q = tmp_path / "quarantine"
    assert len(list(q.glob("*.wal"))) >= 2
    reasons = [p.read_text() for p in q.glob("*.reason.txt")]
    assert reasons and all("cannot parse" in r for r in reasons)


async def test_drain_uploads_young_small_segments(tmp_path: Path) -> None:
    wal, sent = _setup(tmp_path)
    sink = RecordingSink()
    cfg = UploadConfig(interval=3600, policy=BatchPolicy())  # nothing would go out by itself
    up = Uploader(wal, sink, cfg, NodeMetrics(CollectorRegistry()))
    await up.start()
    t0 = time.time()
    assert await up.drain(time.monotonic() + 10)
    await up.stop()
    assert sorted(sink.rows) == sorted(sent)
    assert {p.split("_")[1] for p in up.last_delivered} == {"T", "U"}  # for the status page
    assert all(t0 <= when <= time.time() and where == "recording" for when, where in up.last_delivered.values())


async def test_a_segment_deleted_by_hand_is_dropped_once_and_never_blocks_its_table(tmp_path: Path) -> None:
    """A closed segment whose file someone deleted: the upload that hits it fails once, the segment
    is dropped from the index, logged and counted, and the rest of its table is delivered."""
    wal, sent = _setup(tmp_path, 20)
    ghost = next(s for s in wal.closed_segments() if s.name.table == "T")
    ghost_rows = set(b"".join(iter_rows(ghost.path)).splitlines())
    ghost.path.unlink()
    sink = RecordingSink()
    registry = CollectorRegistry()
    metrics = NodeMetrics(registry)
    wal._on_vanished = lambda info: metrics.wal_vanished.inc()
    cfg = UploadConfig(interval=0.05, policy=BatchPolicy(min_batch_bytes=0, max_wait=0), backoff_initial=5,
                       backoff_max=5)
    up = Uploader(wal, sink, cfg, metrics)
    await up.start()
    try:
        await _until(lambda: not wal.closed_segments())
    finally:
        await up.stop()
    assert sorted(sink.rows) == sorted(r for r in sent if r not in ghost_rows)
    assert registry.get_sample_value("ingestor_wal_vanished_segments_total") == 1
    assert wal.disk_usage() == 0


async def test_a_round_never_plans_segments_a_delivery_removed_while_it_waited(
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 12): a round lists the segments, then waits (ratios sampled in a thread);
    another round (a drain runs beside the loop) delivered and deleted some of them meanwhile, and
    the first round planned them again: ENOENT at the sink (seen after SIGSTOP/SIGCONT)."""
    import node.upload.uploader as uploader_mod

    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    for table in ("A", "B"):
        write_block(wal, "Db", table, fmt.KIND_METRIC, b"2026-11-24T00:00:00Z,1\n", 1, SCHEMA)
    wal.rotate_all()
    sink = RecordingSink()
    seen: list[str] = []
    real_upload = sink.upload

    def upload(batch: Batch) -> None:
        seen.extend(s.path.name for s in batch.segments)
        real_upload(batch)

    sink.upload = upload  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    real_sample = uploader_mod.sample_ratio
    in_sample = asyncio.Event()
    go_on = asyncio.Event()
    calls = [0]

    def first_sample_waits(segment: object) -> float:
        calls[0] += 1
        if calls[0] == 1:
            loop.call_soon_threadsafe(in_sample.set)
            asyncio.run_coroutine_threadsafe(go_on.wait(), loop).result()
        return real_sample(segment)  # type: ignore[arg-type]

    cfg = UploadConfig(interval=3600, policy=BatchPolicy(min_batch_bytes=0, max_wait=0))
    up = Uploader(wal, sink, cfg, NodeMetrics(CollectorRegistry()))
    monkeypatch.setattr(uploader_mod, "sample_ratio", first_sample_waits)
    try:
        first = asyncio.create_task(up._round(cfg.policy))  # lists A and B, then waits sampling a ratio
        await in_sample.wait()
        second = asyncio.create_task(up._round(cfg.policy))  # a drain's round
        with contextlib.suppress(AssertionError):  # the old code delivered A and B here, under the first's feet
            await _until(lambda: sink.calls >= 2 and not wal.closed_segments(), timeout=2)
        go_on.set()
        await asyncio.gather(first, second)
        await _until(lambda: not wal.closed_segments() and not up._tasks)
    finally:
        await up.stop()
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 2, seen  # every segment handed to the sink once
    assert sink.calls == 2


def test_the_size_ratio_is_read_from_block_headers_without_decompressing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from node.upload import uploader as uploader_mod
    from node.wal import codec

    repo = Repository(WalConfig(tmp_path / "wal"))
    repo.start()
    values = [b"".join(b"series_%d,%d,label=value\n" % (i, j) for j in range(200)) for i in range(6)]
    for v in values:
        write_block(repo, "Db", "T", fmt.KIND_METRIC, v, 200)
    monkeypatch.setattr("node.wal.table.compact", lambda *_: None)  # keep six blocks: the ratio samples four
    [segment] = repo.rotate_all()
    measured = sum(len(v) for v in values[:4]) / sum(b.end - b.offset for b in list(
        fmt.iter_raw_blocks(segment.path.read_bytes()))[:4])

    def no_decompress(*_: object, **__: object) -> bytes:
        raise AssertionError("decompressed")

    monkeypatch.setattr(codec, "decompress", no_decompress)
    assert uploader_mod.sample_ratio(segment) == pytest.approx(measured, rel=1e-6)
    assert measured > 2  # rows compress: the ratio is not the default's guess


class FailingOnce(RecordingSink):
    """Raises `error` at its first `times` calls, then takes every batch."""

    def __init__(self, error: Exception, times: int = 1) -> None:
        super().__init__()
        self.error = error
        self.times = times

    def upload(self, batch: Batch) -> None:
        if self.calls < self.times:
            self.calls += 1
            raise self.error
        super().upload(batch)


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "node.upload.uploader" and r.exc_info]


async def _deliver_everything(tmp_path: Path, sink: FailingOnce, caplog: pytest.LogCaptureFixture) -> None:
    """Two tables' segments through `sink` until none is left; every row arrives."""
    wal, sent = _setup(tmp_path, n=2)
    up = _uploader(wal, sink)
    caplog.set_level(logging.WARNING, "node.upload.uploader")
    await up.start()
    try:
        await _until(lambda: not wal.closed_segments())
    finally:
        await up.stop()
    assert sorted(sink.rows) == sorted(sent)


async def test_an_unexpected_error_from_the_sink_is_retried_and_its_traceback_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sink bug (not a SinkError): the table backs off and is delivered at a later round; the
    error is logged with its traceback the first time, in one line the times after."""
    sink = FailingOnce(KeyError("schema"), times=4)
    await _deliver_everything(tmp_path, sink, caplog)  # one segment of each of two tables
    failures = [r for r in caplog.records if "failed" in r.getMessage() and "KeyError" in r.getMessage()]
    assert len(failures) == 4, [r.getMessage() for r in caplog.records]
    [traced] = _tracebacks(caplog)
    assert traced.exc_info is not None and isinstance(traced.exc_info[1], KeyError)


async def test_a_sink_error_is_one_line_without_a_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = FailingOnce(SinkError("sink down"), times=2)
    await _deliver_everything(tmp_path, sink, caplog)
    assert sum("sink down" in r.getMessage() for r in caplog.records) == 2
    assert _tracebacks(caplog) == []


async def test_an_error_while_handling_a_failure_does_not_leave_the_table_stuck(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 14): `_deliver` released its table at three exits, none of them a
    `finally`; an error in the handling itself (here the quarantine directory cannot be made)
    left the table marked in flight for good, never planned again."""
    wal, sent = _setup(tmp_path, n=2)
    (tmp_path / "not-a-dir").write_text("")
    sink = FailingOnce(PermanentSinkError("column Value: cannot parse"), times=1)
    up = _uploader(wal, sink, quarantine_dir=tmp_path / "not-a-dir" / "quarantine")
    caplog.set_level(logging.WARNING, "node.upload.uploader")
    await up.start()
    try:
        await _until(lambda: not wal.closed_segments(), timeout=5)
        await _until(lambda: not up._busy and not up._tasks)
    finally:
        await up.stop()
    assert sorted(sink.rows) == sorted(sent)  # the sink took it at the next try: nothing quarantined, nothing lost
    [traced] = _tracebacks(caplog)
    assert isinstance(traced.exc_info[1], OSError)  # type: ignore[index]


@pytest.mark.parametrize("turns", range(6))
async def test_stop_returns_when_the_round_was_just_woken(tmp_path: Path, turns: int) -> None:
    """A delivery or a transfer that ends wakes the planning loop. Stopping the uploader in the
    turns between that wake and the loop's resumption must end the loop: Python 3.11's
    `asyncio.wait_for` returned the waited result there and swallowed the cancellation, so the
    loop planned on and the node hung on SIGTERM (chaos: "no exit within 60s of SIGTERM")."""
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    up = Uploader(wal, RecordingSink(), UploadConfig(interval=3600), NodeMetrics(CollectorRegistry()))
    await up.start()
    await asyncio.sleep(0.05)  # the loop waits for its next round
    up.kick()
    for _ in range(turns):
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(up.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    assert done, "the uploader's loop went on planning after stop()"
    stopping.result()


class SlowSink(RecordingSink):
    """A sink that takes `seconds` per batch, as a remote one does."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def upload(self, batch: Batch) -> None:
        time.sleep(self.seconds)
        super().upload(batch)


async def test_stop_does_not_wait_for_the_batches_still_waiting_for_their_turn(tmp_path: Path) -> None:
    """A round plans a batch per table; with 40 tables and one upload at a time of 0.3 s, waiting
    for them all would hold the stop 12 s. Stop ends the one at the sink and cancels the rest,
    whose segments stay for the next start, which delivers them, each row once."""
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    sent = []
    for i in range(40):
        row = f"2026-11-24T00:00:{i % 60:02d}Z,{i}\n".encode()
        write_block(wal, "Db", f"T{i}", fmt.KIND_METRIC, row, 1, SCHEMA)
        sent.append(row.strip())
    wal.rotate_all()
    slow = SlowSink(0.3)
    cfg = UploadConfig(interval=3600, uploads=1, policy=BatchPolicy(min_batch_bytes=0, max_wait=0))
    up = Uploader(wal, slow, cfg, NodeMetrics(CollectorRegistry()))
    await up.start()
    await _until(lambda: slow.calls >= 1)
    t0 = time.monotonic()
    await up.stop()
    assert time.monotonic() - t0 < 2.0
    assert 1 <= len(slow.batches) < 10
    left = wal.closed_segments()
    assert len(left) == 40 - len(slow.batches)
    wal.stop()

    again = Repository(WalConfig(tmp_path / "wal"))
    again.start()
    sink = RecordingSink()
    up = Uploader(again, sink, cfg, NodeMetrics(CollectorRegistry()))
    await up.start()
    assert await up.drain(time.monotonic() + 10)
    await up.stop()
    assert sorted(slow.rows + sink.rows) == sorted(sent)


class BlockedSink(RecordingSink):
    """A sink whose uploads wait until `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def upload(self, batch: Batch) -> None:
        self.go.wait(30)
        super().upload(batch)


async def test_a_round_of_many_tables_records_only_the_deliveries_at_the_sink(tmp_path: Path) -> None:
    """A round plans a batch per table. Each delivery is recorded (a write and an fsync in the
    default executor) when its turn at the sink comes: recorded as planned, 10,000 of them queued
    ahead of every other blocking call of the node, and SIGTERM's closing of the segments waited
    behind them for 156 s. Every row still arrives once."""
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    sent = []
    for i in range(60):
        row = f"2026-11-24T00:00:{i % 60:02d}Z,{i}\n".encode()
        write_block(wal, "Db", f"T{i}", fmt.KIND_METRIC, row, 1, SCHEMA)
        sent.append(row.strip())
    wal.rotate_all()
    sink = BlockedSink()
    cfg = UploadConfig(interval=3600, uploads=2, policy=BatchPolicy(min_batch_bytes=0, max_wait=0),
                       deliveries_dir=tmp_path / "deliveries")
    up = Uploader(wal, sink, cfg, NodeMetrics(CollectorRegistry()))
    await up.start()
    await _until(lambda: len(up._queued) == 58)
    t0 = time.monotonic()
    await asyncio.to_thread(lambda: None)  # the default executor is free
    assert time.monotonic() - t0 < 0.5
    recorded = [p for p in (tmp_path / "deliveries").iterdir()]
    assert len(recorded) <= 2, recorded
    sink.go.set()
    assert await up.drain(time.monotonic() + 20)
    await up.stop()
    assert sorted(sink.rows) == sorted(sent)
