"""An in-process gRPC receiver on a real socket, over a real WAL, for the gRPC tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from node.gen.ingestor.v1 import admin_pb2
from node.ingest import Converters, Ingest
from node.metrics import NodeMetrics
from node.receivers.grpc import GrpcServer
from node.rows.logs import LogsConfig, LogsConverter
from node.rows.metrics import MetricsConfig, MetricsConverter
from node.rows.traces import TracesConfig, TracesConverter
from node.state import NodeState, Phase
from node.wal.repository import Repository, WalConfig


@dataclass
class GrpcNode:
    addr: str
    wal: Repository
    state: NodeState
    metrics: NodeMetrics
    server: GrpcServer


@pytest.fixture
def wal(tmp_path: Path, request: pytest.FixtureRequest) -> Repository:
    """A started WAL; `@pytest.mark.wal(**WalConfig fields)` configures it."""
    marker = request.node.get_closest_marker("wal")
    repo = Repository(WalConfig(tmp_path / "wal", **(marker.kwargs if marker else {})))
    repo.start()
    return repo


@pytest_asyncio.fixture
async def grpc_node(wal: Repository) -> AsyncIterator[GrpcNode]:
    state = NodeState(over_limits=wal.over_limits)
    metrics = NodeMetrics(CollectorRegistry())
    conv = Converters(MetricsConverter(MetricsConfig()),
                      LogsConverter(LogsConfig(default_database="Logs", default_table="App")),
                      TracesConverter(TracesConfig()))
    ingest = Ingest(wal, conv, state, metrics)
    server = GrpcServer("127.0.0.1:0", ingest, state, metrics, lambda: admin_pb2.NodeStatus(node_name="t"),
                        max_request_bytes=1 << 20)
    await server.start()
    state.set_phase(Phase.SERVING)
    await server.health.update()
    try:
        yield GrpcNode(f"127.0.0.1:{server.port}", wal, state, metrics, server)
    finally:
        await server.stop(0)
