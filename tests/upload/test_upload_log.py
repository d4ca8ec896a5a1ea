"""The uploader's log: INFO is a summary a person can read (one line a minute, only when something
happened), each delivery a DEBUG line, each failure one WARNING line saying when the next attempt is.

Under `make run` with one Prometheus the node used to log two INFO lines per table per upload
(about 1,500 lines a minute); now it logs the first upload and then one line a minute.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cluster.health import PeerHealth
from cluster.membership import Peer, StaticMembership
from cluster.view import ClusterView
from node.errors import SinkError
from node.metrics import NodeMetrics
from node.ratelog import DeliverySummary
from node.transfer.client import TransferResult
from node.transfer.protocol import Outcome
from node.transfer.router import Router, TransferConfig
from node.upload.batcher import BatchPolicy
from node.upload.uploader import UploadConfig, Uploader
from node.upload.uploader import log as uploader_log
from node.wal import format as fmt
from node.wal.names import make_prefix, schema_hash
from node.wal.repository import Repository, WalConfig
from tests.upload.test_uploader import SCHEMA, RecordingSink, _until
from tests.wal.helpers import write_block

ROWS = 20


class Clock:
    """The summary's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Repository:
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    caplog.clear()  # its recovery line
    return wal


def _write(wal: Repository, tables: Sequence[str]) -> None:
    """One segment of ROWS rows for each table."""
    for t in tables:
        write_block(wal, "Db", t, fmt.KIND_METRIC, b"2026-11-24T00:00:00Z,1\n" * ROWS, ROWS, SCHEMA)
    wal.rotate_all()


def _uploader(wal: Repository, sink: RecordingSink, clock: Clock, router: Router | None = None) -> Uploader:
    up = Uploader(wal, sink, UploadConfig(interval=0.02, policy=BatchPolicy(min_batch_bytes=0, max_wait=0),
                                          backoff_initial=0.05, backoff_max=0.1),
                  NodeMetrics(CollectorRegistry()), router=router)
    up.summary = DeliverySummary(uploader_log, clock=clock)  # the default interval (60 s), on the test's clock
    return up


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name.startswith("node.")]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


async def _waves(up: Uploader, wal: Repository, tables: Sequence[str], waves: int) -> None:
    """`waves` times, a segment per table, delivered and settled (counted) before the next: the
    segments leave the index before the delivery's record is cleared and counted."""
    for _ in range(waves):
        _write(wal, tables)
        await _until(lambda: not wal.closed_segments() and not up.in_flight)


async def test_many_uploads_are_one_info_summary_with_their_counts(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="node")
    wal, sink, clock = _wal(tmp_path, caplog), RecordingSink(), Clock()
    up = _uploader(wal, sink, clock)
    tables = [f"T{i}" for i in range(8)]
    await up.start()
    try:
        await _waves(up, wal, tables, 5)
        clock.now += 59.0
        await _waves(up, wal, tables[:1], 1)  # a minute has not passed: nothing said yet
        assert not any(m.startswith("last ") for m in _lines(caplog, logging.INFO))
        clock.now += 1.0
        await _until(lambda: any(m.startswith("last ") for m in _lines(caplog, logging.INFO)))
    finally:
        await up.stop()  # nothing since the summary: the stop says nothing more
    batches = len(sink.batches)
    assert batches == 5 * 8 + 1
    size = sum(b.uncompressed_bytes for b in sink.batches)
    info = _lines(caplog, logging.INFO)
    assert len(info) == 2
    assert re.fullmatch(rf"uploaded Db\.T\d to recording, the first batch: {ROWS} rows, {_mb(size // batches)} in "
                        r"\d+\.\d\ds; from now on the uploads are summed up once a minute \(each one at --log-level "
                        r"debug\)", info[0]), info[0]
    assert info[1] == f"last 60s: uploaded {batches} batches of 8 tables ({batches * ROWS:,} rows, {_mb(size)}) to " \
                      "recording"
    # each upload is there for --log-level debug, and nothing per table reaches INFO
    uploaded = [m for m in _lines(caplog, logging.DEBUG) if m.startswith("uploaded Db_")]
    assert len(uploaded) == batches
    assert not [m for m in _lines(caplog, logging.WARNING)]


