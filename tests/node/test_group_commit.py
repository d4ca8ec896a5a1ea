"""Group commit (node/groupcommit.py): requests queued for the converter thread are written together.

In process, over a real WAL: the converter thread is held busy by a first request (a source that
waits for an event), the others queue behind it, and the tests look at what reached the segment
files: one block per table for the group, every row, and each request's own outcome.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from node import groupcommit
from node.errors import OverLimitsError, RequestTooLargeError
from node.ingest import GROUP_TABLES, Converters, Ingest
from node.metrics import NodeMetrics
from node.rows.batch import KIND_LOG, KIND_METRIC, ConvertResult, TableBatch, merged
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.wal.repository import Repository, WalConfig
from node.wal.segment import iter_blocks, iter_rows
from tests.rows.build import remote_write

T0 = 1_795_000_000_000


def body(pod: int, tables: list[str], k: int = 0) -> bytes:
    """A remote-write request: one sample for each table of `tables`, from `pod`."""
    series = (({"__name__": t, "pod": f"p{pod}"}, [(float(k), T0 + k)]) for t in tables)
    return remote_write(*series).SerializeToString()


@pytest.fixture(autouse=True)
def slow_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request's conversion lasts as long as the test holds it: not the end of its group."""
    monkeypatch.setattr(groupcommit, "MAX_GROUP_SECONDS", 30.0)


def make_ingest(tmp_path: Path, **wal: Any) -> tuple[Ingest, Repository]:
    repo = Repository(WalConfig(tmp_path / "wal", **wal))
    repo.start()
    state = NodeState(over_limits=repo.over_limits)
    state.set_phase(Phase.SERVING)
    conv = Converters(MetricsConverter(MetricsConfig()), LogsConverter(LogsConfig()), TracesConverter(TracesConfig()))
    # inline_bytes=0: every request goes through the converter thread, as HTTP's do
    return Ingest(repo, conv, state, NodeMetrics(CollectorRegistry()), inline_bytes=0), repo


def held(data: bytes) -> tuple[threading.Event, Any]:
    """A request source that holds the converter thread until the event is set, then gives `data`."""
    release = threading.Event()

    def source() -> bytes:
        release.wait(10)
        return data

    return release, source


async def queued_behind_a_busy_thread(ingest: Ingest, bodies: list[bytes]) -> list[Any]:
    """Take `bodies`, the first one held in the converter thread until all the others are queued."""
    release, first = held(bodies[0])
    tasks = [asyncio.create_task(ingest.remote_write(first))]
    await asyncio.sleep(0.05)
    tasks += [asyncio.create_task(ingest.remote_write(b)) for b in bodies[1:]]
    await asyncio.sleep(0.05)
    release.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


def blocks_and_rows(repo: Repository) -> dict[str, tuple[int, int]]:
    """Per table: blocks and rows in its segments."""
    out: dict[str, tuple[int, int]] = {}
    for info in repo.stop():
        table = info.name.table
        blocks, rows = out.get(table, (0, 0))
        out[table] = (blocks + sum(1 for _ in iter_blocks(info.path)),
                      rows + sum(v.count(b"\n") for v in iter_rows(info.path)))
    return out


# -- merged ---------------------------------------------------------------------------------------

def batch(table: str, data: bytes, kind: int = KIND_METRIC, schema: Any = (("a", "string"),)) -> TableBatch:
    return TableBatch("Metrics", table, kind, schema, bytearray(data), data.count(b"\n"))


def test_merged_joins_a_table_in_order_and_leaves_the_results_as_they_were() -> None:
    a = ConvertResult({("Metrics", "x"): batch("x", b"1\n2\n"), ("Metrics", "y"): batch("y", b"3\n")})
    b = ConvertResult({("Metrics", "x"): batch("x", b"4\n")})
    out = {(m.table, m.kind): (bytes(m.data), m.count) for m in merged([a, b])}
    assert out == {("x", KIND_METRIC): (b"1\n2\n4\n", 3), ("y", KIND_METRIC): (b"3\n", 1)}
    assert bytes(a.tables["Metrics", "x"].data) == b"1\n2\n" and a.tables["Metrics", "x"].count == 2


