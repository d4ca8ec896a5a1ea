"""The local sink on chdb (a current ClickHouse): the shared DDL and deduplicated inserts, and
`ingestor query` against the store, also while another process holds the sink."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node import query_cli
from node.errors import PermanentSinkError, SinkError
from node.rows.batch import ConvertResult
from node.sinks.base import Batch
from node.sinks.chschema import LEDGER_TABLE, Features, table_columns
from node.sinks.local import ChdbConn, LocalConfig, LocalSink, StoreBusyError, open_store, store_dir
from tests.sinks import expected, logs, metrics, otlp_metrics, raw_batch, read_back, traces, write_batch

pytest.importorskip("chdb")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[LocalSink]:
    s = LocalSink(store_dir(tmp_path / "storage"), LocalConfig(lock_wait=0.2))
    s.start()
    yield s
    s.stop()


def rows_in(sink: LocalSink, batch: Batch) -> list[tuple[str, ...]]:
    schema = batch.read_schema()
    assert schema is not None
    with open_store(sink.directory, 5) as c:
        return read_back(ChdbConn(c, "test"), batch.database, batch.table, schema)


def count(sink: LocalSink, sql: str) -> int:
    with open_store(sink.directory, 5) as c:
        return int(ChdbConn(c, "test").query(sql)[0][0])


CASES: dict[str, Callable[[], tuple[ConvertResult, ...]]] = {
    "metrics": lambda: (metrics(), otlp_metrics()),
    "metrics-lifted": lambda: (metrics(lift=("pod", "path")), otlp_metrics(lift=("pod", "path"))),
    "logs": lambda: (logs(),),
    "traces": lambda: (traces(),),
}


@pytest.mark.parametrize("case", CASES)
def test_every_kind_round_trips(sink: LocalSink, tmp_path: Path, case: str) -> None:
    results = CASES[case]()
    batch = write_batch(tmp_path / "wal", *results)
    sink.upload(batch)
    assert batch.rows == sum(r.accepted for r in results) > 0
    assert rows_in(sink, batch) == expected(batch)


def test_tables_types_and_nine_digit_times(sink: LocalSink, tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "wal", otlp_metrics(lift=("pod",)))
    sink.upload(batch)
    with open_store(sink.directory, 5) as c:
        conn = ChdbConn(c, "test")
        assert table_columns(conn, "Metrics", "HttpRequestsTotal") == {
            "Timestamp": "DateTime64(9, 'UTC')", "SeriesId": "Int64", "Labels": "String", "Value": "Float64",
            "Pod": "String"}
        engine = conn.query("SELECT engine_full FROM system.tables WHERE database = 'Metrics' "
                            "AND name = 'HttpRequestsTotal'")[0][0]
        assert "ORDER BY Timestamp" in engine and "non_replicated_deduplication_window = 1000" in engine
        got = conn.query("SELECT toString(Timestamp), SeriesId, Value FROM Metrics.HttpRequestsTotal "
                         "ORDER BY Timestamp")
    assert got == [["2026-11-24 04:00:00.123456789", "1152362523764674254", "nan"],
                   ["2026-11-24 04:00:00.123456790", "2279842497777738380", "-inf"],
                   ["2026-11-24 04:00:00.123456791", "-7928797853583355345", "3.5"]]


def test_same_batch_twice_is_stored_once(sink: LocalSink, tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "wal", metrics(n=5))
    sink.upload(batch)
    sink.upload(Batch(batch.database, batch.table, batch.segments))  # a retry: same segments, same id
    fresh = LocalSink(sink.directory)  # another process after a restart: nothing cached
    fresh.upload(Batch(batch.database, batch.table, batch.segments))
    assert count(sink, "SELECT count() FROM Metrics.HttpRequestsTotal") == batch.rows == 15


def test_ledger_path_for_old_servers_on_chdb(sink: LocalSink, tmp_path: Path) -> None:
    """The path taken for servers without deduplication tokens, run on chdb."""
    sink._cache.features = Features("old", datetime64=True, bool_type=True, dedup_token=False)
    batch = write_batch(tmp_path / "wal", logs())
    sink.upload(batch)
    sink.upload(Batch(batch.database, batch.table, batch.segments))
    assert rows_in(sink, batch) == expected(batch)
    with open_store(sink.directory, 5) as c:
        conn = ChdbConn(c, "test")
        assert conn.query(f"SELECT Table, Rows FROM Logs.{LEDGER_TABLE}") == [["App", "3"]]
        assert conn.query("SELECT name FROM system.tables WHERE database = 'Logs'") == [["App"], [LEDGER_TABLE]]


def test_new_lifted_column_is_added(sink: LocalSink, tmp_path: Path) -> None:
    sink.upload(write_batch(tmp_path / "wal1", metrics()))
    lifted = write_batch(tmp_path / "wal2", metrics(lift=("pod",)))
    sink.upload(lifted)
    with open_store(sink.directory, 5) as c:
        got = ChdbConn(c, "test").query("SELECT Pod, count() FROM Metrics.HttpRequestsTotal GROUP BY Pod ORDER BY Pod")
    assert got == [["", "9"], ["web-0", "3"], ["web-1", "3"], ["web-2", "3"]]


def test_conflicting_schema_is_permanent(sink: LocalSink, tmp_path: Path) -> None:
    sink.upload(raw_batch(tmp_path / "wal1", "Db", "T", (("Timestamp", "datetime"), ("Value", "real")),
                          "2026-11-24T04:00:00Z,1.5\n"))
    clash = raw_batch(tmp_path / "wal2", "Db", "T", (("Timestamp", "datetime"), ("Value", "string")),
                      "2026-11-24T04:00:00Z,text\n")
    with pytest.raises(PermanentSinkError, match=r"Db\.T conflicts.*Value is Float64, the batch has string"):
        sink.upload(clash)


@pytest.mark.parametrize(("schema", "rows", "match"), [
    ((("Timestamp", "datetime"), ("Value", "real")), "yesterday,1\n", "CANNOT_PARSE_DATETIME"),
    ((("Timestamp", "datetime"), ("Value", "real")), "2026-11-24T04:00:00Z,1,extra\n", r"Code: \d+"),
    ((("Timestamp", "datetime"), ("Value", "vector")), "2026-11-24T04:00:00Z,1\n", "unknown column type"),
])
def test_bad_rows_and_schemas_are_permanent(sink: LocalSink, tmp_path: Path, schema: tuple[tuple[str, str], ...],
                                            rows: str, match: str) -> None:
    with pytest.raises(PermanentSinkError, match=match):
        sink.upload(raw_batch(tmp_path / "wal", "Db", "Bad", schema, rows))


def test_dropped_table_is_recreated_on_retry(sink: LocalSink, tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "wal1", traces())
    sink.upload(batch)
    with open_store(sink.directory, 5) as c:
        c.query("DROP TABLE Traces.Traces SYNC")
    again = write_batch(tmp_path / "wal2", traces())
    with pytest.raises(SinkError) as info:  # the cache still believed in the table: retried, not quarantined
        sink.upload(again)
    assert not isinstance(info.value, PermanentSinkError)
    sink.upload(again)
    assert rows_in(sink, again) == expected(again)


# -- ingestor query ---------------------------------------------------------------------------

def run_query(capsys: pytest.CaptureFixture[str], storage: Path, *args: str) -> tuple[int, str, str]:
    code = query_cli.main(["--storage-dir", str(storage), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_query_formats(sink: LocalSink, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sink.upload(write_batch(tmp_path / "wal", logs()))
    storage = sink.directory.parent
    sql = "SELECT SeverityNumber AS n, SeverityText AS t, Body FROM Logs.App ORDER BY n"
    code, out, _ = run_query(capsys, storage, sql)
    assert code == 0
    assert out.splitlines() == [
        " n  t     Body",
        "--  ----  --------------------",
        " 0        \" padded \"",
        ' 9  INFO  "hello, \\"world\\"\\n"',
        '17        "\\\\N"',
        "(3 rows)",
    ]
    code, out, _ = run_query(capsys, storage, "--format", "csv", sql)
    assert (code, out.splitlines()[0], len(out.splitlines())) == (0, '"n","t","Body"', 4)
    code, out, _ = run_query(capsys, storage, "--format", "json", sql)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[1] == {"n": 9, "t": "INFO", "Body": '"hello, \\"world\\"\\n"'}


def test_query_errors(sink: LocalSink, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_query(capsys, tmp_path / "nowhere", "SELECT 1")
    assert code == 1 and "no local store" in err
    sink.upload(write_batch(tmp_path / "wal", logs()))
    code, out, err = run_query(capsys, sink.directory.parent, "SELEC 1")
    assert (code, out) == (1, "") and "Syntax error" in err and err.startswith("ingestor query: ")
    code, _, err = run_query(capsys, sink.directory.parent, "SELECT * FROM Logs.Missing")
    assert code == 1 and "Missing" in err
    code, _, err = run_query(capsys, sink.directory.parent, "DROP TABLE Logs.App")
    assert code == 1 and "readonly" in err.lower()


class Child:
    """`hold_store_child` in a second process, driven line by line."""

    def __init__(self, storage: Path, wal: Path) -> None:
        code = "from tests.sinks import hold_store_child; hold_store_child()"
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(storage), str(wal)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def say(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.say("quit")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()
        assert self.proc.wait(30) == 0


def query_process(storage: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "node.query_cli", "--storage-dir", str(storage), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_query_while_another_process_holds_the_sink(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    child = Child(storage, tmp_path / "wal")
    try:
        assert child.say("") == "uploaded 9"  # a node process with a started LocalSink
        sql = "SELECT count() FROM Metrics.HttpRequestsTotal"
        out, err = query_process(storage, "--format", "csv", sql).communicate(timeout=60)
        assert out.splitlines() == ['"count()"', "9"], err

        assert child.say("hold") == "holding"  # as while it uploads a batch
        proc = query_process(storage, "--wait", "0.2", sql)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "in use by another process" in err

        # The sink of this process meets the other process's hold the same way: a retry.
        sink = LocalSink(store_dir(storage), LocalConfig(lock_wait=0.1))
        batch = write_batch(tmp_path / "wal2", logs())
        with pytest.raises(StoreBusyError):
            sink.upload(batch)

        waiting = query_process(storage, "--wait", "60", sql)
        assert child.say("release") == "released"
        out, err = waiting.communicate(timeout=60)
        assert (waiting.returncode, out.split()) == (0, ["count()", "-------", "9", "(1", "row)"]), err
        sink.upload(batch)
        assert child.say("hold") == "holding"  # and the node's process can open it again after us
        assert child.say("release") == "released"
    finally:
        child.close()


def _threads() -> int:
    import os

    return len(os.listdir("/proc/self/task"))


def test_quiet_spells_do_not_leak_threads(sink: LocalSink, tmp_path: Path) -> None:
    """Regression (soak run): chdb leaves threads and descriptors behind at every open and close,
    so a sink that closed the store when idle grew by ~5 threads a batch. Batches with pauses
    between them (longer than the old idle close) keep the process's thread count flat."""
    import time

    sink.upload(write_batch(tmp_path / "wal0", metrics(n=2)))
    before = _threads()
    for i in range(8):
        time.sleep(0.6)
        sink.upload(write_batch(tmp_path / f"wal{i + 1}", metrics(n=2)))
    assert _threads() - before < 8
    assert count(sink, "SELECT count() FROM Metrics.HttpRequestsTotal") == 9 * 6


