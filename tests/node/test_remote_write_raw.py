"""The node reads remote write as `RawWriteRequest`s (node/ingest.py REMOTE_WRITE, node/receivers/
decode.py decode_remote_write): each series as it came on the wire, for the converter. The rows
are those of the full TimeSeries parse (tests/rows/test_remote_write_wire.py `full_parse`), for what
a real Prometheus sends too; large requests still go in pieces; a body that is not protobuf is
refused at its parse, a series that does not parse by the converter, both with DecodeError (400)
naming the message, and nothing is written."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cramjam
import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError
from prometheus_client import CollectorRegistry

from node.errors import DecodeError
from node.gen.prometheus.remote_pb2 import WriteRequest
from node.gen.prometheus.remote_raw_pb2 import RawWriteRequest
from node.ingest import REMOTE_WRITE, Converters, Ingest
from node.metrics import NodeMetrics
from node.receivers.decode import decode_remote_write
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.rows.wire import PIECE_BYTES, pieces
from node.state import NodeState, Phase
from node.wal.repository import Repository, WalConfig
from tests.harness import Prometheus
from tests.node.test_http import RW_HEADERS, HttpNode, http_node, simple_write, snappy
from tests.rows.build import T_MS, remote_write
from tests.rows.test_remote_write_wire import full_parse, label, same, sample, series_body

__all__ = ["http_node"]  # the fixture, used here


def big_request(series: int, bad_at: int | None = None) -> bytes:
    """A WriteRequest on the wire of `series` series, one sample each (~190 bytes a series); the
    series at `bad_at`, if any, with a label that is not UTF-8 (it parses as bytes, not as a Label)."""
    out = []
    for i in range(series):
        labels = label("__name__", f"metric_{i % 40}") + label("instance", f"host-{i // 40}.example:9100") + \
            label("job", "node") + label("pod", f"api-{'x' * 60}-{i}")
        if i == bad_at:
            labels += b"\x0a\x08\x0a\x01a\x12\x03\xff\xfe\xfd"  # a Label whose value is not UTF-8
        out.append(labels + sample(float(i), T_MS + i))
    return series_body(*out)


def new_ingest(tmp_path: Path) -> tuple[Ingest, Repository]:
    wal = Repository(WalConfig(tmp_path / "wal"))
    wal.start()
    state = NodeState(over_limits=wal.over_limits)
    state.set_phase(Phase.SERVING)
    conv = Converters(MetricsConverter(MetricsConfig()), LogsConverter(LogsConfig()), TracesConverter(TracesConfig()))
    return Ingest(wal, conv, state, NodeMetrics(CollectorRegistry())), wal


def written(wal: Repository) -> int:
    wal.rotate_all()
    return len(wal.closed_segments())


# -- the kind ------------------------------------------------------------------------------------


def test_large_requests_go_in_pieces_of_raw_series_with_the_rows_of_the_full_parse(tmp_path: Path) -> None:
    body = big_request(20_000)
    parts = list(pieces(body, REMOTE_WRITE.levels))
    assert len(parts) >= 3 and all(len(p) <= PIECE_BYTES for p in parts)
    assert REMOTE_WRITE.message is RawWriteRequest
    assert sum(len(RawWriteRequest.FromString(p).timeseries) for p in parts) == 20_000
    ingest, wal = new_ingest(tmp_path)
    try:
        got = ingest._convert(REMOTE_WRITE, body)  # what remote_write(body) converts, before the WAL
        same(got, full_parse(MetricsConverter(MetricsConfig()), body))
        assert got.accepted == 20_000
    finally:
        wal.stop()


async def test_a_malformed_series_in_a_late_piece_refuses_the_request_and_writes_nothing(tmp_path: Path) -> None:
    body = big_request(20_000, bad_at=19_000)
    with pytest.raises(ProtobufDecodeError):
        WriteRequest.FromString(body)  # what refused it before
    ingest, wal = new_ingest(tmp_path)
    try:
        with pytest.raises(DecodeError, match=r"malformed prometheus\."):
            await ingest.remote_write(body)
        with pytest.raises(DecodeError, match=r"^malformed prometheus\.WriteRequest: "):
            await ingest.remote_write(b"\xff\xff\xff\xff garbage")  # not protobuf: refused at its parse
        assert written(wal) == 0
        assert (await ingest.remote_write(big_request(100))).accepted == 100  # and the node goes on
    finally:
        wal.stop()


# -- over HTTP -----------------------------------------------------------------------------------


async def test_http_refuses_a_malformed_series_with_400_and_writes_nothing(http_node: HttpNode) -> None:
    body = snappy(big_request(50, bad_at=30))
    async with http_node.post("/api/v1/write", body, RW_HEADERS) as r:
        assert r.status == 400
        text = await r.text()
        assert text.startswith("remote write: malformed prometheus."), text
        assert "Retry-After" not in r.headers
    assert http_node.segments() == []
    async with http_node.post("/api/v1/write", simple_write("after"), RW_HEADERS) as r:
        assert r.status == 204
    assert len(http_node.records("Metrics", "After")) == 2


def test_decode_gives_the_series_as_they_came() -> None:
    req = remote_write(({"__name__": "up", "job": "a"}, [(1.0, T_MS)]), ({"__name__": "x"}, [(0.5, T_MS), (2.0, T_MS)]))
    raw = req.SerializeToString()
    got = decode_remote_write(snappy(raw), "snappy", None, 1 << 20)
    assert isinstance(got, RawWriteRequest)
    assert list(got.timeseries) == [ts.SerializeToString() for ts in req.timeseries]
    assert got.SerializeToString() == raw


# -- a real Prometheus ---------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP server that keeps every body posted to it and answers 204."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write", bodies
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus not installed")
def test_real_prometheus_bodies_give_the_rows_of_the_full_parse(sink: tuple[str, list[bytes]],
                                                                 tmp_path: Path) -> None:
    url, bodies = sink
    with Prometheus(tmp_path / "prom", url, {"host": "prom-host"}):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(
                len(WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(b))).timeseries) > 0
                for b in list(bodies)) < 4:
            time.sleep(0.5)
    assert bodies
    node = MetricsConverter(MetricsConfig(lift_labels=("host",)))  # warm from one body to the next, as a node
    before = MetricsConverter(MetricsConfig(lift_labels=("host",)))  # given the WriteRequest, as it was
    reference = MetricsConverter(MetricsConfig(lift_labels=("host",)))
    samples = 0
    tables: set[tuple[str, str]] = set()
    for body in bodies:
        raw = bytes(cramjam.snappy.decompress_raw(body))
        got = node.convert_remote_write(decode_remote_write(body, "snappy", RW_HEADERS["Content-Type"], 1 << 24))
        same(got, full_parse(reference, raw))
        same(got, before.convert_remote_write(WriteRequest.FromString(raw)))
        samples += got.accepted
        tables |= set(got.tables)
    assert samples > 4 and ("Metrics", "Up") in tables and ("Metrics", "PrometheusBuildInfo") in tables
