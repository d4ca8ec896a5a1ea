"""Deliveries are recorded before they start, so a retry or a restart delivers the same segments
under the same deduplication token: the rows are in the sink once (regressions of the chaos run,
whose duplicates came from batches regrouped with newer segments after a failure or a kill).

The sink is the real local sink (chdb, deduplicating by `insert_deduplication_token`), wrapped
where a test needs the sink's answer to be lost after it stored the rows.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from node.errors import SinkError
from node.metrics import NodeMetrics
from node.sinks.base import Batch
from node.sinks.local import ChdbConn, LocalSink, open_store, store_dir
from node.upload.batcher import BatchPolicy
from node.upload.intents import SINK, Intent, Intents
from node.upload.uploader import UploadConfig, Uploader
from node.wal import format as fmt
from node.wal.repository import Repository, WalConfig
from node.wal.table import SegmentInfo
from tests.wal.helpers import write_block

pytest.importorskip("chdb")

SCHEMA = (("Timestamp", "datetime"), ("Value", "real"))


def write(wal: Repository, first: int, count: int) -> list[SegmentInfo]:
    """`count` closed segments of Db/T, 10 rows each, values from `first * 10` on."""
    out = []
    for i in range(first, first + count):
        rows = b"".join(f"2026-11-30T00:00:00Z,{i * 10 + j}\n".encode() for j in range(10))
        write_block(wal, "Db", "T", fmt.KIND_METRIC, rows, 10, SCHEMA)
        out.extend(wal.rotate_all())
    return out


def stored(sink_dir: Path) -> list[int]:
    with open_store(sink_dir, 10) as c:
        return sorted(int(float(r[0])) for r in ChdbConn(c, "test").query("SELECT Value FROM Db.T"))


def record(root: Path, segments: list[SegmentInfo]) -> None:
    """What the uploader notes before it sends `segments` to the sink."""
    Intents(root / "deliveries").record(Intent(segments[0].prefix, tuple(s.path.name for s in segments), SINK,
                                               time.time()))


def recorded_delivery(root: Path, sink_took_it: bool) -> tuple[list[SegmentInfo], Path]:
    """Three closed segments of Db/T whose delivery to the local sink was recorded (and, when
    `sink_took_it`, stored): the segments and the sink's directory."""
    wal = Repository(WalConfig(root / "wal"))
    wal.start()
    first = write(wal, 0, 3)
    sink_dir = store_dir(root / "storage")
    if sink_took_it:
        LocalSink(sink_dir).upload(Batch("Db", "T", tuple(first)))
    record(root, first)
    return first, sink_dir


def uploader(root: Path, wal: Repository, sink: object) -> Uploader:
    cfg = UploadConfig(interval=0.05, policy=BatchPolicy(min_batch_bytes=0, max_wait=0), backoff_initial=0.05,
                       backoff_max=0.1)
    return Uploader(wal, sink, cfg, NodeMetrics(CollectorRegistry()))  # type: ignore[arg-type]


