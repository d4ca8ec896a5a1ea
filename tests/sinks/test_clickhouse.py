"""The ClickHouse sink: DSN parsing, value conversion, and uploads over the native protocol and HTTP
to a real server (Debian's clickhouse-server 18.16, which has no deduplication token: the ledger
path). The shared SQL on a current ClickHouse is tested through the local sink (test_local.py)."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.errors import PermanentSinkError, SinkError
from node.rows.batch import ConvertResult
from node.sinks.base import Batch
from node.sinks.chschema import (
    ADXMON_DEFAULT_TABLES,
    LEDGER_TABLE,
    SCHEMA_VERSIONS_TABLE,
    Features,
    StaleTableError,
    detect_features,
    error_from,
    ident,
    literal,
    table_columns,
)
from node.sinks.clickhouse import (
    ClickHouseConfig,
    ClickHouseSink,
    Endpoint,
    EpochNanos,
    HttpConn,
    csv_rows,
    parse_dsns,
    parse_endpoint,
)
from tests.sinks import expected, logs, metrics, otlp_metrics, raw_batch, read_back, traces, write_batch
from tests.sinks.clickhouse_server import INSTALL_HINT, PASSWORD, USER, ClickHouseServer, find_binary, make_tls_files

# -- DSNs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("Metrics=clickhouse://u:p@db.example:9000/metrics",
     Endpoint("Metrics", "clickhouse", "db.example", 9000, "metrics", "u", "p", False)),
    ("Metrics=clickhouse://u:p@db.example/m?secure=true",
     Endpoint("Metrics", "clickhouse", "db.example", 9440, "m", "u", "p", True)),
    ("Metrics=clickhouse://db.example:9001?secure=0", Endpoint("Metrics", "clickhouse", "db.example", 9001, "Metrics")),
    ("Logs=http://u@10.0.0.1:8123/Logs2", Endpoint("Logs", "http", "10.0.0.1", 8123, "Logs2", "u", "", False)),
    ("Logs=https://[::1]/", Endpoint("Logs", "https", "::1", 8443, "Logs", secure=True)),
    ("Logs=HTTPS://u:p%40ss%2Fw@h:1/L", Endpoint("Logs", "https", "h", 1, "L", "u", "p@ss/w", True)),
    ("Logs=clickhouse://h/L?secure=TRUE", Endpoint("Logs", "clickhouse", "h", 9440, "L", secure=True)),
])
def test_dsns(text: str, want: Endpoint) -> None:
    assert parse_endpoint(text, env={}) == want


def test_credentials_from_the_environment() -> None:
    env = {"CLICKHOUSE_USER": "envuser", "CLICKHOUSE_PASSWORD": "envpass"}
    assert (parse_endpoint("A=http://h/a", env).user, parse_endpoint("A=http://h/a", env).password) == ("envuser",
                                                                                                          "envpass")
    ep = parse_endpoint("A=http://bob@h/a", env)
    assert (ep.user, ep.password) == ("bob", "envpass")
    ep = parse_endpoint("A=http://bob:pw@h/a", env)
    assert (ep.user, ep.password) == ("bob", "pw")
    assert str(ep) == "http://bob@h:8123/a"  # never the password
    assert "pw" not in repr(ep)


HOSTILE_DATABASES = ["a-b", "a__b", "_a", "a.b", "a%2Fb", "..", "%2E%2E", "a%00b", "a;DROP", "a%60b", "%C3%A9", "a%20b",
                     "a/b", "x" * 1025, "a'b", "a%27b"]


@pytest.mark.parametrize("name", HOSTILE_DATABASES)
def test_hostile_database_names_in_dsns_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must be 1-1024 of"):
        parse_endpoint(f"Db=clickhouse://h:9000/{name}", env={})


@pytest.mark.parametrize("name", ["", "a-b", "a b", "../x", "_a", "a_", "a__b", "é", "x" * 1025])
def test_hostile_node_database_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"does not match .* of 1-64 characters$"):
        parse_endpoint(f"{name}=clickhouse://h:9000/db", env={})


def test_a_node_database_over_the_wal_limit_is_refused() -> None:
    """The database before `=` is the node's, which the WAL holds: at most 64 characters, as
    everywhere else (node/names.py). The ClickHouse database in the DSN's path is ClickHouse's."""
    assert parse_endpoint(f"{'D' * 64}=clickhouse://h:9000/db", env={}).database == "D" * 64
    with pytest.raises(ValueError, match=r"^ClickHouse endpoint '.*': invalid database: 'D{64}'\.\.\. "
                                         r"\(65 characters\) does not match .* of 1-64 characters$"):
        parse_endpoint(f"{'D' * 65}=clickhouse://h:9000/db", env={})
    assert parse_endpoint(f"Db=clickhouse://h:9000/{'C' * 1024}", env={}).target_database == "C" * 1024


@pytest.mark.parametrize(("text", "match"), [
    ("clickhouse://h:9000/db", "expected DB=DSN"),
    ("Db=postgres://h/db", "scheme must be"),
    ("Db=clickhouse:///db", "invalid host"),
    ("Db=clickhouse://h;rm:9000/db", "port|invalid host"),
    ("Db=clickhouse://h:99999/db", "out of range"),
    ("Db=clickhouse://h:port/db", "port"),
    ("Db=clickhouse://h/db?secure=maybe", "is not true or false"),
    ("Db=clickhouse://h/db?dial_timeout=soon", "is not a duration"),
    ("Db=clickhouse://h/db?read_timeout=0s", "is not a duration"),
    ("Db=clickhouse://h/db?connection_open_strategy=best", "is not in_order"),
    ("Db=http://h/db?http_path=../x", "not a plain path"),
    ("Db=clickhouse://h:9000,/db", "invalid host"),
    ("Db=clickhouse://h:9000,h2:0/db", "out of range"),
    ("Db=clickhouse://h/a-b", "ClickHouse database"),
    ("Db=clickhouse://h/?database=a.b", "ClickHouse database"),
    ("Db=clickhouse://h/db#x", "fragment"),
    ("Db=clickhouse://h/db x", "whitespace"),
])
def test_bad_dsns(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_endpoint(text, env={})


def test_errors_do_not_echo_passwords() -> None:
    with pytest.raises(ValueError) as info:
        parse_endpoint("Db=postgres://u:hunter2@h/db", env={})
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_ident_refuses_what_could_break_out() -> None:
    for name in ["a`b", "a.b", "", "a b"]:
        with pytest.raises(PermanentSinkError):
            ident(name)
    assert ident("Metrics") == "`Metrics`"


# -- values for the native protocol ------------------------------------------------------------


def test_epoch_nanos() -> None:
    epoch = EpochNanos()
    assert epoch("2026-11-24T04:00:00.123Z") == 1_795_492_800_123_000_000
    assert epoch("2026-11-24T04:00:00.123456789Z") == 1_795_492_800_123_456_789
    assert epoch("2026-11-24T04:00:00.123456789Z") == 1_795_492_800_123_456_789  # cached second
    assert epoch("2026-11-24T04:00:00Z") == 1_795_492_800_000_000_000
    assert epoch("2026-11-24T05:00:00.5+01:00") == 1_795_492_800_500_000_000
    assert epoch("1970-01-01T00:00:00.000000000Z") == 0
    for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-24T04:00:00.12aZ", ""]:
        with pytest.raises(ValueError):
            epoch(bad)


def test_csv_rows_are_typed_by_the_table() -> None:
    cols = [("T", "DateTime64(9, 'UTC')"), ("S", "DateTime('UTC')"), ("I", "Int64"), ("V", "Float64"), ("L", "String"),
            ("B", "Bool")]
    chunk = b'2026-11-24T04:00:00.123456789Z,2026-11-24T04:00:00.9Z,-5,NaN,"{""a"":""x,\n""}",true\n'
    chunk += b"1970-01-01T00:00:00Z,1970-01-01T00:00:00Z,0,-Infinity,,false\n"
    rows = list(csv_rows([chunk], cols))
    assert rows[0][:3] == (1_795_492_800_123_456_789, 1_795_492_800, -5) and rows[0][3] != rows[0][3]
    assert rows[0][4:] == ('{"a":"x,\n"}', True)
    assert rows[1] == (0, 0, 0, float("-inf"), "", False)
    with pytest.raises(PermanentSinkError, match="row 1: 2 fields"):
        list(csv_rows([b"a,b\n"], cols))
    with pytest.raises(PermanentSinkError, match=r"row 2: .*RFC 3339"):
        list(csv_rows([chunk[: chunk.index(b"1970")] + b"x,y,1,1,,true\n"], cols))
    with pytest.raises(PermanentSinkError, match="not UTF-8"):
        list(csv_rows([b"\xff\n"], cols))


def test_error_classes() -> None:
    assert type(error_from(None, "Code: 27, e.displayText() = DB::Exception: Cannot parse", "x")) is PermanentSinkError
    assert type(error_from(62, "Syntax error", "x")) is PermanentSinkError
    assert type(error_from(None, "Code: 60. Table x doesn't exist", "x")) is StaleTableError
    for retried in [(241, "memory limit"), (252, "too many parts"), (192, "unknown user"), (None, "HTTP 502: proxy")]:
        err = error_from(*retried, "x")
        assert type(err) is SinkError, retried


# -- a real server ----------------------------------------------------------------------------

needs_server = pytest.mark.skipif(find_binary() is None, reason=INSTALL_HINT)
ADXMON_DEFAULT_TABLES_ROWS = [[name] for name in sorted(ADXMON_DEFAULT_TABLES)]
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    if find_binary() is None:
        pytest.skip(INSTALL_HINT)
    s = ClickHouseServer(tmp_path_factory.mktemp("clickhouse"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def other_server(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of the test's own, to stop and start."""
    if find_binary() is None:
        pytest.skip(INSTALL_HINT)
    s = ClickHouseServer(tmp_path / "other")
    s.start()
    yield s
    s.stop()


