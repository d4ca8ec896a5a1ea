"""A sink that cannot work is found at start (issue 16, "The first hour", item 3).

* `--storage-backend clickhouse|adx` without an endpoint is a usage error: one line, exit 2.
* Each ClickHouse endpoint is asked for its version once at start (a few seconds at most): one that
  does not answer is one WARNING naming it, and the node starts (and becomes ready) anyway. ADX
  endpoints get a TCP connection each, the same way.
* A ClickHouse upload that fails for the network or the server is a one-line SinkError (no
  driver traceback, no server stack trace), so that the uploader logs one line per retry: checked
  with a real node and a real server stopped while the node uploads.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import SinkError
from node.sinks.adx import AdxConfig, AdxSink
from node.sinks.clickhouse import ClickHouseConfig, ClickHouseSink, NativeConn, _Target, one_line, parse_dsns
from node.sinks.startcheck import check_all
from tests.harness import ROOT, NodeProcess, free_port
from tests.sinks.clickhouse_server import INSTALL_HINT, ClickHouseServer, find_binary

needs_server = pytest.mark.skipif(find_binary() is None, reason=INSTALL_HINT)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "node.cli", "serve", "--storage-dir", str(tmp_path / "data"),
           "--grpc-addr", f"127.0.0.1:{free_port()}", "--http-addr", f"127.0.0.1:{free_port()}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


# -- no endpoint: a usage error --------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["clickhouse", "adx"])
def test_a_remote_backend_without_endpoints_is_a_usage_error(tmp_path: Path, backend: str) -> None:
    done = serve(tmp_path, "--storage-backend", backend)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line == (f"ingestor serve: error: --storage-backend {backend} needs at least one endpoint: pass "
                    "--metrics-kusto-endpoints, --logs-kusto-endpoints or --traces-kusto-endpoints DB="
                    + ("https://<cluster>.kusto.windows.net" if backend == "adx" else
                       "clickhouse://user:pass@host:9000/db") + " (see ingestor serve --help)")
    assert not (tmp_path / "data" / "wal").exists()  # said before anything started


# -- unreachable endpoints at start ----------------------------------------------------------------

def start_warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "does not answer at start" in line or "cannot be reached" in line]


@needs_server
def test_an_unreachable_clickhouse_endpoint_is_one_warning_and_the_node_starts(tmp_path: Path) -> None:
    server = ClickHouseServer(tmp_path / "ch")
    server.start()
    closed = free_port()
    node = NodeProcess(tmp_path / "data", "--storage-backend", "clickhouse",
                       "--metrics-kusto-endpoints", server.dsn("Metrics"),
                       "--logs-kusto-endpoints", f"Logs=clickhouse://127.0.0.1:{closed}/logs",
                       "--traces-kusto-endpoints", f"Traces=http://127.0.0.1:{closed}/traces", "--shutdown-grace", "0s")
    try:
        t0 = time.monotonic()
        node.start()  # returns once /readyz says ready
        started = time.monotonic() - t0
        assert node.ready()
    finally:
        assert node.stop() == 0
        server.stop()
    assert started < 20
    log = node.log()
    warned = start_warnings(log)
    assert len(warned) == 2, log
    by_database = {re.search(r"database (\w+) ->", line).group(1): line for line in warned}  # type: ignore[union-attr]
    for db, url in [("Logs", f"clickhouse://default@127.0.0.1:{closed}/logs"),
                    ("Traces", f"http://default@127.0.0.1:{closed}/traces")]:
        line = by_database[db]
        assert f" WARNING node.sinks.clickhouse: ClickHouse sink: database {db} -> {url} does not answer at start (" \
            in line
        assert "Connection refused" in line
        assert line.endswith(f"the node starts anyway, keeps the rows of {db} in its WAL and retries their upload "
                             "until it answers")
    # the endpoint that answers says its version; nothing printed a traceback
    assert re.search(r"INFO node.sinks.clickhouse: ClickHouse sink: database Metrics -> clickhouse://ingest@127.0.0.1:"
                     rf"{server.tcp_port}/Metrics \(ClickHouse 18\.", log), log
    assert "Traceback" not in log
    # the warnings came before the node served
    assert log.index(warned[0]) < log.index("serving: gRPC on port")


def test_the_start_check_waits_a_bounded_time_for_endpoints_that_hang() -> None:
    release = threading.Event()

    def hang() -> None:
        release.wait(30)

    def refuse() -> None:
        raise SinkError("query: x: Code: 210. Connection refused")

    t0 = time.monotonic()
    failures = check_all({"hangs": hang, "refuses": refuse, "answers": lambda: None}, timeout=0.5)
    elapsed = time.monotonic() - t0
    release.set()
    assert failures == {"hangs": "no answer within 0.5s", "refuses": "query: x: Code: 210. Connection refused"}
    assert 0.4 < elapsed < 3.0


def test_a_clickhouse_sink_started_in_process_warns_once_per_unreachable_endpoint(
        caplog: pytest.LogCaptureFixture) -> None:
    closed = free_port()
    sink = ClickHouseSink(ClickHouseConfig(parse_dsns([f"Logs=clickhouse://127.0.0.1:{closed}/l"], env={}),
                                           start_check_timeout=2.0))
    caplog.set_level(logging.INFO)
    sink.start()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warned] == ["node.sinks.clickhouse"]
    assert f"clickhouse://default@127.0.0.1:{closed}/l does not answer at start" in warned[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)  # clickhouse-driver's own traceback is dropped
    caplog.clear()
    quiet = ClickHouseSink(ClickHouseConfig(parse_dsns([f"Logs=clickhouse://127.0.0.1:{closed}/l"], env={}),
                                            start_check_timeout=0))
    quiet.start()  # 0: no check
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_unreachable_adx_endpoint_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = listening.getsockname()[1]
        closed = free_port()
        sink = AdxSink(AdxConfig(endpoints={"Metrics": f"http://127.0.0.1:{up}", "Logs": f"http://127.0.0.1:{closed}"},
                                 auth="none"))
        caplog.set_level(logging.WARNING)
        sink.start()
        sink.stop()
    [record] = caplog.records
    assert record.name == "node.sinks.adx"
    message = record.getMessage()
    assert message.startswith(f"ADX sink: the cluster and ingest endpoint http://127.0.0.1:{closed} of database Logs "
                              "cannot be reached at start (ConnectionRefusedError: ")
    assert message.endswith("the node starts anyway, keeps the rows of Logs in its WAL and retries their upload until "
                            "it answers")


# -- one line per failed upload --------------------------------------------------------------------

def test_server_errors_lose_their_stack_trace() -> None:
    text = ("Code: 81.\nDB::Exception: Database x doesn't exist. Stack trace:\n\n"
            "0. clickhouse-server(StackTrace::StackTrace()+0x16) [0x56]\n1. clickhouse-server(main+0x1) [0x1]\n")
    assert one_line(text) == "Code: 81. DB::Exception: Database x doesn't exist"


@needs_server
@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_a_server_error_is_a_one_line_sink_error(tmp_path: Path, scheme: str) -> None:
    server = ClickHouseServer(tmp_path / "ch")
    server.start()
    try:
        [ep] = parse_dsns([server.dsn("Logs", scheme=scheme)], env={})
        with _Target(ep, ClickHouseConfig((ep,)), None).connect() as conn, pytest.raises(SinkError) as info:
            conn.query("SELECT * FROM NoSuchDatabase.NoSuchTable")
        if scheme == "clickhouse":
            assert isinstance(conn, NativeConn)
    finally:
        server.stop()
    message = str(info.value)
    assert "\n" not in message and "Stack trace" not in message
    assert "Code: 81" in message and "NoSuchDatabase" in message


def _send_logs(addr: str, stop: threading.Event, sent: list[int]) -> None:
    """OTLP logs into the node until `stop`, a request every 50 ms."""
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc

    from tests.rows.build import log_record, logs_request

    with grpc.insecure_channel(addr) as ch:
        stub = logs_service_pb2_grpc.LogsServiceStub(ch)
        while not stop.is_set():
            req = logs_request(*(log_record({"n": i}, time_unix_nano=time.time_ns()) for i in range(200)))
            stub.Export(req, timeout=10)
            sent.append(200)
            time.sleep(0.05)


def _failed_retries(log: str) -> list[str]:
    return [line for line in log.splitlines() if "to clickhouse failed (attempt" in line]


@needs_server
@pytest.mark.parametrize("scheme", ["clickhouse", "http"])
def test_a_server_stopped_while_uploading_gives_one_line_retries(tmp_path: Path, scheme: str) -> None:
    server = ClickHouseServer(tmp_path / "ch")
    server.start()
    node = NodeProcess(tmp_path / "data", "--storage-backend", "clickhouse", "--logs-kusto-endpoints",
                       server.dsn("Logs", scheme=scheme), "--max-segment-age", "1s", "--upload-interval", "1s",
                       "--shutdown-grace", "0s")
    stop = threading.Event()
    sent: list[int] = []
    sender = threading.Thread(target=_send_logs, args=(node.grpc_addr, stop, sent), daemon=True)
    try:
        node.start()
        sender.start()
        _wait(lambda: "uploaded Logs.Logs" in node.log(), 30, "a first upload", node)
        server.stop()  # while the node sends a batch every second
        _wait(lambda: len(_failed_retries(node.log())) >= 3, 60, "three failed attempts", node)
    finally:
        stop.set()
        sender.join(30)
        assert node.stop() == 0
        server.stop()
    log = node.log()
    assert "Traceback" not in log and "Stack trace" not in log
    lines = log.splitlines()
    assert all(TIMESTAMP.match(line) for line in lines), [line for line in lines if not TIMESTAMP.match(line)]
    retries = _failed_retries(log)
    assert len(retries) >= 3
    for line in retries:
        assert re.search(r" WARNING node\.upload\.uploader: upload of Logs_Logs_\w+ \(\d+ segments\) to clickhouse "
                         r"failed \(attempt \d+\), retrying in [\d.]+s: ", line), line
    assert any("Connection refused" in line for line in retries), retries


def _wait(done: object, timeout: float, what: str, node: NodeProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout}s:\n{node.log()}")


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    # start checks that did not answer run on in daemon threads; none should outlive a test by much
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(t.name.startswith("start-check-") for t in threading.enumerate()):
        time.sleep(0.05)
