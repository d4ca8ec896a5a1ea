"""The uploader's bookkeeping: remove on success, release and back off on failure, quarantine.

The sink here is a recording sink written for the test: the real sinks (local chdb, ClickHouse,
ADX over Azurite) have their own tests; this one is about what happens around them.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from node.errors import PermanentSinkError, SinkError
from node.metrics import NodeMetrics
from node.sinks.base import Batch
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig

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
        wal.write("Db", "T" if i % 2 else "U", fmt.KIND_METRIC, row, 20, SCHEMA)
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
    assert await up.drain(time.monotonic() + 10)
    await up.stop()
    assert sorted(sink.rows) == sorted(sent)