MakeSink = Callable[..., ClickHouseSink]


@pytest.fixture
def make_sink() -> Iterator[MakeSink]:
    """Started sinks for `DB=DSN`s (credentials from `env`, default none), stopped after the test."""
    made: list[ClickHouseSink] = []

    def make(*dsns: str, env: dict[str, str] | None = None, **options: Any) -> ClickHouseSink:
        sink = ClickHouseSink(ClickHouseConfig(parse_dsns(dsns, env={} if env is None else env), connect_timeout=5,
                                               timeout=30, **options))
        sink.start()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.stop()


def admin(server: ClickHouseServer) -> HttpConn:
    ep = parse_endpoint(f"X=http://{USER}:{PASSWORD}@127.0.0.1:{server.http_port}/x", env={})
    return HttpConn(ep, ClickHouseConfig((ep,)), None)


def count(server: ClickHouseServer, database: str, table: str) -> int:
    return int(admin(server).query(f"SELECT count() FROM `{database}`.`{table}`")[0][0])


PROTOCOLS = ["clickhouse", "http"]
CASES: dict[str, Callable[[], tuple[ConvertResult, ...]]] = {
    "metrics": lambda: (metrics(), otlp_metrics()),
    "metrics-lifted": lambda: (metrics(lift=("pod", "path")), otlp_metrics(lift=("pod", "path"))),
    "logs": lambda: (logs(),),
    "traces": lambda: (traces(),),
}


