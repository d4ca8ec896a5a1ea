"""A row never changes another row: hostile strings in every string column, through each ClickHouse
sink (the local sink on chdb, a current ClickHouse; the ClickHouse sink on Debian's 18.16, over
the native protocol and HTTP), N rows sent -> exactly N rows stored, each value byte for byte.

The rows come from serialised OTLP and remote-write requests through the node's converters and a
real WAL (tests/rows/hostile.py has the values and the check). Values are read back as hex(), so
nothing between the table and the comparison can unescape them.

The insert settings are tested apart from the writer's quoting: a hand-written batch with the
reported unquoted `'` ... `x'` rows on 18.16 (whose `format_csv_allow_single_quotes` defaults to
1), and one whose first row is its column names on chdb (whose `input_format_csv_detect_header`
defaults to 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.sinks.base import Batch
from node.sinks.chschema import Conn, table_columns
from node.sinks.clickhouse import ClickHouseConfig, ClickHouseSink, HttpConn, parse_dsns, parse_endpoint
from node.sinks.local import ChdbConn, LocalConfig, LocalSink, open_store, store_dir
from tests.rows.hostile import CASES, HOSTILE, check
from tests.sinks import expected, raw_batch, read_back, write_batch
from tests.sinks.clickhouse_server import INSTALL_HINT, PASSWORD, USER, ClickHouseServer, find_binary

_names = itertools.count()


def stored(conn: Conn, database: str, table: str) -> list[dict[str, str]]:
    """Every row of the table as {column: text}: strings exactly (through hex), others as text."""
    types = table_columns(conn, database, table)
    names = sorted(types)
    exprs = [f"hex(`{n}`)" if "String" in types[n] else f"toString(`{n}`)" for n in names]
    rows = conn.query(f"SELECT {', '.join(exprs)} FROM `{database}`.`{table}`")
    return [{n: bytes.fromhex(v).decode() if "String" in types[n] else v for n, v in zip(names, row, strict=True)}
            for row in rows]


# -- the local sink on chdb ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSink]:
    pytest.importorskip("chdb")
    sink = LocalSink(store_dir(tmp_path_factory.mktemp("storage")), LocalConfig(lock_wait=5))
    sink.start()
    yield sink
    sink.stop()


def local_conn_rows(sink: LocalSink, database: str, table: str, batch: Batch | None = None
                    ) -> tuple[list[dict[str, str]], list[tuple[str, ...]]]:
    with open_store(sink.directory, 5) as c:
        conn = ChdbConn(c, "test")
        rows = stored(conn, database, table)
        schema = batch.read_schema() if batch else None
        return rows, read_back(conn, database, table, schema) if schema else []


@pytest.mark.parametrize("name", CASES)
def test_local_sink_stores_every_value_as_sent(local: LocalSink, tmp_path: Path, name: str) -> None:
    case = CASES[name]()
    batch = write_batch(tmp_path / "wal", *case.results)
    local.upload(batch)
    assert batch.rows == len(case.rows) >= len(HOSTILE)
    rows, canonical = local_conn_rows(local, case.database, case.table, batch)
    check(case, rows)
    assert canonical == expected(batch)  # every column, timestamps too, as the batch's CSV has it


def test_local_inserts_turn_header_detection_off(local: LocalSink, tmp_path: Path) -> None:
    """A current ClickHouse drops a first row equal to the column names unless told not to."""
    batch = raw_batch(tmp_path / "wal", "Raw", "Header", (("A", "string"), ("B", "string")), "A,B\nx,y\n")
    local.upload(batch)
    rows, _ = local_conn_rows(local, "Raw", "Header")
    assert sorted((r["A"], r["B"]) for r in rows) == [("A", "B"), ("x", "y")]


# -- the ClickHouse sink on 18.16 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    if find_binary() is None:
        pytest.skip(INSTALL_HINT)
    s = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    s.start()
    yield s
    s.stop()


def admin(server: ClickHouseServer) -> HttpConn:
    ep = parse_endpoint(f"X=http://{USER}:{PASSWORD}@127.0.0.1:{server.http_port}/x", env={})
    return HttpConn(ep, ClickHouseConfig((ep,)), None)


def upload(server: ClickHouseServer, scheme: str, batch: Batch) -> str:
    """Upload `batch` through a fresh sink into a fresh ClickHouse database; return its name."""
    target = f"Hostile{scheme.title()}{next(_names)}"
    sink = ClickHouseSink(ClickHouseConfig(parse_dsns([server.dsn(batch.database, scheme=scheme, target=target)],
                                                      env={}), connect_timeout=5, timeout=30))
    sink.start()
    try:
        sink.upload(batch)
    finally:
        sink.stop()
    return target


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_clickhouse_sink_stores_every_value_as_sent(server: ClickHouseServer, tmp_path: Path, scheme: str,
                                                    name: str) -> None:
    case = CASES[name]()
    batch = write_batch(tmp_path / "wal", *case.results)
    target = upload(server, scheme, batch)
    check(case, stored(admin(server), target, case.table))
    schema = batch.read_schema()
    assert schema is not None
    assert read_back(admin(server), target, case.table, schema) == expected(batch, seconds_only=True)


REPORTED = "1,'\n2,a\n3,b\n4,c\n5,x'\n"
"""The reported rows as the old writer wrote them: `'` and `x'` unquoted."""


@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_old_server_reads_single_quotes_as_text_when_told(server: ClickHouseServer, tmp_path: Path,
                                                          scheme: str) -> None:
    """18.16 reads unquoted single quotes as quotes by default (shown first); the sink's inserts
    turn that off, so even unquoted the five rows stay five (HTTP sends the CSV; the native
    protocol sends values parsed here, where `'` was never special)."""
    conn = admin(server)
    conn.command("CREATE DATABASE IF NOT EXISTS Default1816")
    conn.command("CREATE TABLE IF NOT EXISTS Default1816.T (I Int64, S String) ENGINE = Memory")
    conn.command("TRUNCATE TABLE Default1816.T")
    conn.insert("Default1816", "T", [("I", "Int64"), ("S", "String")], [REPORTED.encode()], {})
    assert [r["S"] for r in stored(conn, "Default1816", "T")] == ["\n2,a\n3,b\n4,c\n5,x"]  # 1 row of 5, no error

    batch = raw_batch(tmp_path / "wal", "Raw", "Reported", (("I", "long"), ("S", "string")), REPORTED)
    target = upload(server, scheme, batch)
    rows = stored(conn, target, "Reported")
    assert sorted((int(r["I"]), r["S"]) for r in rows) == [(1, "'"), (2, "a"), (3, "b"), (4, "c"), (5, "x'")]
