"""A real node whose WAL directory is deleted under it (`rm -rf` to free a full disk): the rows it
held are gone with it, and the node says so (an ERROR line, `ingestor_wal_vanished_segments_total`);
it goes on in new segments, acknowledging only what it keeps, and stops cleanly. It used to write
on into the deleted files, acknowledging rows lost at their close, and to end its stop with a
traceback (node/wal/table.py)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from tests.harness import NodeProcess, scrape
from tests.node.test_grpc import gauge_request
from tests.node.test_journal_node import KEEP


def _export(stub: metrics_service_pb2_grpc.MetricsServiceStub, name: str, start: int) -> None:
    """One export, retried on UNAVAILABLE as OTLP senders retry it."""
    for _ in range(5):
        try:
            stub.Export(gauge_request(name, points=3, start=start), timeout=10)
            return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.2)
    raise AssertionError(f"{name}: UNAVAILABLE five times")


@pytest.mark.parametrize("receivers", [1, 2])
def test_a_node_whose_wal_directory_is_deleted_goes_on_in_new_segments_and_stops_cleanly(
        tmp_path: Path, receivers: int) -> None:
    node = NodeProcess(tmp_path / "data", *KEEP, "--receivers", str(receivers)).start()
    try:
        with grpc.insecure_channel(node.grpc_addr) as channel:
            stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
            for t in range(6):
                _export(stub, f"before_{t}", 0)
            shutil.rmtree(node.storage_dir / "wal")
            deadline = time.monotonic() + 10
            while scrape(node.http_url + "/metrics").get("ingestor_wal_vanished_segments_total", 0) < 1:
                assert time.monotonic() < deadline, "the deleted segments were never noticed"
                time.sleep(0.2)
            time.sleep(1.5)  # every receiver's next look (once a second)
            for t in range(6):
                _export(stub, f"before_{t}", 100)  # the same tables again
                _export(stub, f"after_{t}", 200)  # and new ones
        assert node.stop() == 0
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()
    log = node.log()
    assert "deleted by something other than this node" in log
    assert "Traceback" not in log
    counts = {table: len(node.rows("Metrics", table)) for _, table in node.tables()}
    assert counts == {**{f"Before{t}": 3 for t in range(6)}, **{f"After{t}": 3 for t in range(6)}}, counts
    # the tables written before the deletion hold the export after it only (T0 + 100 s): what was
    # acknowledged before went with the files
    assert all(row.startswith(b"2026-11-18T11:08:2") for row in node.rows("Metrics", "Before0")), \
        node.rows("Metrics", "Before0")