@needs_server
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scheme", PROTOCOLS)
def test_every_kind_round_trips(make_sink: MakeSink, server: ClickHouseServer, tmp_path: Path, scheme: str,
                                case: str) -> None:
    results = CASES[case]()
    batch = write_batch(tmp_path / "wal", *results)
    target = unique(scheme.title())
    sink = make_sink(server.dsn(batch.database, scheme=scheme, target=target))
    sink.upload(batch)
    schema = batch.read_schema()
    assert schema is not None
    assert count(server, target, batch.table) == batch.rows > 0
    assert read_back(admin(server), target, batch.table, schema) == expected(batch, seconds_only=True)


@needs_server
def test_old_server_features_and_types(make_sink: MakeSink, server: ClickHouseServer, tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "wal", metrics(lift=("pod",)))
    target = unique("Types")
    sink = make_sink(server.dsn("Metrics", target=target))
    sink.upload(batch)
    (target_state,) = sink._targets["Metrics"]
    old_csv = frozenset({"format_csv_delimiter", "format_csv_allow_double_quotes", "format_csv_allow_single_quotes",
                         "input_format_allow_errors_num", "input_format_allow_errors_ratio"})
    assert target_state.cache.features == Features("18.16.1", datetime64=False, bool_type=False, dedup_token=False,
                                                   csv_settings=old_csv, partitions_setting=False)
    assert table_columns(admin(server), target, "HttpRequestsTotal") == {
        "Timestamp": "DateTime('UTC')", "SeriesId": "Int64", "Labels": "String", "Value": "Float64", "Pod": "String"}


