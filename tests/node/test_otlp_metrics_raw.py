"""The node reads OTLP metrics as ingestor.otlp_raw's ExportMetricsServiceRequest (node/ingest.py
OTLP_METRICS, node/receivers/decode.py decode_otlp): a gauge or sum point's attributes left as their
bytes, parsed by the converter for a new series only. Large requests still go in pieces with the rows
of the whole parse (tests/rows/otlpmetrics_before.py); a request whose point's attributes do not parse
is refused as the whole parse refused it (DecodeError, the same text; 400 over HTTP), nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import code_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2

from node.errors import DecodeError
from node.ingest import OTLP_METRICS
from node.rows.metrics import MetricsConfig
from node.rows.otlpmetrics import Parsed
from node.rows.wire import PIECE_BYTES, pieces
from tests.node.test_http import PB_HEADERS, HttpNode, http_node, status_body
from tests.node.test_remote_write_raw import new_ingest, written
from tests.rows.test_otlp_metrics_raw import _outcome, converters, reference

__all__ = ["http_node"]  # the fixture, used here

NAME = ExportMetricsServiceRequest.DESCRIPTOR.full_name
T0 = 1_795_000_000_000_000_000


def big_request(points: int, bad_at: int | None = None) -> bytes:
    """`points` gauge points of 100 metrics, 6 attributes each (~300 bytes a point); the point at
    `bad_at`, if any, with an attribute that does not parse (its value is not UTF-8)."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value="api"))
    rm.resource.attributes.add(key="region", value=common_pb2.AnyValue(string_value="eu"))
    sm = rm.scope_metrics.add()
    per = points // 100
    for m in range(100):
        metric = sm.metrics.add(name=f"metric_{m}")
        for p in range(per):
            dp = metric.gauge.data_points.add(time_unix_nano=T0 + p, as_double=p * 0.5)
            for a in range(6):
                dp.attributes.add(key=f"label_{a}", value=common_pb2.AnyValue(string_value=f"value-{a}-{p}-{'x' * 20}"))
    data = req.SerializeToString()
    if bad_at is None:
        return data
    msg = ExportMetricsServiceRequest.FromString(data)
    points_ = [dp for m in msg.resource_metrics[0].scope_metrics[0].metrics for dp in m.gauge.data_points]
    target = points_[bad_at]
    target.attributes.add(key="marker", value=common_pb2.AnyValue(string_value="marker-value"))
    data = msg.SerializeToString()
    assert data.count(b"marker-value") == 1
    return data.replace(b"marker-value", b"\xff" * 12)  # the same length: the messages around it hold


def test_large_requests_go_in_pieces_with_the_rows_of_the_whole_parse(tmp_path: Path) -> None:
    body = big_request(20_000)
    parts = list(pieces(body, OTLP_METRICS.levels))
    assert len(parts) >= 3 and all(len(p) <= PIECE_BYTES for p in parts)
    assert isinstance(OTLP_METRICS.message.FromString(parts[0]), Parsed)
    old, _ = converters(MetricsConfig())
    ingest, wal = new_ingest(tmp_path)
    try:
        for _ in range(2):  # every series new, then known
            got = ingest._convert(OTLP_METRICS, body)  # what otlp_metrics(body) converts, before the WAL
            assert _outcome(got) == reference(old, body, PIECE_BYTES)
            assert got.accepted == 20_001  # and its resource's TargetInfo
    finally:
        wal.stop()


def _refusal(body: bytes) -> str:
    """The refusal of `body` before: the error of the whole parse of the piece that held the bad point."""
    for p in pieces(body, OTLP_METRICS.levels):
        try:
            ExportMetricsServiceRequest.FromString(p)
        except ProtobufDecodeError as e:
            return f"malformed {NAME}: {e}"
    raise AssertionError("it parses")


async def test_a_bad_attribute_in_a_late_piece_refuses_the_request_and_writes_nothing(tmp_path: Path) -> None:
    body = big_request(20_000, bad_at=19_000)
    want = _refusal(body)
    assert "UTF-8" in want
    ingest, wal = new_ingest(tmp_path)
    try:
        for _ in range(2):
            with pytest.raises(DecodeError) as e:
                await ingest.otlp_metrics(body)
            assert str(e.value) == want
        await ingest.otlp_metrics(big_request(20_000))  # its series known: the bad one is still refused
        with pytest.raises(DecodeError) as e:
            await ingest.otlp_metrics(body)
        assert str(e.value) == want
        with pytest.raises(DecodeError, match=rf"^malformed {NAME}: "):
            await ingest.otlp_metrics(b"\x0a\xff\xff\xff\xff\x0f garbage")  # not protobuf: refused at its parse
        wal.rotate_all()
        before = len(wal.closed_segments())
        with pytest.raises(DecodeError):
            await ingest.otlp_metrics(body)
        assert written(wal) == before
        assert (await ingest.otlp_metrics(big_request(100))).accepted == 101  # and the node goes on
    finally:
        wal.stop()


async def test_nothing_written_when_refused(tmp_path: Path) -> None:
    ingest, wal = new_ingest(tmp_path)
    try:
        with pytest.raises(DecodeError):
            await ingest.otlp_metrics(big_request(2_000, bad_at=1_500))
        assert written(wal) == 0
    finally:
        wal.stop()


async def test_http_refuses_a_bad_attribute_with_400_and_writes_nothing(http_node: HttpNode) -> None:
    body = big_request(500, bad_at=300)
    want = _refusal(body)
    async with http_node.post("/v1/metrics", body, PB_HEADERS) as r:
        assert r.status == 400, await r.text()
        st = await status_body(r)
    assert st.code == code_pb2.INVALID_ARGUMENT
    assert want in st.message, st.message
    assert http_node.segments() == []
    async with http_node.post("/v1/metrics", big_request(500), PB_HEADERS) as r:
        assert r.status == 200