async def until(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class LostAnswerSink:
    """The local sink whose first answer is lost: it stores the batch, waits for `go`, then fails
    as a timeout would."""

    name = "local"

    def __init__(self, inner: LocalSink) -> None:
        self.inner = inner
        self.go = threading.Event()
        self.calls: list[tuple[str, ...]] = []

    def start(self) -> None:
        self.inner.start()

    def stop(self) -> None:
        self.inner.stop()

    def accepts(self, database: str) -> bool:
        return True

    def upload(self, batch: Batch) -> None:
        self.calls.append(tuple(s.path.name for s in batch.segments))
        self.inner.upload(batch)
        if len(self.calls) == 1:
            self.go.wait(20)
            raise SinkError("timed out waiting for the server's answer")


async def restart_and_deliver(root: Path, sink_dir: Path) -> list[tuple[str, ...]]:
    """A node restarted on `root`'s WAL and records: deliver everything; return the batches sent."""
    wal = Repository(WalConfig(root / "wal"))
    wal.start()
    sink = LostAnswerSink(LocalSink(sink_dir))
    sink.go.set()
    sink.calls.append(("(no answer lost this time)",))
    up = uploader(root, wal, sink)
    await up.start()
    try:
        await until(lambda: not wal.closed_segments())
    finally:
        await up.stop()
    return sink.calls[1:]


def test_intents_round_trip_and_drop_unreadable_records(tmp_path: Path) -> None:
    d = tmp_path / "deliveries"
    intents = Intents(d)
    assert intents.load() == {}
    a = Intent("Db_T", ("a.wal", "b.wal"), SINK, 1.5)
    b = Intent("Db_U", ("c.wal",), "ingestor-1", 2.0)
    intents.record(a)
    intents.record(b)
    (d / "Db_V.json").write_text("{not json")
    (d / "Db_W.json.tmp").write_text("torn")
    again = Intents(d)
    assert again.load() == {"Db_T": replace(a, recovered=True), "Db_U": replace(b, recovered=True)}
    assert sorted(p.name for p in d.iterdir()) == ["Db_T.json", "Db_U.json"]
    again.clear("Db_T")
    assert Intents(d).load() == {"Db_U": replace(b, recovered=True)}
    assert json.loads((d / "Db_U.json").read_text())["target"] == "ingestor-1"


async def test_a_retry_after_a_lost_answer_sends_the_same_batch_not_a_regrouped_one(tmp_path: Path) -> None:
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    first = write(wal, 0, 3)
    sink_dir = store_dir(tmp_path / "storage")
    sink = LostAnswerSink(LocalSink(sink_dir))
    up = uploader(tmp_path, wal, sink)
    await up.start()
    try:
        await until(lambda: len(sink.calls) == 1)
        write(wal, 3, 2)  # newer segments arrive while the answer is awaited
        sink.go.set()
        await until(lambda: not wal.closed_segments())
    finally:
        await up.stop()
    names = tuple(s.path.name for s in first)
    assert sink.calls[0] == sink.calls[1] == names  # the retry is the same batch, same token
    assert stored(sink_dir) == list(range(50))  # every row once
    assert list((tmp_path / "deliveries").iterdir()) == []


async def test_after_a_kill_between_confirmation_and_deletion_the_same_batch_is_sent_again(tmp_path: Path) -> None:
    """What a kill -9 leaves: the sink has the batch, the record and every segment are on disk,
    newer segments arrived since. The restarted node sends the recorded batch (recognised by the
    sink), then the newer segments."""
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    first = write(wal, 0, 3)
    sink_dir = store_dir(tmp_path / "storage")
    before = LocalSink(sink_dir)
    before.upload(Batch("Db", "T", tuple(first)))
    record(tmp_path, first)
    write(wal, 3, 2)

    calls = await restart_and_deliver(tmp_path, sink_dir)
    assert calls[0] == tuple(s.path.name for s in first)
    assert stored(sink_dir) == list(range(50))


async def test_a_confirmed_record_whose_segments_are_partly_gone_has_the_rest_deleted(tmp_path: Path) -> None:
    """Killed while deleting a confirmed batch's segments: the rest are deleted, not sent again."""
    first, sink_dir = recorded_delivery(tmp_path, sink_took_it=True)
    Intents(tmp_path / "deliveries").confirm(first[0].prefix, tuple(s.path.name for s in first), SINK)
    first[0].path.unlink()
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    later = write(wal, 3, 1)

    calls = await restart_and_deliver(tmp_path, sink_dir)
    assert calls == [(later[0].path.name,)]
    assert stored(sink_dir) == list(range(40))


async def test_an_unconfirmed_record_whose_segments_are_partly_gone_is_delivered_not_deleted(tmp_path: Path) -> None:
    """Regression (issue 12): a record of a delivery that was never confirmed, one of whose segments
    is gone (here a person deleted it; in the field a ghost segment left by the index race), was
    taken as proof that the sink had confirmed it, and its other segments were deleted: lost.
    Missing files are never evidence: the rest is delivered, under the recorded delivery's token."""
    first, sink_dir = recorded_delivery(tmp_path, sink_took_it=False)  # started; the sink never got it
    first[0].path.unlink()

    calls = await restart_and_deliver(tmp_path, sink_dir)
    assert calls == [(first[1].path.name, first[2].path.name)]
    assert stored(sink_dir) == list(range(10, 30))  # the rows of the two segments left, once
    assert list((tmp_path / "deliveries").iterdir()) == []


async def test_what_is_left_of_a_delivery_the_sink_took_is_recognised_by_its_token(tmp_path: Path) -> None:
    """The sink took the whole delivery, the confirmation never came, then a segment vanished: the
    rest goes under the whole's token, so the sink does not store it twice."""
    first, sink_dir = recorded_delivery(tmp_path, sink_took_it=True)
    first[0].path.unlink()

    calls = await restart_and_deliver(tmp_path, sink_dir)
    assert calls == [(first[1].path.name, first[2].path.name)]
    assert stored(sink_dir) == list(range(30))  # once each


def test_a_confirmation_is_durable_and_read_back(tmp_path: Path) -> None:
    d = tmp_path / "deliveries"
    intents = Intents(d)
    intents.load()
    intents.record(Intent("Db_T", ("a.wal", "b.wal"), SINK, 1.5))
    assert Intents(d).load()["Db_T"].confirmed is False
    intents.confirm("Db_T", ("a.wal", "b.wal"), SINK)
    again = Intents(d).load()["Db_T"]
    assert again.confirmed and again.segments == ("a.wal", "b.wal") and again.since == 1.5