@needs_server
def test_an_unknown_setting_fails_a_statement_so_inserts_send_only_known_ones(server: ClickHouseServer) -> None:
    with pytest.raises(SinkError, match=r"Code: 115.*Unknown setting input_format_csv_detect_header"):
        admin(server).query("SELECT 1 SETTINGS input_format_csv_detect_header = 0")
    known = detect_features(admin(server)).csv_settings
    assert "input_format_csv_detect_header" not in known and "format_csv_allow_single_quotes" in known
    for name, value in Features(csv_settings=known).insert_settings().items():
        text = value if value.isdigit() else literal(value)  # 18.16 takes no '0' for a number here
        assert admin(server).query(f"SELECT 1 SETTINGS {name} = {text}") == [["1"]]


@needs_server
@pytest.mark.parametrize("scheme", PROTOCOLS)
def test_same_batch_twice_is_stored_once(make_sink: MakeSink, server: ClickHouseServer, tmp_path: Path,
                                         scheme: str) -> None:
    batch = write_batch(tmp_path / "wal", metrics(n=4))
    target = unique("Twice")
    dsn = server.dsn("Metrics", scheme=scheme, target=target)
    sink = make_sink(dsn)
    sink.upload(batch)
    sink.upload(Batch(batch.database, batch.table, batch.segments))  # the ack was lost: a retry
    make_sink(dsn).upload(Batch(batch.database, batch.table, batch.segments))  # after a restart of the node
    assert count(server, target, batch.table) == batch.rows == 12
    assert admin(server).query(f"SELECT Table, Rows FROM {target}.{LEDGER_TABLE}") == [["HttpRequestsTotal", "12"]]
    tables = admin(server).query(f"SELECT name FROM system.tables WHERE database = '{target}' ORDER BY name")
    assert tables == [["HttpRequestsTotal"], [LEDGER_TABLE], [SCHEMA_VERSIONS_TABLE], *ADXMON_DEFAULT_TABLES_ROWS]
    # (no staging table left behind)


@needs_server
@pytest.mark.parametrize("scheme", PROTOCOLS)
def test_server_down_is_retried_and_the_retry_lands_once(other_server: ClickHouseServer, make_sink: MakeSink,
                                                         tmp_path: Path, scheme: str) -> None:
    first = write_batch(tmp_path / "wal1", logs())
    sink = make_sink(other_server.dsn("Logs", scheme=scheme, target="Down"))
    sink.upload(first)
    other_server.stop()
    second = write_batch(tmp_path / "wal2", logs())
    with pytest.raises(SinkError) as info:
        sink.upload(second)
    assert not isinstance(info.value, PermanentSinkError)
    other_server.start()
    sink.upload(second)
    assert count(other_server, "Down", "App") == first.rows + second.rows == 6


@needs_server
@pytest.mark.parametrize("scheme", PROTOCOLS)
def test_conflicting_schema_is_permanent(make_sink: MakeSink, server: ClickHouseServer, tmp_path: Path,
                                         scheme: str) -> None:
    target = unique("Clash")
    sink = make_sink(server.dsn("Db", scheme=scheme, target=target))
    sink.upload(raw_batch(tmp_path / "wal1", "Db", "T", (("Timestamp", "datetime"), ("Value", "real")),
                          "2026-11-24T04:00:00Z,1.5\n"))
    clash = raw_batch(tmp_path / "wal2", "Db", "T", (("Timestamp", "datetime"), ("Value", "long")),
                      "2026-11-24T04:00:00Z,7\n")
    with pytest.raises(PermanentSinkError, match=r"T conflicts.*Value is Float64, the batch has long"):
        make_sink(server.dsn("Db", scheme=scheme, target=target)).upload(clash)