async def test_a_quiet_minute_says_nothing_and_the_stop_says_what_is_left(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node")
    wal, sink, clock = _wal(tmp_path, caplog), RecordingSink(), Clock()
    up = _uploader(wal, sink, clock)
    await up.start()
    try:
        clock.now += 120.0  # two idle minutes: no summary
        await _waves(up, wal, ["A"], 1)  # the first upload: said at once
        await _waves(up, wal, ["A", "B"], 2)
    finally:
        await up.stop()
    info = _lines(caplog, logging.INFO)
    assert len(info) == 2 and info[0].startswith("uploaded Db.A to recording, the first batch: 20 rows")
    assert re.fullmatch(r"last \d+s: uploaded 5 batches of 2 tables \(100 rows, [0-9.]+ kB\) to recording", info[1])


async def test_failures_are_one_warning_each_with_the_next_attempt_and_counted_in_the_summary(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node")
    wal, clock = _wal(tmp_path, caplog), Clock()
    sink = RecordingSink()
    sink.fail = SinkError("sink down: connection refused")
    up = _uploader(wal, sink, clock)
    _write(wal, ["T"])
    await up.start()
    try:
        await _until(lambda: sink.calls >= 3)
        sink.fail = None
        await _until(lambda: not wal.closed_segments())
    finally:
        await up.stop()
    failures = sink.calls - 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == failures
    for n, r in enumerate(warnings, 1):
        assert re.fullmatch(rf"upload of Db_T_\w+ \(1 segments\) to recording failed \(attempt {n}\), retrying in "
                            r"\d+\.\ds: sink down: connection refused", r.getMessage()), r.getMessage()
        assert r.exc_info is None  # a SinkError is expected: its message, never a traceback
    summary = _lines(caplog, logging.INFO)[-1]
    assert summary.endswith(f"to recording; {failures} upload failures (retried; the warnings say why)"), summary


class FakeClient:
    """A transfer client whose peer answers `outcomes` in turn, then OK."""

    def __init__(self, outcomes: Sequence[TransferResult] = ()) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[int] = []

    async def send(self, peer: Peer, paths: Sequence[Path]) -> TransferResult:
        size = sum(p.stat().st_size for p in paths)
        if self.outcomes:
            return self.outcomes.pop(0)
        self.sent.append(size)
        return TransferResult(Outcome.ACCEPTED, "OK", bytes=size, seconds=0.01)

    async def close(self) -> None: ...


def _router(client: FakeClient) -> tuple[Router, list[str], list[str]]:
    """A router of node "me" with a peer "n1"; the tables it owns, and ours."""
    view = ClusterView("me", "127.0.0.1:1", StaticMembership([Peer("me", "127.0.0.1:1"), Peer("n1", "127.0.0.1:2")]),
                       PeerHealth(60))
    names = [f"T{i}" for i in range(40)]
    theirs = [t for t in names if view.owner(make_prefix("Db", t, schema_hash(SCHEMA))) == "n1"][:4]
    ours = [t for t in names if view.owner(make_prefix("Db", t, schema_hash(SCHEMA))) == "me"][:3]
    assert len(theirs) == 4 and len(ours) == 3
    return Router(view, client, TransferConfig(), NodeMetrics(CollectorRegistry())), theirs, ours  # type: ignore[arg-type]


async def test_transfers_are_counted_per_peer_in_the_summary(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="node")
    wal, sink, clock, client = _wal(tmp_path, caplog), RecordingSink(), Clock(), FakeClient()
    router, theirs, ours = _router(client)
    up = _uploader(wal, sink, clock, router)
    await up.start()
    try:
        await _waves(up, wal, theirs + ours, 3)
        clock.now += 60.0
        await _until(lambda: any(m.startswith("last ") for m in _lines(caplog, logging.INFO)))
    finally:
        await up.stop()
    assert len(client.sent) == 12 and len(sink.batches) == 9
    info = _lines(caplog, logging.INFO)
    assert info[1] == (f"last 60s: uploaded 9 batches of 3 tables (180 rows, "
                       f"{_mb(sum(b.uncompressed_bytes for b in sink.batches))}) to recording; transferred 12 "
                       f"batches of 4 tables ({_mb(sum(client.sent))}) to n1")
    assert len(info) == 2
    assert len([m for m in _lines(caplog, logging.DEBUG) if m.startswith("transferred Db_")]) == 12


async def test_a_transfer_in_doubt_says_when_it_is_sent_again(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="node")
    lost = TransferResult(Outcome.PEER_FAILED, "DEADLINE_EXCEEDED", "no answer", in_doubt=True)
    wal, sink, clock, client = _wal(tmp_path, caplog), RecordingSink(), Clock(), FakeClient([lost])
    router, theirs, _ = _router(client)
    up = _uploader(wal, sink, clock, router)
    _write(wal, theirs[:1])
    await up.start()
    try:
        await _until(lambda: not wal.closed_segments())
    finally:
        await up.stop()
    assert len(client.sent) == 1 and sink.batches == []  # sent again to the same peer, not uploaded here
    [warning] = [r for r in caplog.records if r.name == uploader_log.name and r.levelno == logging.WARNING]
    assert re.fullmatch(r"transfer of Db_T\d+_\w+ \(1 segments\) to n1 failed \(attempt 1\) and may have arrived: "
                        r"sending the same segments to n1 again in \d+\.\ds, so that its ledger recognises them: "
                        r"DEADLINE_EXCEEDED no answer", warning.getMessage()), warning.getMessage()
    assert warning.exc_info is None
    summary = _lines(caplog, logging.INFO)[-1]
    assert re.fullmatch(r"last \d+s: transferred 1 batch of 1 table \([0-9.]+ kB\) to n1; 1 transfer failure "
                        r"\(retried; the warnings say why\)", summary), summary


def test_the_summary_line_in_words() -> None:
    """Plurals, several sinks and peers, failures and quarantines apart; nothing said when nothing happened."""
    log = logging.getLogger("test.summary")
    said: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    log.addHandler(Catch())
    log.setLevel(logging.INFO)
    clock = Clock()
    s = DeliverySummary(log, interval=60, clock=clock)
    clock.now += 60
    assert not s.tick() and said == []  # a quiet minute
    s.uploaded("local", "Metrics.Up", 1, 250_000, 0.1)
    s.uploaded("local", "Metrics.Up", 2, 250_000, 0.1)
    s.transferred("n2", "Logs.App", 2_000)
    s.transferred("n1", "Logs.App", 1_000)
    s.failed("transfer")
    s.failed("quarantine")
    clock.now += 59
    assert not s.tick()
    clock.now += 1
    assert s.tick()
    assert said == [
        "uploaded Metrics.Up to local, the first batch: 1 row, 0.2 MB in 0.10s; from now on the uploads are summed "
        "up once a minute (each one at --log-level debug)",
        "last 60s: uploaded 2 batches of 1 table (3 rows, 0.5 MB) to local; transferred 1 batch of 1 table (1.0 kB) "
        "to n1, 1 batch of 1 table (2.0 kB) to n2; 1 transfer failure (retried; the warnings say why); 1 batch "
        "quarantined (the errors say why)",
    ]
    s.uploaded("local", "Metrics.Up", 1, 0, 0.1)  # the first to this sink was said already
    clock.now += 5
    assert s.flush() and said[-1] == "last 5s: uploaded 1 batch of 1 table (1 row, 0.0 MB) to local"
    assert not s.flush() and len(said) == 3