def test_a_reader_in_the_process_gets_the_store_from_the_sink(sink: LocalSink, tmp_path: Path) -> None:
    """The sink keeps the store open; whoever waits for it announces it and the sink lets go."""
    import time

    sink.upload(write_batch(tmp_path / "wal", metrics(n=2)))
    assert sink._store is not None
    t0 = time.monotonic()
    assert count(sink, "SELECT count() FROM Metrics.HttpRequestsTotal") == 6
    assert time.monotonic() - t0 < 2.0
    sink.upload(write_batch(tmp_path / "wal2", metrics(n=2)))  # and takes it back
    assert count(sink, "SELECT count() FROM Metrics.HttpRequestsTotal") == 12


def test_the_embedded_server_is_bounded_for_a_node(sink: LocalSink, tmp_path: Path) -> None:
    """Regression (30-minute soak): chdb's server defaults keep up to 1,000 idle threads and 5 GiB
    caches; the sink's store runs with the bounds of ENGINE_SETTINGS."""
    from node.sinks.local import ENGINE_SETTINGS

    sink.upload(write_batch(tmp_path / "wal", metrics(n=2)))
    names = ", ".join(f"'{n}'" for n in ENGINE_SETTINGS)
    sql = f"SELECT name, value FROM system.server_settings WHERE name IN ({names})"
    got = sink._owner.submit(lambda: ChdbConn(sink._conn, "test").query(sql)).result()
    assert dict(map(tuple, got)) == ENGINE_SETTINGS
    # and its tables remove outdated parts on one thread (the default starts ~125 that stay)
    engine = sink._owner.submit(lambda: ChdbConn(sink._conn, "test").query(
        "SELECT engine_full FROM system.tables WHERE database = 'Metrics'")).result()
    assert "concurrent_part_removal_threshold = 1000000" in engine[0][0]