def test_merged_keeps_kinds_and_schemas_apart_and_stops_at_max_bytes() -> None:
    a = ConvertResult({("Metrics", "x"): batch("x", b"1\n")})
    b = ConvertResult({("Metrics", "x"): batch("x", b"2\n", kind=KIND_LOG)})
    c = ConvertResult({("Metrics", "x"): batch("x", b"3\n", schema=(("b", "long"),))})
    assert sorted(bytes(m.data) for m in merged([a, b, c])) == [b"1\n", b"2\n", b"3\n"]
    parts = [ConvertResult({("Metrics", "x"): batch("x", b"%d\n" % i)}) for i in range(5)]
    out = merged(parts, max_bytes=4)
    assert [bytes(m.data) for m in out] == [b"0\n1\n", b"2\n3\n", b"4\n"]
    assert sum(m.count for m in out) == 5


# -- the converter thread writes what queued behind it at once --------------------------------------

async def test_requests_queued_together_are_one_write_one_block_per_table(tmp_path: Path) -> None:
    ingest, repo = make_ingest(tmp_path)
    tables = [f"M{i}" for i in range(30)]
    results = await queued_behind_a_busy_thread(ingest, [body(p, tables) for p in range(8)])
    assert [r.accepted for r in results] == [30] * 8
    assert ingest._commit.groups == 1 and ingest._commit.grouped == 8
    on_disk = blocks_and_rows(repo)
    assert on_disk == {t: (1, 8) for t in tables}  # one block of every pod's row, per table


async def test_alone_each_request_is_a_block_per_table(tmp_path: Path) -> None:
    """The reference for the test above: the same requests one after the other."""
    ingest, repo = make_ingest(tmp_path)
    tables = [f"M{i}" for i in range(30)]
    for p in range(8):
        assert (await ingest.remote_write(body(p, tables))).accepted == 30
    assert blocks_and_rows(repo) == {t: (8, 8) for t in tables}


async def test_a_request_that_does_not_decode_fails_alone(tmp_path: Path) -> None:
    ingest, repo = make_ingest(tmp_path)
    bodies = [body(0, ["A"]), b"\x0a\xff", body(1, ["A"])]
    first, bad, last = await queued_behind_a_busy_thread(ingest, bodies)
    assert first.accepted == 1 and last.accepted == 1
    assert "malformed prometheus.WriteRequest" in str(bad)
    assert blocks_and_rows(repo) == {"A": (1, 2)}