@needs_server
@pytest.mark.parametrize("scheme", PROTOCOLS)
def test_unparseable_value_is_permanent(make_sink: MakeSink, server: ClickHouseServer, tmp_path: Path,
                                        scheme: str) -> None:
    sink = make_sink(server.dsn("Db", scheme=scheme, target=unique("Bad")))
    bad = raw_batch(tmp_path / "wal", "Db", "T", (("Timestamp", "datetime"), ("Value", "real")),
                    "2026-11-24T04:00:00Z,1\nyesterday,2\n")
    with pytest.raises(PermanentSinkError, match=r"row 2|Code: 41"):
        sink.upload(bad)


@needs_server
def test_fan_out_confirms_only_when_every_endpoint_did(server: ClickHouseServer, other_server: ClickHouseServer,
                                                       make_sink: MakeSink, tmp_path: Path) -> None:
    target = unique("Fan")
    sink = make_sink(server.dsn("Logs", target=target), other_server.dsn("Logs", scheme="http", target="FanB"))
    assert sink.accepts("Logs") and not sink.accepts("Metrics")
    other_server.stop()
    batch = write_batch(tmp_path / "wal", logs())
    with pytest.raises(SinkError, match="1 of 2 endpoints failed"):
        sink.upload(batch)
    assert count(server, target, "App") == 3
    other_server.start()
    sink.upload(batch)
    assert (count(server, target, "App"), count(other_server, "FanB", "App")) == (3, 3)


@needs_server
@pytest.mark.parametrize("scheme", PROTOCOLS)
def test_credentials(make_sink: MakeSink, server: ClickHouseServer, tmp_path: Path, scheme: str) -> None:
    batch = write_batch(tmp_path / "wal", traces())
    dsn = server.dsn("Traces", scheme=scheme, target=unique("Creds"), credentials=False)
    with pytest.raises(SinkError) as info:
        make_sink(dsn, env={"CLICKHOUSE_USER": USER, "CLICKHOUSE_PASSWORD": "wrong"}).upload(batch)
    assert not isinstance(info.value, PermanentSinkError)  # fix the configuration; the batch is fine
    make_sink(dsn, env={"CLICKHOUSE_USER": USER, "CLICKHOUSE_PASSWORD": PASSWORD}).upload(batch)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    if find_binary() is None:
        pytest.skip(INSTALL_HINT)
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = tmp_path_factory.mktemp("clickhouse-tls")
    s = ClickHouseServer(d / "server", tls=make_tls_files(d / "tls"))
    s.start()
    yield s
    s.stop()


@needs_server
@pytest.mark.parametrize("scheme", ["clickhouse", "https"])
def test_tls(make_sink: MakeSink, tls_server: ClickHouseServer, tmp_path: Path, scheme: str) -> None:
    tls = tls_server.tls
    assert tls is not None
    batch = write_batch(tmp_path / "wal", traces())
    dsn = tls_server.dsn("Traces", scheme=scheme, target=unique("Tls"), secure=True)
    with pytest.raises(SinkError):  # the server wants a client certificate
        make_sink(dsn, ca_file=tls.ca).upload(batch)
    with pytest.raises(SinkError):  # the server's certificate is not from a CA the system trusts
        make_sink(dsn, client_cert=tls.client_cert, client_key=tls.client_key).upload(batch)
    make_sink(dsn, ca_file=tls.ca, client_cert=tls.client_cert, client_key=tls.client_key).upload(batch)
    make_sink(dsn, insecure_skip_verify=True, client_cert=tls.client_cert, client_key=tls.client_key).upload(batch)
    assert count(tls_server, dsn.split("/")[-1].split("?")[0], "Traces") == 2  # the ledger kept the second out


def test_bad_tls_files_fail_at_start(tmp_path: Path) -> None:
    sink = ClickHouseSink(ClickHouseConfig(parse_dsns(["A=https://h/a"], env={}), ca_file=tmp_path / "missing.pem"))
    with pytest.raises(SinkError, match="TLS"):
        sink.start()


def test_no_endpoint_for_the_database(make_sink: MakeSink, tmp_path: Path) -> None:
    sink = make_sink("A=http://127.0.0.1:1/a")
    with pytest.raises(PermanentSinkError, match="no ClickHouse endpoint for database Other"):
        sink.upload(raw_batch(tmp_path / "wal", "Other", "T", (("V", "real"),), "1\n"))