async def test_a_group_whose_write_fails_is_written_request_by_request(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that one request's rows make fail (here: a table whose file cannot take more, as a
    full disk gives) leaves nothing of the group (the WAL's all or none); each request is then
    written alone: the others are stored once, that one is refused."""
    ingest, repo = make_ingest(tmp_path)
    real = repo.write_many
    calls: list[int] = []

    def write_many(blocks: Any) -> None:
        calls.append(len(blocks))
        if any(b.table == "Full" for b in blocks):
            raise OverLimitsError("disk full writing full: No space left on device")
        real(blocks)

    monkeypatch.setattr(repo, "write_many", write_many)
    bodies = [body(0, ["A", "B"]), body(1, ["A", "Full"]), body(2, ["A", "B"])]
    ok0, refused, ok2 = await queued_behind_a_busy_thread(ingest, bodies)
    assert ok0.accepted == 2 and ok2.accepted == 2
    assert isinstance(refused, OverLimitsError)
    assert calls == [3, 2, 2, 2]  # the group (a, b, full), then each alone
    assert blocks_and_rows(repo) == {"A": (2, 2), "B": (2, 2)}  # nothing twice, nothing of the refused one


@pytest.mark.parametrize("limit", [3])
async def test_more_tables_than_segments_together_are_written_alone(tmp_path: Path, limit: int) -> None:
    """Each request fits `--max-segment-count` alone but not together: each is written alone; one
    that never fits is refused with its own RequestTooLargeError."""
    ingest, repo = make_ingest(tmp_path, max_segment_count=limit * 2)
    bodies = [body(0, ["A", "B", "C"]), body(1, ["D", "E", "F"]), body(2, [f"T{i}" for i in range(7)])]
    ok0, ok1, too_many = await queued_behind_a_busy_thread(ingest, bodies)
    assert ok0.accepted == 3 and ok1.accepted == 3
    assert isinstance(too_many, RequestTooLargeError) and "7 tables" in str(too_many)
    assert sorted(blocks_and_rows(repo)) == ["A", "B", "C", "D", "E", "F"]


async def test_a_caller_cancelled_while_queued_never_runs(tmp_path: Path) -> None:
    ingest, repo = make_ingest(tmp_path)
    release, first = held(body(0, ["A"]))
    task = asyncio.create_task(ingest.remote_write(first))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(ingest.remote_write(body(1, ["Never"])))
    await asyncio.sleep(0.05)
    queued.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert (await task).accepted == 1
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert ingest._commit.busy == 0
    assert blocks_and_rows(repo) == {"A": (1, 1)}


async def test_a_caller_cancelled_while_its_group_runs_waits_for_the_write(tmp_path: Path) -> None:
    ingest, repo = make_ingest(tmp_path)
    release, first = held(body(0, ["A"]))
    task = asyncio.create_task(ingest.remote_write(first))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # its rows are being written: it waits
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert blocks_and_rows(repo) == {"A": (1, 1)}


@pytest.mark.parametrize(("limit", "value", "groups"), [("MAX_GROUP_REQUESTS", 3, 3), ("MAX_GROUP_SECONDS", 0.0, 7),
                                                      ("MAX_GROUP_BYTES", 1, 7)])
async def test_a_group_ends_at_its_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, value: float,
                                          groups: int) -> None:
    """At most MAX_GROUP_REQUESTS requests, MAX_GROUP_BYTES of rows and MAX_GROUP_SECONDS of
    converting a group (0 of either: one request a write); the rest are written by the next."""
    monkeypatch.setattr(groupcommit, limit, value)
    ingest, repo = make_ingest(tmp_path)
    results = await queued_behind_a_busy_thread(ingest, [body(p, ["A", "B"]) for p in range(7)])
    assert [r.accepted for r in results] == [2] * 7
    assert (ingest._commit.groups, ingest._commit.grouped) == (groups, 7)
    assert blocks_and_rows(repo) == {"A": (groups, 7), "B": (groups, 7)}


async def test_a_request_converted_on_the_loop_for_many_tables_is_written_by_the_thread(tmp_path: Path) -> None:
    """Converted on the event loop (small, thread idle), written by the converter thread when its
    rows are for GROUP_TABLES tables or more, so that the requests queued behind it join its write;
    one for fewer tables is written at once, on the loop."""
    repo = Repository(WalConfig(tmp_path / "wal"))
    repo.start()
    state = NodeState(over_limits=repo.over_limits)
    state.set_phase(Phase.SERVING)
    conv = Converters(MetricsConverter(MetricsConfig()), LogsConverter(LogsConfig()), TracesConverter(TracesConfig()))
    ingest = Ingest(repo, conv, state, NodeMetrics(CollectorRegistry()))
    few = [f"F{i}" for i in range(GROUP_TABLES - 1)]
    many = [f"M{i}" for i in range(GROUP_TABLES)]
    assert (await ingest.remote_write(body(0, few))).accepted == len(few)
    assert ingest._commit.grouped == 0
    assert (await ingest.remote_write(body(0, many))).accepted == len(many)
    assert ingest._commit.grouped == 1 and ingest._commit.busy == 0
    on_disk = blocks_and_rows(repo)
    assert on_disk == {t: (1, 1) for t in few + many}
